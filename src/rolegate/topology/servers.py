"""llama.cpp servers rolegate starts from a policy, and stops: its own and nothing else.

Each started server is recorded in the state directory (one JSON file per port: pid,
command line, log file, load time), so that ``rolegate down`` in another shell, or a server
process that loads a WARM model on demand, knows what rolegate owns. A record whose process
is gone, or whose pid now belongs to another program, is stale and ignored: nothing but the
recorded process (pid and start time) is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
import httpx

from rolegate.errors import Code, ProviderError
from rolegate.policy import Policy
from rolegate.policy.topology_checks import server_address

HEALTH_POLL_S = 0.1
STOP_GRACE_S = 10.0
_PREFIX = re.compile(r"^[0-9.]+ ([A-Z]) ")  # llama.cpp's "0.00.009.911 E "
_EXPLAINS = re.compile(r"error|fail|unable|cannot|can't|couldn't|invalid|no such|denied", re.I)


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("ROLEGATE_STATE_DIR"):
        return Path(env["ROLEGATE_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rolegate"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One declared server, resolved: the binary (found when it starts, so that a machine
    without llama-server can still route to, probe and report servers running elsewhere)
    and its arguments."""

    model: str  # the policy's model id
    host: str
    port: int
    gguf: Path
    args: tuple[str, ...]
    tier: str
    memory_gb: float | None
    binary: str | None = None  # the policy's; else $ROLEGATE_LLAMA_SERVER or PATH at start
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def argv(self) -> tuple[str, ...]:
        """What will run: ProviderError (LOAD_FAILED) when there is no llama-server."""
        return (_binary(self.binary, self.env), *self.args)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerRecord:
    model: str
    port: int
    pid: int
    start_ticks: int | None
    argv: tuple[str, ...]
    log: str
    started_at: float
    load_s: float | None = None


def _binary(configured: str | None, env: Mapping[str, str]) -> str:
    binary = configured or env.get("ROLEGATE_LLAMA_SERVER") or shutil.which("llama-server")
    if not binary:
        raise ProviderError(
            "no llama-server to start: set the server's 'binary', or $ROLEGATE_LLAMA_SERVER, "
            "or put llama-server on PATH",
            code=Code.LOAD_FAILED,
        )
    return binary


def server_specs(policy: Policy, env: Mapping[str, str] = os.environ) -> dict[str, ServerSpec]:
    """Every declared server, by model id, with paths resolved against the policy file."""
    specs: dict[str, ServerSpec] = {}
    for mid, model in sorted(policy.doc.models.items()):
        server = model.server
        if server is None:
            continue
        address = server_address(policy.doc.providers[model.provider].base_url)
        if address is None:  # refused by the policy checks; kept total for the type checker
            continue
        host, port = address
        gguf = policy.base_dir / server.gguf
        argv = ["-m", str(gguf), "--host", host, "--port", str(port)]
        argv += ["--alias", model.name]
        if server.ctx_size is not None:
            argv += ["-c", str(server.ctx_size)]
        if server.threads is not None:
            argv += ["-t", str(server.threads)]
        if server.parallel is not None:
            argv += ["-np", str(server.parallel)]
        spec_types = []
        if server.draft is not None:
            draft = server.draft
            argv += ["--spec-draft-model", str(policy.base_dir / draft.gguf)]
            spec_types.append("draft-simple")
            for flag, value in (
                ("--spec-draft-n-max", draft.max),
                ("--spec-draft-n-min", draft.min),
                ("--spec-draft-p-min", draft.p_min),
                ("--ctx-size-draft", draft.ctx_size),
            ):
                if value is not None:
                    argv += [flag, str(value)]
        if server.lookup:
            spec_types.append("ngram-simple")
        if spec_types:
            argv += ["--spec-type", ",".join(spec_types)]
        argv += server.args
        specs[mid] = ServerSpec(
            mid, host, port, gguf, tuple(argv), model.tier, model.memory_gb, server.binary, env
        )
    return specs


def explaining_line(log: Path) -> str:
    """The log line that most likely says why a server did not start: the first one logged
    at error level (later ones are its consequences), else the first that reads like an
    error; without llama.cpp's timestamp and level."""
    try:
        lines = log.read_text("utf-8", "replace").splitlines()[-400:]
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in lines if line.strip()]
    errors = [line for line in lines if (m := _PREFIX.match(line)) and m.group(1) == "E"]
    worded = [line for line in lines if _EXPLAINS.search(_PREFIX.sub("", line))]
    chosen = (errors or worded or lines[-1:] or ["(empty log)"])[0]
    return _PREFIX.sub("", chosen)[:300]


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it names one
    process for good, so a reused pid is never mistaken for the server."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[19]) if fields[0] != "Z" else None  # field 22; a zombie has ended


def rss_bytes(pid: int) -> int | None:
    """The process's resident memory, from /proc (None where it cannot be read)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else None


class Servers:
    """Starts, probes and stops the declared servers; owns only what its records name."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "servers"
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # reaped when stopped

    def _path(self, port: int) -> Path:
        return self.dir / f"{port}.json"

    def records(self) -> dict[int, ServerRecord]:
        """Live records by port; stale ones (process gone or pid reused) are removed."""
        live: dict[int, ServerRecord] = {}
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else ():
            try:
                data = json.loads(path.read_text())
                record = ServerRecord(**{**data, "argv": tuple(data["argv"])})
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if self._alive(record):
                live[record.port] = record
            else:
                path.unlink(missing_ok=True)
        return live

    def _alive(self, record: ServerRecord) -> bool:
        child = self._children.get(record.pid)
        if child is not None:
            return child.poll() is None
        return record.start_ticks is not None and _start_ticks(record.pid) == record.start_ticks

    async def healthy(self, spec: ServerSpec, http: httpx.AsyncClient) -> bool:
        try:
            response = await http.get(f"{spec.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def start(self, spec: ServerSpec, http: httpx.AsyncClient, timeout_s: float) -> float:
        """Start the server and wait until it answers /health; its load time in seconds.
        LOAD_FAILED (with the log line that explains it) or LOAD_TIMEOUT otherwise."""
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / f"{spec.port}.log"
        if not spec.gguf.is_file():
            raise ProviderError(
                f"{spec.model}'s server cannot start: no model file at {spec.gguf}",
                code=Code.LOAD_FAILED,
            )
        argv = spec.argv()
        started = time.monotonic()
        with open(log, "wb") as out:
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives `rolegate up`; a Ctrl-C does not reach it
                )
            except OSError as exc:
                raise ProviderError(
                    f"{spec.model}'s server cannot start: {exc.strerror} ({argv[0]})",
                    code=Code.LOAD_FAILED,
                ) from exc
        self._children[child.pid] = child
        record = ServerRecord(
            spec.model,
            spec.port,
            child.pid,
            _start_ticks(child.pid),
            argv,
            str(log),
            time.time(),
        )
        self._write(record)
        try:
            with anyio.fail_after(timeout_s):
                await self._ready(spec, child, log, http)
        except TimeoutError:
            await self.stop_record(record)
            raise ProviderError(
                f"{spec.model}'s server (port {spec.port}) was not ready within {timeout_s:g} s "
                f"(residency.load_timeout_s); it was stopped. Last log line: "
                f"{explaining_line(log)}",
                code=Code.LOAD_TIMEOUT,
            ) from None
        except ProviderError:
            self._forget(record)
            raise
        load_s = time.monotonic() - started
        self._write(ServerRecord(**{**asdict(record), "load_s": load_s}))
        return load_s

    async def _ready(
        self, spec: ServerSpec, child: subprocess.Popen[bytes], log: Path, http: httpx.AsyncClient
    ) -> None:
        while not await self.healthy(spec, http):
            if child.poll() is not None:
                raise ProviderError(
                    f"{spec.model}'s server (port {spec.port}) exited with code "
                    f"{child.returncode}: {explaining_line(log)} (log: {log})",
                    code=Code.LOAD_FAILED,
                )
            await anyio.sleep(HEALTH_POLL_S)

    def _write(self, record: ServerRecord) -> None:
        tmp = self._path(record.port).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(self._path(record.port))

    def _forget(self, record: ServerRecord) -> None:
        self._path(record.port).unlink(missing_ok=True)
        child = self._children.pop(record.pid, None)
        if child is not None:
            child.wait()

    async def stop_record(self, record: ServerRecord) -> None:
        """SIGTERM, then SIGKILL after a grace period; only the recorded process (same pid,
        same start time) is signalled."""
        if self._alive(record):
            _signal(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while self._alive(record) and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            if self._alive(record):
                _signal(record.pid, signal.SIGKILL)
                while self._alive(record):
                    await anyio.sleep(0.05)
        self._forget(record)

    async def stop(self, port: int) -> bool:
        """Stop the server rolegate started on this port; False if it started none."""
        record = self.records().get(port)
        if record is None:
            return False
        await self.stop_record(record)
        return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the server leads its own session (start_new_session)
