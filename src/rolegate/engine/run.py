"""run_role: one role's call under every rule, from request to result.

The steps, each a function with explicit inputs and outputs:
resolve (the request's constraints, and a route_task decision's, which bind the run) ->
pick the model (an escalated task's, else the decision's, else the role's) -> claim the
pipeline stage -> admit (locality, allowlist, context + reserve, budgets) and reserve ->
call (the declared fallback chain walked step by step, every step re-checked and audited)
-> settle (in ``calls``) -> check the output contract (validation-stage retries) ->
record it on the task, with the escalation its confidence calls for -> the stage's critic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from rolegate.engine.accounting import Call
from rolegate.engine.calls import CallRunner
from rolegate.engine.constraints import Constraints, resolve_constraints
from rolegate.engine.critic import (
    automatic_critic,
    check_critic_allowed,
    critic_prompt,
    critique_of,
)
from rolegate.engine.fallback import call_with_fallback
from rolegate.engine.outcome import finish_run
from rolegate.engine.quality import QualityBook, RoleChoice, record_live, role_choice
from rolegate.engine.requests import NO_CALLER, Caller, RunRequest
from rolegate.engine.results import FallbackInfo, RunResult
from rolegate.engine.stages import claim_stage, release_stage
from rolegate.errors import Code, RequestError, RolegateError
from rolegate.logs import get_logger
from rolegate.plugins.base import ChatResult, Message
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.contracts import check_output
from rolegate.policy.limits import MAX_PROMPT_CHARS, check_name

log = get_logger()


def _messages(
    prompt: str | None, messages: Sequence[Mapping[str, object]] | None, system: str | None
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
            out.append(Message(role, content))
    if sum(len(m.content) for m in out) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"input is over {MAX_PROMPT_CHARS:,} characters; no model here accepts it",
            code=Code.OVER_BUDGET,
        )
    return out


async def run_role(
    calls: CallRunner,
    prompts: Mapping[str, str],
    request: RunRequest,
    caller: Caller = NO_CALLER,
    quality: QualityBook | None = None,
) -> RunResult:
    """Run ``request`` under every rule; ``prompts`` maps a role to its kind's default
    system prompt (used when the request gives none); ``quality``: the evidence for roles
    with a quality rule, and where their contract checks go as live evidence."""
    policy, store = calls.policy, calls.store
    limits = await resolve_constraints(
        policy,
        store,
        role=request.role,
        job=request.job,
        channel=request.channel,
        decision_id=request.decision_id,
        local_only=request.local_only,
        max_output_tokens=request.max_output_tokens,
    )
    task_id, stage = request.task_id, request.stage
    _check_task(task_id, stage)
    chat = _messages(request.prompt, request.messages, request.system or prompts.get(limits.role))
    escalated = await store.current_model(task_id, limits.role) if task_id else None
    chosen = await _chosen(policy, request, limits, escalated, quality)
    info = policy.models[chosen.model if isinstance(chosen, RoleChoice) else chosen]
    await check_critic_allowed(policy, store, limits.role, task_id)
    started = time.perf_counter()
    claim = await claim_stage(policy, store, task_id, stage, limits.role, info.id)
    try:
        call, result, fallback, attempts = await _calls(
            calls, limits, info, chat, caller, request, task_id, stage
        )
    except BaseException:
        await release_stage(store, task_id, stage, claim)
        raise
    outcome = await finish_run(
        policy,
        store,
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
    if isinstance(chosen, RoleChoice):
        outcome.quality = chosen.report
    if quality is not None and request.model is None:
        await record_live(policy, store, quality, limits, outcome)
    critic = automatic_critic(policy, limits.role, stage, escalated=escalated is not None)
    if critic is not None and task_id is not None and stage is not None:
        await _review(calls, prompts, critic, limits, task_id, stage, outcome)
    return outcome


async def _chosen(
    policy: Policy,
    request: RunRequest,
    limits: Constraints,
    escalated: str | None,
    quality: QualityBook | None,
) -> str | RoleChoice:
    """The model: an evaluation's, an escalated task's, the decision's, the one the role's
    quality rule picks, or the role's own."""
    if request.model is not None:
        if request.model not in policy.models:
            raise RequestError(
                f"unknown model {request.model!r}; the policy defines {sorted(policy.models)}",
                code=Code.UNKNOWN_MODEL,
            )
        return request.model
    if escalated or limits.decision_model:
        return escalated or limits.decision_model or ""
    if quality is not None and policy.doc.roles[limits.role].quality is not None:
        choice = role_choice(policy, await quality.book(), limits)
        if choice is not None:
            return choice
    return policy.doc.roles[limits.role].model


def _check_task(task_id: str | None, stage: str | None) -> None:
    check_name(task_id, "task_id")
    check_name(stage, "stage")
    if stage is not None and task_id is None:
        raise RequestError(
            "a stage belongs to a task: pass task_id too", code=Code.INVALID_ARGUMENT
        )


async def _review(
    calls: CallRunner,
    prompts: Mapping[str, str],
    critic: str,
    limits: Constraints,
    task_id: str,
    stage: str,
    outcome: RunResult,
) -> None:
    """The stage's critic on the owner output, passed in memory only (never stored)."""
    review = RunRequest(
        role=critic,
        prompt=critic_prompt(stage, outcome.output),
        job=limits.job,
        task_id=task_id,
        stage=stage,
        max_output_tokens=limits.max_output,
        channel=limits.channel,
        local_only=limits.local_only,
    )
    try:
        done = await run_role(calls, prompts, review)  # a critique is no quality evidence
    except RolegateError as exc:
        outcome.critique_error = f"{exc.code}: {exc.message}"
    else:
        outcome.critique = critique_of(done)


async def _calls(
    runner: CallRunner,
    limits: Constraints,
    info: ModelInfo,
    chat: list[Message],
    caller: Caller,
    request: RunRequest,
    task_id: str | None,
    stage: str | None,
) -> tuple[Call, ChatResult, FallbackInfo | None, int]:
    """The call (with its declared fallbacks), then validation-stage retries (seed 002)."""
    policy = runner.policy
    context: dict[str, object] = {
        "role": limits.role,
        "job": limits.job,
        "decision_id": limits.decision_id,
        "task_id": task_id,
        "stage": stage,
    }
    if request.model is not None:  # an evaluation measures this model: no fallback
        call = await runner.admit(info, chat, limits)
        call.context.update(context, attempt=1, evaluation=True)
        result, fallback = await runner.invoke(call, chat, limits, caller), None
    else:
        call, result, fallback = await call_with_fallback(
            runner, limits, info, chat, context=context, caller=caller, consent=request.consent
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
            retry = await runner.admit(call.info, chat, limits)
            retry.context.update(context, attempt=attempts + 1, fallback_from=fallback_from)
            retried = await runner.invoke(retry, chat, limits, caller)
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
