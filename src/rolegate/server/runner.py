"""run_role: resolve the model, enforce every rule, call the provider, account for it.

Order: validate -> pick the model (escalated owner, else the role's) -> count input
tokens (exact where the server can, else the policy's conservative estimate) ->
admission (locality, allowlist, context + reserve, budgets) -> reserve in the
ledger -> concurrency lanes -> provider call (streaming progress to the client
where the channel allows) -> commit what was used -> contract and escalation.
A fallback happens only along the role's declared chain; an "ask" chain needs
the user's consent, obtained through MCP elicitation.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import anyio

from rolegate.errors import Code, ProviderError, RefusedError, RequestError
from rolegate.plugins.base import ChatRequest, ChatResult, Message, ProviderClient
from rolegate.plugins.manager import Registry
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.contracts import check_output
from rolegate.policy.router import check_model
from rolegate.policy.tokens import estimate_tokens
from rolegate.server.accounting import Call as _Call
from rolegate.server.accounting import reserve, settle
from rolegate.server.logs import get_logger
from rolegate.server.models import FallbackInfo, RunResult
from rolegate.server.outcome import finish_run

if TYPE_CHECKING:
    from rolegate.server.service import Rolegate

log = get_logger()
Role = Literal["system", "user", "assistant"]
MAX_PROMPT_CHARS = 4_000_000
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Consent:
    """The user's answer about switching to a fallback model."""

    granted: bool
    asked: bool


def _messages(
    prompt: str | None, messages: list[dict[str, str]] | None, system: str | None
) -> list[Message]:
    if (prompt is None) == (messages is None):
        raise RequestError("give exactly one of prompt or messages", code=Code.INVALID_ARGUMENT)
    out: list[Message] = []
    if system:
        out.append(Message("system", system))
    if prompt is not None:
        if not prompt.strip():
            raise RequestError("prompt is empty", code=Code.INVALID_ARGUMENT)
        out.append(Message("user", prompt))
    else:
        assert messages is not None
        if not messages:
            raise RequestError("messages is empty", code=Code.INVALID_ARGUMENT)
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise RequestError(
                    f"messages[{i}] needs role (system, user or assistant) and content (text)",
                    code=Code.INVALID_ARGUMENT,
                )
            out.append(Message(cast(Role, role), content))
    if sum(len(m.content) for m in out) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"input is over {MAX_PROMPT_CHARS:,} characters; no model here accepts it",
            code=Code.OVER_BUDGET,
        )
    return out


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
        *,
        role: str,
        job: str | None,
        tokens: int,
        max_output: int,
    ) -> None:
        refusal = check_model(
            info,
            policy=self.policy,
            job_name=job,
            role=role,
            local_only=self.policy.is_local_only(job),
            input_tokens=tokens,
            max_output=max_output,
            snapshot=service.snapshot(),
        )
        if refusal is not None:
            text = (
                refusal.reason
                if refusal.code == Code.OVER_BUDGET
                else f"{info.id} {refusal.reason}"
            )
            raise RefusedError(text, code=refusal.code)

    async def admit(
        self,
        service: Rolegate,
        info: ModelInfo,
        messages: list[Message],
        *,
        role: str,
        job: str | None,
        max_output: int,
    ) -> _Call:
        # Locality and allowlist first, with no tokens: a forbidden server is never contacted,
        # not even to count tokens.
        self._refuse_if(service, info, role=role, job=job, tokens=0, max_output=0)
        tokens, exact = await self.count(info, messages)
        self._refuse_if(service, info, role=role, job=job, tokens=tokens, max_output=max_output)
        call = _Call("req_" + uuid.uuid4().hex, info, tokens, exact, max_output)
        if service.ledger is not None:
            timeout = (
                info.model.timeout_s or self.policy.doc.providers[info.model.provider].timeout_s
            )
            await reserve(service, call, role=role, job=job, lease_s=timeout + LEASE_MARGIN_S)
        return call

    async def invoke(
        self,
        service: Rolegate,
        call: _Call,
        messages: list[Message],
        *,
        stream_to: Any,
        schema: dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> ChatResult:
        info = call.info
        provider = self.policy.doc.providers[info.model.provider]
        timeout = info.model.timeout_s or provider.timeout_s
        request = ChatRequest(
            model=info.model.name,
            messages=messages,
            max_output_tokens=call.max_output,
            timeout_s=timeout,
            stream=True,
            json_schema=schema,
            temperature=temperature,
            keep_alive=info.model.keep_alive,
        )
        chunks = 0

        async def on_delta(delta: str) -> None:
            nonlocal chunks
            chunks += 1
            if stream_to is not None:
                await stream_to.report_progress(chunks, None, delta)

        result: ChatResult | None = None
        partial: int | None = None
        code = "CANCELLED"  # unless the call returns or fails with a code
        started = time.perf_counter()
        try:
            async with self._model_slots[info.id], self._lane(info):
                result = await self.client(info.model.provider).chat(request, on_delta)
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


class _NoLane:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


async def run_role(
    runner: Runner,
    service: Rolegate,
    *,
    role: str,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    system: str | None = None,
    job: str | None = None,
    task_id: str | None = None,
    stage: str | None = None,
    decision_id: str | None = None,
    max_output_tokens: int | None = None,
    channel: str | None = None,
    ctx: Any = None,
    consent: Consent | None = None,
) -> RunResult:
    policy = runner.policy
    doc = policy.doc
    role_def = doc.roles.get(role)
    if role_def is None:
        raise RequestError(
            f"unknown role {role!r}; the policy defines {sorted(doc.roles)}", code=Code.UNKNOWN_ROLE
        )
    if job is not None and job not in doc.jobs:
        raise RequestError(f"unknown job {job!r}", code=Code.UNKNOWN_JOB)
    if job is not None and doc.jobs[job].script_only:
        raise RefusedError(
            f"job {job!r} is script-only: it runs without any model", code=Code.SCRIPT_ONLY
        )
    if channel is not None and channel not in doc.channels:
        raise RequestError(f"unknown channel {channel!r}", code=Code.UNKNOWN_CHANNEL)
    if decision_id is not None:
        decision = service.decision(decision_id)
        if decision.outcome != "route" or decision.role != role:
            raise RequestError(
                f"decision {decision_id} routed role {decision.role!r} with outcome "
                f"{decision.outcome!r}; it cannot run role {role!r}",
                code=Code.INVALID_ARGUMENT,
            )
    if stage is not None and task_id is None:
        raise RequestError(
            "a stage belongs to a task: pass task_id too", code=Code.INVALID_ARGUMENT
        )
    chat = _messages(prompt, messages, system or service.default_system_prompt(role))
    model_id = service.tasks.current_model(task_id, role) if task_id else None
    info = policy.models[model_id or role_def.model]
    if task_id and stage:
        service.check_owner(task_id, stage, role, info.id)
    max_output = max_output_tokens or doc.defaults.max_output_tokens
    contract = doc.contracts.get(role_def.output_contract) if role_def.output_contract else None
    schema = contract.json_schema() if contract is not None and contract.enforce else None
    ch = channel or doc.defaults.channel
    streaming = ch is None or (
        doc.channels[ch].streaming
        and info.model.streaming.get(ch, info.model.streaming.get(doc.channels[ch].kind, False))
    )
    started = time.perf_counter()
    fallback: FallbackInfo | None = None
    context: dict[str, object] = {
        "role": role,
        "job": job,
        "decision_id": decision_id,
        "task_id": task_id,
        "stage": stage,
    }

    async def attempt(call: _Call) -> ChatResult:
        return await runner.invoke(
            service,
            call,
            chat,
            stream_to=ctx if streaming else None,
            schema=schema,
            temperature=role_def.temperature,
        )

    call = await runner.admit(service, info, chat, role=role, job=job, max_output=max_output)
    call.context.update(context, attempt=1)
    try:
        result = await attempt(call)
    except ProviderError as exc:
        step = await _fallback(runner, service, role, exc, info, ctx, consent)
        if step is None:
            raise
        next_info, how = step
        fallback = FallbackInfo(
            from_model=info.id, to_model=next_info.id, reason=str(exc.code), consent=how
        )
        log.warning(
            "fallback",
            role=role,
            from_model=info.id,
            to_model=next_info.id,
            reason=str(exc.code),
            consent=how,
            policy_hash=policy.hash,
        )
        call = await runner.admit(
            service, next_info, chat, role=role, job=job, max_output=max_output
        )
        call.context.update(context, attempt=1, fallback_from=info.id)
        result = await attempt(call)
    # Validation stage (seed 002): re-run on a contract violation, a bounded number of times.
    attempts = 1
    retries = _validation_retries(policy, role, stage)
    while retries and not _contract_ok(policy, role, result.text):
        log.info(
            "validation_retry",
            role=role,
            model=call.info.id,
            attempt=attempts + 1,
            policy_hash=policy.hash,
        )
        fallback_from = call.context.get("fallback_from")
        call = await runner.admit(
            service, call.info, chat, role=role, job=job, max_output=max_output
        )
        call.context.update(context, attempt=attempts + 1, fallback_from=fallback_from)
        result = await attempt(call)
        attempts += 1
        retries -= 1
    return finish_run(
        service,
        role=role,
        job=job,
        info=call.info,
        request_id=call.request_id,
        input_tokens=call.input_tokens,
        input_exact=call.input_exact,
        max_output=max_output,
        result=result,
        latency_s=time.perf_counter() - started,
        fallback=fallback,
        decision_id=decision_id,
        task_id=task_id,
        stage=stage,
        attempts=attempts,
    )


def _validation_retries(policy: Policy, role: str, stage: str | None) -> int:
    if stage is None or policy.doc.roles[role].output_contract is None:
        return 0
    for declared in policy.doc.pipeline.stages:
        if declared.name == stage and declared.validate_contract:
            return declared.max_retries
    return 0


def _contract_ok(policy: Policy, role: str, text: str) -> bool:
    name = policy.doc.roles[role].output_contract
    return name is None or check_output(policy.doc.contracts[name], text).valid


async def _fallback(
    runner: Runner,
    service: Rolegate,
    role: str,
    exc: ProviderError,
    failed: ModelInfo,
    ctx: Any,
    consent: Consent | None,
) -> tuple[ModelInfo, str] | None:
    """The declared next model and how the switch was approved, or None (re-raise)."""
    fb = runner.policy.doc.roles[role].fallback
    if str(exc.code) not in fb.on or failed.id not in (
        runner.policy.doc.roles[role].model,
        *fb.models,
    ):
        return None
    chain = [runner.policy.doc.roles[role].model, *fb.models]
    index = chain.index(failed.id)
    if index + 1 >= len(chain):
        return None
    nxt = runner.policy.models[chain[index + 1]]
    if fb.mode == "auto":
        return nxt, "auto"
    if consent is not None and consent.asked:
        if consent.granted:
            return nxt, "user"
        raise RefusedError(
            f"{failed.id} failed ({exc}); the user declined switching to {nxt.id}",
            code=Code.NEEDS_CONSENT,
        )
    granted = await service.ask_consent(ctx, failed.id, nxt.id, str(exc.code))
    if granted is True:
        return nxt, "user"
    reason = "the user declined" if granted is False else "this client cannot be asked"
    raise RefusedError(
        f"{failed.id} failed ({exc}) and the policy says ask before switching to "
        f"{nxt.id}; {reason}. Retry after consenting to {nxt.id}, or wait for {failed.id}",
        code=Code.NEEDS_CONSENT,
    )
