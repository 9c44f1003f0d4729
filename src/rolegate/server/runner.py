"""The Runner: provider clients, admission and one accounted provider call.

Admission, in order: locality and allowlist (before any server is contacted, not even to
count tokens) -> input tokens (the policy's conservative estimate; an exact count from the
server only when the estimate is over the limit) -> context + reserve -> a ledger reservation
of the worst case. A call then takes its model's slot and its weight lane, runs (streaming
progress to the client where the channel allows) and is settled in the ledger whatever
happens: committed, charged for what was produced, or released.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params

from rolegate.errors import Code, ProviderError, RefusedError
from rolegate.plugins.base import ChatRequest, ChatResult, Message, ProviderClient
from rolegate.plugins.manager import Registry
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.decision import NO_USAGE, BudgetSnapshot
from rolegate.policy.router import check_model, streaming_allowed
from rolegate.policy.tokens import estimate_tokens
from rolegate.server.accounting import Call as _Call
from rolegate.server.accounting import reserve, settle
from rolegate.server.boundary import encodable
from rolegate.server.constraints import Constraints
from rolegate.server.logs import get_logger
from rolegate.server.models import RunResult

if TYPE_CHECKING:
    from rolegate.server.service import Rolegate

log = get_logger()
LEASE_MARGIN_S = 30.0


class Runner:
    """Runs roles on real providers; one per server process."""

    def __init__(
        self,
        policy: Policy,
        registry: Registry,
        *,
        env: Mapping[str, str] | None = None,
        transports: Mapping[str, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.env = os.environ if env is None else env
        self.transports = dict(transports or {})
        self._clients: dict[str, ProviderClient] = {}
        self._model_slots = {
            mid: anyio.CapacityLimiter(info.model.max_concurrency)
            for mid, info in policy.models.items()
        }
        lanes = policy.doc.lanes
        self._lanes = {
            name: anyio.CapacityLimiter(limit)
            for name, limit in (("heavy", lanes.heavy), ("light", lanes.light))
            if limit is not None
        }

    def missing_provider_types(self) -> list[str]:
        types = {p.type for p in self.policy.doc.providers.values()}
        return sorted(types - set(self.registry.providers))

    def client(self, provider: str) -> ProviderClient:
        found = self._clients.get(provider)
        if found is not None:
            return found
        config = self.policy.doc.providers[provider]
        ptype = self.registry.providers.get(config.type)
        if ptype is None:
            raise ProviderError(
                f"no plugin provides provider type {config.type!r} (provider {provider!r})",
                code=Code.PROVIDER_UNAVAILABLE,
            )
        api_key = None
        if config.api_key_env is not None:
            api_key = self.env.get(config.api_key_env)
            if not api_key:
                raise ProviderError(
                    f"provider {provider!r} needs an API key: set {config.api_key_env}",
                    code=Code.PROVIDER_UNAVAILABLE,
                )
        client = ptype.create(config, api_key=api_key, transport=self.transports.get(provider))
        self._clients[provider] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def count(self, info: ModelInfo, messages: list[Message]) -> tuple[int, bool]:
        """Input tokens for admission: the policy's conservative estimate, or an exact count.

        The exact count costs round trips, so it is asked for only when the estimate does
        not fit, and only from local servers (cloud servers get text only in the admitted
        call). Real usage from the provider replaces either once the call is done.
        """
        settings = self.policy.doc.token_estimate
        text = "\n".join(m.content for m in messages)
        estimate = estimate_tokens(text, settings, messages=len(messages))
        limit = info.max_input_tokens
        if limit is not None and estimate > limit and info.locality == "local":
            client = self.client(info.model.provider)
            exact = await client.count_tokens(info.model.name, messages)
            if exact is not None:
                return exact.tokens, True
        return estimate, False

    def _refuse_if(
        self,
        service: Rolegate,
        info: ModelInfo,
        limits: Constraints,
        *,
        tokens: int,
        max_output: int,
        snapshot: BudgetSnapshot,
    ) -> None:
        refusal = check_model(
            info,
            policy=self.policy,
            job_name=limits.job,
            role=limits.role,
            local_only=limits.local_only,
            input_tokens=tokens,
            max_output=max_output,
            snapshot=snapshot,
            needs=limits.needs,
        )
        if refusal is not None:
            raise RefusedError(refusal.sentence(info.id), code=refusal.code)

    async def admit(
        self, service: Rolegate, info: ModelInfo, messages: list[Message], limits: Constraints
    ) -> _Call:
        """Check every rule for this model and reserve the worst case, or raise."""
        call = await self.check(service, info, messages, limits)
        await self.reserve(service, call, limits)
        return call

    async def check(
        self, service: Rolegate, info: ModelInfo, messages: list[Message], limits: Constraints
    ) -> _Call:
        """Every rule for this model and this input, without reserving anything; or raise."""
        # Locality, allowlist and capabilities first, with no tokens: a forbidden server is
        # never contacted, not even to count tokens.
        self._refuse_if(service, info, limits, tokens=0, max_output=0, snapshot=NO_USAGE)
        tokens, exact = await self.count(info, messages)
        snapshot = await service.snapshot()
        max_output = limits.max_output
        self._refuse_if(
            service, info, limits, tokens=tokens, max_output=max_output, snapshot=snapshot
        )
        return _Call("req_" + uuid.uuid4().hex, info, tokens, exact, max_output)

    async def reserve(self, service: Rolegate, call: _Call, limits: Constraints) -> None:
        """Hold the call's worst case in the ledger (BUDGET_EXHAUSTED if it no longer fits)."""
        if service.ledger is None:
            return
        info = call.info
        timeout = info.model.timeout_s or self.policy.doc.providers[info.model.provider].timeout_s
        await reserve(
            service, call, role=limits.role, job=limits.job, lease_s=timeout + LEASE_MARGIN_S
        )

    async def invoke(
        self,
        service: Rolegate,
        call: _Call,
        messages: list[Message],
        limits: Constraints,
        *,
        ctx: Any,
    ) -> ChatResult:
        """One provider call, streamed to the client only where the channel and the model
        allow it, and settled in the ledger whatever happens."""
        info = call.info
        provider = self.policy.doc.providers[info.model.provider]
        role_def = self.policy.doc.roles[limits.role]
        contract = (
            self.policy.doc.contracts[role_def.output_contract]
            if role_def.output_contract is not None
            else None
        )
        request = ChatRequest(
            model=info.model.name,
            messages=messages,
            max_output_tokens=call.max_output,
            timeout_s=info.model.timeout_s or provider.timeout_s,
            stream=True,
            json_schema=contract.json_schema() if contract and contract.enforce else None,
            temperature=role_def.temperature,
            keep_alive=info.model.keep_alive,
        )
        allowed = streaming_allowed(self.policy, limits.channel, info)
        stream_to = ctx if allowed and _wants_progress(ctx) else None
        chunks = 0

        async def on_delta(delta: str) -> None:
            nonlocal chunks
            chunks += 1
            if stream_to is not None:
                call.streamed = True
                await stream_to.report_progress(chunks, None, encodable(delta))

        result: ChatResult | None = None
        partial: int | None = None
        code = "CANCELLED"  # unless the call returns or fails with a code
        started = time.perf_counter()
        try:
            async with self._model_slots[info.id], self._lane(info):
                result = await self.client(info.model.provider).chat(request, on_delta)
            result = replace(result, text=encodable(result.text))
            code = "OK"
        except ProviderError as exc:
            partial, code = exc.partial_output_tokens, str(exc.code)
            raise
        else:
            return result
        finally:
            elapsed = time.perf_counter() - started
            with anyio.CancelScope(shield=True):
                await settle(
                    service,
                    call,
                    result,
                    partial if result is None else None,
                    chunks,
                    code=code,
                    elapsed_s=elapsed,
                )

    def _lane(self, info: ModelInfo) -> Any:
        lane = self._lanes.get(info.model.weight) if info.locality == "local" else None
        return lane if lane is not None else _NoLane()

    async def run(self, service: Rolegate, **kw: Any) -> RunResult:
        from rolegate.server.run import run_role  # run builds on Runner: import at call time

        return await run_role(self, service, **kw)

    async def probe(self, model: str) -> bool:
        """Is the model's server reachable? A short model listing, for ask-first fallbacks."""
        info = self.policy.models[model]
        connect = self.policy.doc.providers[info.model.provider].connect_timeout_s
        try:
            with anyio.fail_after(connect):
                await self.client(info.model.provider).list_models()
        except (ProviderError, TimeoutError):
            return False
        return True


def _wants_progress(ctx: Any) -> bool:
    """Did the client ask for progress? Without that the SDK sends nothing, so nothing may be
    reported as streamed. On the wire the ask is a progress token in the request; an
    in-process client hands its callback to the request's channel instead (the SDK keeps
    either on that channel; unknown channels count as not asking)."""
    request = getattr(ctx, "request_context", None)
    if progress_token_from_params(getattr(request, "params", None)) is not None:
        return True
    channel = getattr(getattr(request, "session", None), "_request_outbound", None)
    channel = getattr(channel, "_inner", channel)  # the 2026 era wraps the request's channel
    held = (getattr(channel, name, None) for name in ("_progress_token", "_on_progress"))
    return any(value is not None for value in held)


class _NoLane:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
