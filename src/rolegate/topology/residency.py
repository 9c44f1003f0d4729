"""What is loaded, and loading on demand: HOT stays, WARM comes and goes, COLD is manual.

A call to a tracked model (a server rolegate starts, or an Ollama model, in a policy with
``residency``) first takes a lease: a model already loaded is used at once; a WARM one is
loaded, after the least recently used non-HOT models that are not in use are unloaded until
it fits the declared memory; a COLD one is refused (MODEL_COLD), and so is a load that cannot
fit (MEMORY_EXCEEDED) or does not finish within the policy's limit (LOAD_TIMEOUT). The plan is
made before anything is unloaded, so a refused load evicts nothing. Loads are serialised: in
this process by a lock, across server processes sharing a state directory by a file lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from rolegate.errors import Code, ProviderError, RefusedError
from rolegate.plugins.base import ResidencyClient
from rolegate.policy import Policy
from rolegate.policy.residence import COLD_REASON
from rolegate.topology.servers import Servers, ServerSpec, server_specs

LOCK_POLL_S = 0.05
DEFAULT_LOAD_TIMEOUT_S = 300.0  # the schema's default for residency.load_timeout_s
TIERS = {"hot": ("hot",), "warm": ("hot", "warm"), "cold": ("hot", "warm", "cold")}


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What one call's lease cost: whether its model had to be loaded, what was unloaded
    to make room, and how long the load took."""

    model: str
    loaded: bool
    evicted: tuple[str, ...] = ()
    load_ms: float | None = None


def keep_alive(policy: Policy, mid: str) -> str | None:
    """How long Ollama should keep ``mid`` loaded after a load or a call: the model's own
    ``keep_alive``, else forever ('-1') for a HOT tracked model, else the server's default.
    Every request resets it (absent: Ollama's 5m), so calls must send it as loads do."""
    model = policy.doc.models[mid]
    if model.keep_alive is not None:
        return model.keep_alive
    tracked = policy.doc.residency is not None and mid in policy.managed
    return "-1" if tracked and model.tier == "hot" else None


def _tagged(name: str) -> str:
    # Ollama lists 'llama3.2:latest' for a model a policy may call 'llama3.2'.
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class Residency:
    """Tracks and changes what the policy's tracked models have loaded."""

    def __init__(
        self,
        policy: Policy,
        servers: Servers,
        client_for: Callable[[str], Any],
        *,
        http: httpx.AsyncClient | None = None,
        max_age_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.servers = servers
        self._client_for = client_for  # provider name -> its client
        self._given_http = http
        self._own_http: httpx.AsyncClient | None = None  # opened on first use, like the pool's
        self.specs: dict[str, ServerSpec] = server_specs(policy) if policy.managed else {}
        self.max_age_s = max_age_s
        self._resident: frozenset[str] = frozenset()
        self._checked_at = -1e18
        self._lock = anyio.Lock()
        self._in_use: Counter[str] = Counter()
        self._evicting: set[str] = set()
        self._last_used: dict[str, float] = {}

    @property
    def active(self) -> bool:
        """Are loads on demand in force (a 'residency' section and tracked models)?"""
        return self.policy.doc.residency is not None and bool(self.policy.managed)

    async def aclose(self) -> None:
        """Close the probe client; it reopens on the next use (the engine's clients do too)."""
        client, self._own_http = self._own_http, None
        if client is not None:
            await client.aclose()

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._given_http is not None:
            return self._given_http
        if self._own_http is None:
            self._own_http = httpx.AsyncClient()
        return self._own_http

    # -- what is loaded ------------------------------------------------------------------

    async def snapshot(self) -> frozenset[str]:
        """The tracked models loaded now, probed at most every ``max_age_s``."""
        if time.monotonic() - self._checked_at > self.max_age_s:
            await self.refresh()
        return self._resident

    async def refresh(self) -> frozenset[str]:
        found: set[str] = set()

        async def server(mid: str, spec: ServerSpec) -> None:
            if await self.servers.healthy(spec, self._http):
                found.add(mid)

        async def ollama(provider: str, models: dict[str, str]) -> None:
            client = self._client_for(provider)
            try:
                loaded = {_tagged(m.name) for m in await client.resident_models()}
            except ProviderError:
                return  # unreachable: nothing of it is loaded; a call says why
            found.update(mid for mid, name in models.items() if _tagged(name) in loaded)

        async with anyio.create_task_group() as group:
            for mid, spec in self.specs.items():
                group.start_soon(server, mid, spec)
            for provider, models in self._ollama_models().items():
                group.start_soon(ollama, provider, models)
        self._resident, self._checked_at = frozenset(found), time.monotonic()
        return self._resident

    def _ollama_models(self) -> dict[str, dict[str, str]]:
        by_provider: dict[str, dict[str, str]] = {}
        for mid in self.policy.managed - self.specs.keys():
            model = self.policy.doc.models[mid]
            by_provider.setdefault(model.provider, {})[mid] = model.name
        return by_provider

    # -- a call's lease ------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, mid: str) -> AsyncIterator[LoadReport | None]:
        """Hold ``mid`` loaded for one call (loading it first if it must and may be)."""
        if not self.active or mid not in self.policy.managed:
            yield None
            return
        report = await self._acquire(mid)
        try:
            yield report
        finally:
            self._in_use[mid] -= 1
            self._last_used[mid] = time.monotonic()

    async def refuse_cold(self, mid: str) -> None:
        """MODEL_COLD for a COLD tracked model that is not loaded (before any reservation)."""
        if not (self.active and mid in self.policy.managed):
            return
        if self.policy.doc.models[mid].tier == "cold" and mid not in await self.snapshot():
            raise RefusedError(f"{mid} {COLD_REASON}", code=Code.MODEL_COLD)

    async def _acquire(self, mid: str) -> LoadReport:
        if mid in await self.snapshot() and mid not in self._evicting:
            self._in_use[mid] += 1  # no await since the check: no eviction can pick it now
            return LoadReport(mid, loaded=False)
        return await self._bring_in(mid, lease=True)

    async def _bring_in(self, mid: str, *, lease: bool) -> LoadReport:
        """Under the locks: ``mid`` as it is if loaded, else plan, unload, load. A call's
        lease never loads a COLD model; a load by hand (`up`, ``load``) may."""
        async with self._lock, self._file_lock():
            resident = await self.refresh()
            report = LoadReport(mid, loaded=False)
            if mid not in resident:
                if lease and self.policy.doc.models[mid].tier == "cold":
                    raise RefusedError(f"{mid} {COLD_REASON}", code=Code.MODEL_COLD)
                victims = self._plan(mid, resident) if self.policy.doc.residency else []
                self._evicting.update(victims)
                try:
                    for victim in victims:
                        await self._unload(victim)
                finally:
                    self._evicting.difference_update(victims)
                self._resident = resident - set(victims)
                load_s = await self._load(mid)
                self._resident |= {mid}
                report = LoadReport(mid, True, tuple(victims), round(load_s * 1000, 1))
            if lease:
                self._in_use[mid] += 1
            return report

    def _memory(self, mid: str) -> float:
        return self.policy.doc.models[mid].memory_gb or 0.0

    def _plan(self, mid: str, resident: frozenset[str]) -> list[str]:
        """The models to unload so that ``mid`` fits, least recently used first; or
        MEMORY_EXCEEDED, before anything is unloaded."""
        assert self.policy.doc.residency is not None  # active
        limit = self.policy.doc.residency.memory_gb
        used = sum(self._memory(m) for m in resident)
        need = self._memory(mid)
        owned = {record.model for record in self.servers.records().values()}
        movable = [
            m
            for m in resident
            if self.policy.doc.models[m].tier != "hot"
            and not self._in_use[m]
            and (m not in self.specs or m in owned)  # never stop a server rolegate did not start
        ]
        movable.sort(key=lambda m: (self._last_used.get(m, 0.0), m))
        victims: list[str] = []
        while used + need > limit and movable:
            victim = movable.pop(0)
            victims.append(victim)
            used -= self._memory(victim)
        if used + need > limit:
            held = sorted(m for m in resident if m not in victims)
            raise RefusedError(
                f"{mid} needs {need:g} GB but only {limit - used:g} of the {limit:g} GB in "
                f"residency.memory_gb can be freed: {', '.join(held) or 'nothing'} stay loaded "
                "(HOT, in use, or not started by rolegate). Retry when a call ends, or free memory",
                code=Code.MEMORY_EXCEEDED,
            )
        return victims

    async def _load(self, mid: str) -> float:
        # Without a residency section only `rolegate up` loads (servers only): its default limit.
        residency = self.policy.doc.residency
        timeout = residency.load_timeout_s if residency is not None else DEFAULT_LOAD_TIMEOUT_S
        if mid in self.specs:
            return await self.servers.start(self.specs[mid], self._http, timeout)
        model = self.policy.doc.models[mid]
        client = self._client_for(model.provider)
        if not isinstance(client, ResidencyClient):
            raise ProviderError(f"{mid}'s provider cannot load models", code=Code.LOAD_FAILED)
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                await client.load(model.name, keep_alive(self.policy, mid))
        except TimeoutError:
            raise ProviderError(
                f"{mid} was not loaded within {timeout:g} s (residency.load_timeout_s)",
                code=Code.LOAD_TIMEOUT,
            ) from None
        return time.monotonic() - started

    async def _unload(self, mid: str) -> None:
        if mid in self.specs:
            await self.servers.stop(self.specs[mid].port)
            return
        client = self._client_for(self.policy.doc.models[mid].provider)
        await client.unload(self.policy.doc.models[mid].name)

    @asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        self.servers.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(self.servers.dir) / "residency.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await anyio.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # -- the operator's commands -----------------------------------------------------------

    async def up(
        self, tier: str, on_start: Callable[[str, int, int], None] | None = None
    ) -> list[tuple[str, LoadReport | RefusedError | ProviderError]]:
        """Load every tracked model of ``tier`` and the tiers above it that is not loaded,
        HOT first; a model that cannot be loaded is reported, the others still are.
        ``on_start(model, i, n)`` is told before each (a start or load can take minutes)."""
        order = {"hot": 0, "warm": 1, "cold": 2}
        wanted = sorted(
            (m for m in self.policy.managed if self.policy.doc.models[m].tier in TIERS[tier]),
            key=lambda m: (order[self.policy.doc.models[m].tier], m),
        )
        results: list[tuple[str, LoadReport | RefusedError | ProviderError]] = []
        for i, mid in enumerate(wanted, 1):
            if on_start is not None:
                on_start(mid, i, len(wanted))
            try:
                results.append((mid, await self.load(mid)))
            except (RefusedError, ProviderError) as exc:
                results.append((mid, exc))
        return results

    async def load(self, mid: str) -> LoadReport:
        """Load one model by hand (COLD ones too), within memory; no lease is kept."""
        return await self._bring_in(mid, lease=False)
