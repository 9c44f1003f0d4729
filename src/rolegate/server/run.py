"""run_role: one role's call under every rule, from request to result.

Steps: resolve the run's constraints (the role, and a route_task decision's local_only, job,
channel, risk and needs, which bind the run that uses it) -> pick the model (escalated owner,
else the decision's or the role's) -> claim the pipeline stage -> admission through the
Runner (locality, allowlist, context + reserve, budgets, lanes) -> provider call -> the
declared fallback chain, walked step by step with every rule re-checked, every step audited
and consent asked per step where the chain says so -> validation-stage retries -> result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from rolegate.errors import Code, RefusedError, RequestError, RolegateError
from rolegate.plugins.base import ChatResult, Message
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.contracts import check_output
from rolegate.policy.limits import MAX_PROMPT_CHARS, check_count, check_name
from rolegate.server.accounting import Call as _Call
from rolegate.server.constraints import Constraints
from rolegate.server.critic import (
    automatic_critic,
    check_critic_allowed,
    critic_prompt,
    critique_of,
)
from rolegate.server.fallback import call_with_fallback
from rolegate.server.logs import get_logger
from rolegate.server.outcome import finish_run
from rolegate.server.runner import Runner

if TYPE_CHECKING:
    from rolegate.server.models import RunResult
    from rolegate.server.service import Rolegate

log = get_logger()
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Consent:
    """The user's answer about switching to a fallback model (asked up front)."""

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


async def resolve_constraints(
    service: Rolegate,
    *,
    role: str,
    job: str | None,
    channel: str | None,
    decision_id: str | None,
    local_only: bool,
    max_output_tokens: int | None,
) -> Constraints:
    """What binds every call of this run: the caller's arguments and, with a decision_id,
    every constraint the decision was made under (they can be added to, never dropped)."""
    doc = service.policy.doc
    for value, what in ((role, "role"), (job, "job"), (channel, "channel")):
        check_name(value, what)
    check_count(max_output_tokens, "max_output_tokens", low=1)
    if role not in doc.roles:
        raise RequestError(
            f"unknown role {role!r}; the policy defines {sorted(doc.roles)}", code=Code.UNKNOWN_ROLE
        )
    needs: frozenset[str] = frozenset()
    risk: str | None = None
    model: str | None = None
    if decision_id is not None:
        check_name(decision_id, "decision_id")
        decision = await service.decision(decision_id)
        if decision.outcome != "route" or decision.role != role:
            raise RequestError(
                f"decision {decision_id} routed role {decision.role!r} with outcome "
                f"{decision.outcome!r}; it cannot run role {role!r}",
                code=Code.INVALID_ARGUMENT,
            )
        job = _bound("job", job, decision.job, decision_id)
        channel = _bound("channel", channel, decision.channel, decision_id)
        cap = decision.max_output_tokens
        if max_output_tokens is not None and cap is not None and max_output_tokens > cap:
            raise RequestError(
                f"decision {decision_id} was made for at most {cap:,} output tokens; route "
                "again to run a larger call",
                code=Code.INVALID_ARGUMENT,
            )
        max_output_tokens = max_output_tokens or decision.max_output_tokens
        local_only = local_only or decision.local_only
        needs, risk = frozenset(decision.required_capabilities), decision.risk
        model = decision.model
    if job is not None and job not in doc.jobs:
        raise RequestError(f"unknown job {job!r}", code=Code.UNKNOWN_JOB)
    if job is not None and doc.jobs[job].script_only:
        raise RefusedError(
            f"job {job!r} is script-only: it runs without any model", code=Code.SCRIPT_ONLY
        )
    if channel is not None and channel not in doc.channels:
        raise RequestError(f"unknown channel {channel!r}", code=Code.UNKNOWN_CHANNEL)
    local_only = local_only or service.policy.is_local_only(job)
    judge = doc.risk.judge_role if risk == "high" else None
    if judge is not None and local_only:
        judge_model = service.policy.models[doc.roles[judge].model]
        if judge_model.locality == "cloud":
            raise RefusedError(
                f"high-risk work needs the cloud judge {judge!r} ({judge_model.id}), but "
                "local_only forbids cloud calls",
                code=Code.CLOUD_JUDGE_REQUIRED,
            )
    return Constraints(
        role=role,
        job=job,
        local_only=local_only,
        channel=channel or doc.defaults.channel,
        risk=risk,
        needs=needs,
        max_output=max_output_tokens or doc.defaults.max_output_tokens,
        decision_id=decision_id,
        decision_model=model,
    )


def _bound(what: str, given: str | None, decided: str | None, decision_id: str) -> str | None:
    if given is not None and given != decided:
        raise RequestError(
            f"decision {decision_id} was made for {what} {decided!r}, not {given!r}; run it "
            f"with the same {what}, or route again",
            code=Code.INVALID_ARGUMENT,
        )
    return decided


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
    local_only: bool = False,
    ctx: Any = None,
    consent: Consent | None = None,
) -> RunResult:
    policy = runner.policy
    limits = await resolve_constraints(
        service,
        role=role,
        job=job,
        channel=channel,
        decision_id=decision_id,
        local_only=local_only,
        max_output_tokens=max_output_tokens,
    )
    check_name(task_id, "task_id")
    check_name(stage, "stage")
    if stage is not None and task_id is None:
        raise RequestError(
            "a stage belongs to a task: pass task_id too", code=Code.INVALID_ARGUMENT
        )
    role_def = policy.doc.roles[role]
    chat = _messages(prompt, messages, system or service.default_system_prompt(role))
    escalated = await service.current_model(task_id, role) if task_id else None
    info = policy.models[escalated or limits.decision_model or role_def.model]
    await check_critic_allowed(service, role, task_id)
    started = time.perf_counter()
    claim = await service.claim_stage(task_id, stage, role, info.id)
    try:
        call, result, fallback, attempts = await _calls(
            runner, service, limits, info, chat, ctx, consent, task_id, stage
        )
    except BaseException:
        await service.release_stage(task_id, stage, claim)
        raise
    outcome = await finish_run(
        service,
        limits=limits,
        call=call,
        result=result,
        latency_s=time.perf_counter() - started,
        fallback=fallback,
        task_id=task_id,
        stage=stage,
        claim=claim,
        attempts=attempts,
    )
    critic = automatic_critic(policy, role, stage, escalated=escalated is not None)
    if critic is not None and task_id is not None and stage is not None:
        # The owner output is passed to the critic in memory only; it is never stored.
        try:
            review = await run_role(
                runner,
                service,
                role=critic,
                prompt=critic_prompt(stage, outcome.output),
                job=limits.job,
                task_id=task_id,
                stage=stage,
                max_output_tokens=limits.max_output,
                channel=limits.channel,
                local_only=limits.local_only,
            )
        except RolegateError as exc:
            outcome.critique_error = f"{exc.code}: {exc.message}"
        else:
            outcome.critique = critique_of(review)
    return outcome


async def _calls(
    runner: Runner,
    service: Rolegate,
    limits: Constraints,
    info: ModelInfo,
    chat: list[Message],
    ctx: Any,
    consent: Consent | None,
    task_id: str | None,
    stage: str | None,
) -> tuple[_Call, ChatResult, Any, int]:
    """The call (with its declared fallbacks), then validation-stage retries (seed 002)."""
    policy = runner.policy
    context: dict[str, object] = {
        "role": limits.role,
        "job": limits.job,
        "decision_id": limits.decision_id,
        "task_id": task_id,
        "stage": stage,
    }
    call, result, fallback = await call_with_fallback(
        runner, service, limits, info, chat, context=context, ctx=ctx, consent=consent
    )
    attempts = 1
    retries = _validation_retries(policy, limits.role, stage)
    while retries and not _contract_ok(policy, limits.role, result.text):
        log.info(
            "validation_retry",
            role=limits.role,
            model=call.info.id,
            attempt=attempts + 1,
            policy_hash=policy.hash,
        )
        fallback_from = call.context.get("fallback_from")
        try:
            retry = await runner.admit(service, call.info, chat, limits)
            retry.context.update(context, attempt=attempts + 1, fallback_from=fallback_from)
            retried = await runner.invoke(service, retry, chat, limits, ctx=ctx)
        except RolegateError as exc:
            # The output already paid for stands; the failed retry is a warning.
            call.warnings.append(f"{exc.code}: validation retry {attempts + 1} failed: "
                                 f"{exc.message}")  # fmt: skip
            break
        call, result = retry, retried
        attempts += 1
        retries -= 1
    return call, result, fallback, attempts


def _validation_retries(policy: Policy, role: str, stage: str | None) -> int:
    if stage is None or policy.doc.roles[role].output_contract is None:
        return 0
    declared = policy.stages.get(stage)
    return declared.max_retries if declared is not None and declared.validate_contract else 0


def _contract_ok(policy: Policy, role: str, text: str) -> bool:
    name = policy.doc.roles[role].output_contract
    return name is None or check_output(policy.doc.contracts[name], text).valid
