"""Turning a finished provider call into a RunResult: usage, cost, contract, escalation."""

from __future__ import annotations

from typing import Any

from rolegate.engine.accounting import Call
from rolegate.engine.constraints import Constraints
from rolegate.engine.results import (
    ContractReport,
    FallbackInfo,
    Load,
    RunResult,
    Usage,
    policy_ref,
)
from rolegate.engine.stages import record_output
from rolegate.engine.store import Store
from rolegate.errors import RolegateError
from rolegate.logs import get_logger
from rolegate.plugins.base import ChatResult
from rolegate.policy import BudgetSnapshot, Policy
from rolegate.policy.contracts import check_output
from rolegate.policy.escalation import EscalationDecision, EscalationRequest, escalate

log = get_logger()


def contract_report(
    policy: Policy, role: str, text: str
) -> tuple[ContractReport | None, dict[str, Any] | None, float | None]:
    name = policy.doc.roles[role].output_contract
    if name is None:
        return None, None, None
    checked = check_output(policy.doc.contracts[name], text)
    report = ContractReport(name=name, valid=checked.valid, errors=list(checked.errors))
    return report, checked.structured, checked.confidence


def output_escalation(
    policy: Policy,
    limits: Constraints,
    confidence: float | None,
    current_step: int,
    snapshot: BudgetSnapshot,
) -> EscalationDecision | None:
    """The escalation the output's own confidence triggers, if a predicate fires, under the
    run's constraints (local_only, job, output cap) and the budgets as they stand."""
    if confidence is None or not policy.doc.roles[limits.role].escalation.when:
        return None
    decision = escalate(
        EscalationRequest(
            role=limits.role,
            signals={"confidence": confidence},
            job=limits.job,
            local_only=limits.local_only,
            current_step=current_step,
            max_output_tokens=limits.max_output,
        ),
        policy,
        snapshot,
    )
    return decision if decision.fired else None


def usage_of(call_input: int, exact: bool, max_output: int, result: ChatResult) -> Usage:
    if result.output_tokens is None:
        return Usage(
            input_tokens=call_input,
            output_tokens=max_output,
            input_exact=exact,
            charged_at_worst_case=True,
        )
    inp = result.input_tokens if result.input_tokens is not None else call_input
    return Usage(
        input_tokens=inp,
        output_tokens=result.output_tokens,
        input_exact=exact or result.input_tokens is not None,
    )


async def _on_task(
    policy: Policy,
    store: Store,
    call: Call,
    *,
    limits: Constraints,
    task_id: str | None,
    stage: str | None,
    claim: str | None,
    report: ContractReport | None,
    warnings: list[str],
) -> int:
    """Record the output on its task; the role's escalation step there (0 without a task)."""
    if not task_id:
        return 0
    try:
        step = await store.escalation_step(task_id, limits.role)
        await record_output(
            policy,
            store,
            task_id=task_id,
            stage=stage,
            role=limits.role,
            model=call.info.id,
            request_id=call.request_id,
            claim=claim,
            contract_valid=None if report is None else report.valid,
        )
    except RolegateError as exc:  # the ledger failed, or the claim's lease ran out
        warnings.append(f"{exc.code}: the task record could not be written: {exc.message}")
        return 0
    return step


async def _escalation_after(
    policy: Policy,
    store: Store,
    limits: Constraints,
    confidence: float | None,
    step: int,
    warnings: list[str],
) -> EscalationDecision | None:
    if confidence is None:
        return None
    try:
        snapshot = await store.snapshot()
    except RolegateError as exc:
        warnings.append(f"{exc.code}: the escalation this output may call for was not checked "
                        f"against the budgets: {exc.message}")  # fmt: skip
        return None
    return output_escalation(policy, limits, confidence, step, snapshot)


def _log_run(
    policy: Policy,
    call: Call,
    usage: Usage,
    cost: int,
    latency_s: float,
    report: ContractReport | None,
    escalation: EscalationDecision | None,
    warnings: int,
) -> None:
    info = call.info
    log.info(
        "run_role",
        role=call.context.get("role"),
        model=info.id,
        policy_hash=policy.hash,
        max_input_tokens=info.max_input_tokens,
        reserve_tokens=info.model.reserve_tokens,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_micro=cost,
        ms=round(latency_s * 1000, 3),
        contract_valid=None if report is None else report.valid,
        escalation=None if escalation is None else escalation.code,
        warnings=warnings,
    )


async def finish_run(
    policy: Policy,
    store: Store,
    *,
    limits: Constraints,
    call: Call,
    result: ChatResult,
    latency_s: float,
    fallback: FallbackInfo | None,
    task_id: str | None,
    stage: str | None,
    claim: str | None,
    attempts: int = 1,
) -> RunResult:
    """The result of a paid call. Nothing after the call may drop its output: a contract the
    output breaks is reported, a ledger that fails is a warning, never an error."""
    role, info = limits.role, call.info
    usage = usage_of(call.input_tokens, call.input_exact, call.max_output, result)
    cost = info.worst_case_cost_micro(usage.input_tokens, usage.output_tokens)
    report, structured, confidence = contract_report(policy, role, result.text)
    warnings = list(call.warnings)
    step = await _on_task(policy, store, call, limits=limits, task_id=task_id, stage=stage,
                          claim=claim, report=report, warnings=warnings)  # fmt: skip
    escalation = await _escalation_after(policy, store, limits, confidence, step, warnings)
    _log_run(policy, call, usage, cost, latency_s, report, escalation, len(warnings))
    return RunResult(
        output=result.text,
        structured=structured,
        contract=report,
        role=role,
        model=info.id,
        provider=info.model.provider,
        provider_model=info.model.name,
        locality=info.locality,
        usage=usage,
        max_input_tokens=info.max_input_tokens,
        reserve_tokens=info.model.reserve_tokens,
        cost_micro=cost,
        latency_ms=round(latency_s * 1000, 3),
        ttft_ms=None if result.ttft_s is None else round(result.ttft_s * 1000, 3),
        load=_load(call),
        streamed=call.streamed,
        fallback=fallback,
        escalation=escalation,
        request_id=call.request_id,
        decision_id=limits.decision_id,
        task_id=task_id,
        stage=stage,
        attempts=attempts,
        authoritative=policy.doc.roles[role].authority != "sidecar",
        policy=policy_ref(policy),
        judge_required=policy.doc.risk.judge_role if limits.risk == "high" else None,
        warnings=warnings,
    )


def _load(call: Call) -> Load | None:
    if call.load is None:
        return None
    return Load(loaded=call.load.loaded, evicted=list(call.load.evicted), load_ms=call.load.load_ms)
