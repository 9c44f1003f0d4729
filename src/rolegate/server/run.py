"""run_role: one role's call under every rule, from request to result.

Order: validate -> pick the model (escalated owner, else the role's) -> admission through the
Runner (locality, allowlist, context + reserve, budgets, lanes) -> provider call -> declared
fallback (an "ask" chain needs the user's consent, through MCP elicitation) -> validation-stage
retries -> result with contract and escalation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from rolegate.errors import Code, ProviderError, RefusedError, RequestError, RolegateError
from rolegate.plugins.base import ChatResult, Message
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.contracts import check_output
from rolegate.server.accounting import Call as _Call
from rolegate.server.critic import (
    automatic_critic,
    check_critic_allowed,
    critic_prompt,
    critique_of,
)
from rolegate.server.logs import get_logger
from rolegate.server.models import FallbackInfo, RunResult
from rolegate.server.outcome import finish_run
from rolegate.server.runner import Runner

if TYPE_CHECKING:
    from rolegate.server.service import Rolegate

log = get_logger()
Role = Literal["system", "user", "assistant"]
MAX_PROMPT_CHARS = 4_000_000


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
    check_critic_allowed(policy, service.tasks, role, task_id)
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
        fallback_record = {
            **context,
            "kind": "fallback",
            "model": info.id,
            "to_model": next_info.id,
            "code": str(exc.code),
            "consent": how,
            "policy_hash": policy.hash,
        }
        await service.audit(fallback_record)
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
    outcome = finish_run(
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
    critic = automatic_critic(policy, service.tasks, role, task_id, stage)
    if critic is not None and task_id is not None and stage is not None:
        # The owner output is passed to the critic in memory only; it is never stored.
        try:
            review = await run_role(
                runner,
                service,
                role=critic,
                prompt=critic_prompt(stage, outcome.output),
                job=job,
                task_id=task_id,
                stage=stage,
                max_output_tokens=max_output,
                channel=channel,
            )
        except RolegateError as exc:
            outcome.critique_error = f"{exc.code}: {exc.message}"
        else:
            outcome.critique = critique_of(review)
    return outcome


def _validation_retries(policy: Policy, role: str, stage: str | None) -> int:
    if stage is None or policy.doc.roles[role].output_contract is None:
        return 0
    declared = policy.stages.get(stage)
    return declared.max_retries if declared is not None and declared.validate_contract else 0


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
