"""One provider call, admitted and accounted.

Admission, in order: locality and allowlist (before any server is contacted, not even to
count tokens) -> input tokens (the policy's conservative estimate; an exact count from the
server only when the estimate is over the limit) -> context + reserve -> a ledger reservation
of the worst case. A call then takes its model's slot and its weight lane, runs (streaming
progress to the caller where the channel allows) and is settled in the ledger whatever
happens: committed, charged for what was produced, or released.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import replace

import anyio

from rolegate.engine.accounting import Call, Outcome, reserve, settle
from rolegate.engine.constraints import Constraints
from rolegate.engine.providers import ProviderPool
from rolegate.engine.requests import Caller
from rolegate.engine.store import Store
from rolegate.engine.text import encodable
from rolegate.errors import ProviderError, RefusedError
from rolegate.plugins.base import ChatRequest, ChatResult, Message
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.decision import NO_USAGE, BudgetSnapshot
from rolegate.policy.router import check_model, streaming_allowed
from rolegate.topology.residency import LoadReport, Residency, keep_alive

LEASE_MARGIN_S = 30.0


class CallRunner:
    """Admits, runs and settles provider calls for one policy, pool and store."""

    def __init__(
        self, policy: Policy, pool: ProviderPool, store: Store, residency: Residency | None = None
    ) -> None:
        self.policy = policy
        self.pool = pool
        self.store = store
        self.residency = residency

    def refuse_if(
        self,
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

    async def admit(self, info: ModelInfo, messages: list[Message], limits: Constraints) -> Call:
        """Check every rule for this model and reserve the worst case, or raise."""
        call = await self.check(info, messages, limits)
        await self.reserve(call, limits)
        return call

    async def check(self, info: ModelInfo, messages: list[Message], limits: Constraints) -> Call:
        """Every rule for this model and this input, without reserving anything; or raise."""
        # Locality, allowlist and capabilities first, with no tokens: a forbidden server is
        # never contacted, not even to count tokens.
        self.refuse_if(info, limits, tokens=0, max_output=0, snapshot=NO_USAGE)
        reachable = True
        if self.residency is not None and self.residency.active and info.id in self.policy.managed:
            await self.residency.refuse_cold(info.id)  # MODEL_COLD, before any reservation
            reachable = info.id in await self.residency.snapshot()  # count without a server
        tokens, exact = await self.pool.count(info, messages, server=reachable)
        snapshot = await self.store.snapshot()
        max_output = limits.max_output
        self.refuse_if(info, limits, tokens=tokens, max_output=max_output, snapshot=snapshot)
        return Call("req_" + uuid.uuid4().hex, info, tokens, exact, max_output)

    async def reserve(self, call: Call, limits: Constraints) -> None:
        """Hold the call's worst case in the ledger (BUDGET_EXHAUSTED if it no longer fits)."""
        if self.store.ledger is None:
            return
        lease_s = self.pool.timeout_s(call.info) + LEASE_MARGIN_S
        await reserve(self.policy, self.store, call, role=limits.role, job=limits.job,
                      lease_s=lease_s)  # fmt: skip

    def _request(
        self,
        call: Call,
        messages: list[Message],
        limits: Constraints,
        schema: dict[str, object] | None = None,
    ) -> ChatRequest:
        info = call.info
        role_def = self.policy.doc.roles[limits.role]
        name = role_def.output_contract
        contract = self.policy.doc.contracts[name] if name is not None else None
        if schema is not None:  # the engine's own constrained question (the router model)
            return ChatRequest(
                model=info.model.name,
                messages=messages,
                max_output_tokens=call.max_output,
                timeout_s=self.pool.timeout_s(info),
                stream=False,
                json_schema=schema,
                temperature=0.0,
                keep_alive=keep_alive(self.policy, info.id),
            )
        return ChatRequest(
            model=info.model.name,
            messages=messages,
            max_output_tokens=call.max_output,
            timeout_s=self.pool.timeout_s(info),
            stream=True,
            json_schema=contract.json_schema() if contract and contract.enforce else None,
            temperature=role_def.temperature,
            keep_alive=keep_alive(self.policy, info.id),
        )

    async def invoke(
        self,
        call: Call,
        messages: list[Message],
        limits: Constraints,
        caller: Caller,
        *,
        schema: dict[str, object] | None = None,
    ) -> ChatResult:
        """One provider call, streamed to the caller only where the channel and the model
        allow it, and settled in the ledger whatever happens. ``schema``: constrain the
        output to it at temperature 0, instead of the role's contract and temperature."""
        info = call.info
        request = self._request(call, messages, limits, schema)
        allowed = streaming_allowed(self.policy, limits.channel, info)
        stream_to = caller if allowed and caller.wants_progress else None
        outcome = Outcome()

        async def on_delta(delta: str) -> None:
            outcome.chunks += 1
            if stream_to is not None:
                call.streamed = True
                await stream_to.progress(outcome.chunks, encodable(delta))

        started = time.perf_counter()
        try:
            # A load on demand holds the model's lane too: a heavy model loads one at a time.
            async with self.pool.slot(info), self.pool.lane(info), self._lease(info) as load:
                call.load = load
                started = time.perf_counter()  # the call's latency, without the load
                result = await self.pool.client(info.model.provider).chat(request, on_delta)
        except ProviderError as exc:
            outcome.partial, outcome.code = exc.partial_output_tokens, str(exc.code)
            raise
        else:
            outcome.result = result = replace(result, text=encodable(result.text))
            outcome.code = "OK"
            return result
        finally:
            outcome.elapsed_s = time.perf_counter() - started
            with anyio.CancelScope(shield=True):
                await settle(self.policy, self.store, call, outcome)

    def _lease(self, info: ModelInfo) -> AbstractAsyncContextManager[LoadReport | None]:
        if self.residency is None:
            return nullcontext()
        return self.residency.lease(info.id)
