"""Escalation: evaluate a role's structured predicates and pick the next rung.

Deterministic (GR-004): predicates are data, compared with fixed operators; the
ladder is walked in declared order. A rung that the policy forbids (local_only,
premium allowlist, budget, context) is skipped with its reason recorded; if no
rung is left, the escalation is refused with the first rung's reason.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from rolegate.errors import Code, RequestError
from rolegate.policy.compiled import ModelInfo, Policy
from rolegate.policy.decision import (
    NO_USAGE,
    BudgetSnapshot,
    OutputModel,
    PolicyRef,
    Rejection,
)
from rolegate.policy.limits import SignalValue, validate_signals
from rolegate.policy.router import check_model
from rolegate.policy.schema import Predicate, Role

_OPS: dict[str, Callable[[float, float], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}


@dataclass(frozen=True, slots=True)
class EscalationRequest:
    role: str
    signals: Mapping[str, SignalValue]
    job: str | None = None
    local_only: bool = False
    current_step: int = 0
    max_output_tokens: int | None = None


class FiredPredicate(OutputModel):
    signal: str
    op: str
    threshold: float | bool
    observed: float | bool


class EscalationDecision(OutputModel):
    """Whether the role escalates, why, and to which model."""

    escalate: bool
    code: str
    message: str
    policy: PolicyRef
    role: str
    job: str | None = None
    fired: list[FiredPredicate] = Field(default_factory=list)
    from_model: str | None = None
    to_model: str | None = None
    to_provider: str | None = None
    to_locality: str | None = None
    ladder: list[str] = Field(default_factory=list)
    step: int | None = Field(default=None, description="Index of the chosen rung.")
    judge_required: str | None = None
    judge_model: str | None = None
    consent_required: bool = False
    rejected: list[Rejection] = Field(default_factory=list)


def evaluate_predicates(
    predicates: tuple[Predicate, ...], signals: Mapping[str, SignalValue]
) -> list[FiredPredicate]:
    """The predicates that hold for ``signals``; a signal not given never fires, and a signal
    fires once even when several predicates name it (the first that holds is reported)."""
    fired: list[FiredPredicate] = []
    for p in predicates:
        if p.signal not in signals or any(f.signal == p.signal for f in fired):
            continue
        observed = signals[p.signal]
        if _OPS[p.op](float(observed), float(p.value)):
            fired.append(
                FiredPredicate(signal=p.signal, op=p.op, threshold=p.value, observed=observed)
            )
    return fired


def _rung_refusal(
    policy: Policy,
    info: ModelInfo,
    req: EscalationRequest,
    local_only: bool,
    snapshot: BudgetSnapshot,
) -> Rejection | None:
    estimate = req.signals.get("context_estimate")
    needed = int(estimate) if isinstance(estimate, int | float) else 0
    refusal = check_model(
        info,
        policy=policy,
        job_name=req.job,
        role=req.role,
        local_only=local_only,
        input_tokens=max(needed, 0),
        max_output=req.max_output_tokens or policy.doc.defaults.max_output_tokens,
        snapshot=snapshot,
    )
    if refusal is None:
        return None
    return Rejection(model=info.id, code=refusal.code, reason=refusal.reason)


def escalate(
    req: EscalationRequest, policy: Policy, budget: BudgetSnapshot | None = None
) -> EscalationDecision:
    """Evaluate ``req.role``'s escalation predicates and choose the next allowed rung."""
    role = _checked_role(req, policy)
    signals = validate_signals(req.signals)
    local_only = req.local_only or policy.is_local_only(req.job)
    ladder = list(role.escalation.ladder)
    fired = evaluate_predicates(role.escalation.when, signals)
    user_fired = any(f.signal == "user_request" for f in fired)
    if (
        policy.doc.escalation_on_user_request
        and signals.get("user_request") is True
        and not user_fired
    ):
        fired.append(FiredPredicate(signal="user_request", op="eq", threshold=True, observed=True))
    current = (
        role.model if req.current_step == 0 else ladder[min(req.current_step, len(ladder)) - 1]
    )
    base: dict[str, Any] = {
        "policy": PolicyRef(name=policy.doc.name, revision=policy.doc.revision, hash=policy.hash),
        "role": req.role,
        "job": req.job,
        "fired": fired,
        "ladder": ladder,
        "from_model": current,
        "consent_required": role.escalation.consent,
    }
    judge, judge_model = _judge(policy, req, local_only)
    if judge is not None:
        base["judge_required"] = judge
        base["judge_model"] = judge_model
    if judge is not None and judge_model is None:
        return EscalationDecision(
            escalate=False,
            code=Code.CLOUD_JUDGE_REQUIRED,
            message=f"high-risk work needs the cloud judge {judge!r}, but local_only forbids "
            "cloud calls; a local model can never approve",
            **base,
        )
    if not fired:
        return EscalationDecision(
            escalate=False,
            code="NO_ESCALATION",
            message="no escalation predicate fired; stay on the current model",
            **base,
        )
    return _climb(policy, req, local_only, budget or NO_USAGE, base)


def _checked_role(req: EscalationRequest, policy: Policy) -> Role:
    role = policy.doc.roles.get(req.role)
    if role is None:
        raise RequestError(
            f"unknown role {req.role!r}; the policy defines {sorted(policy.doc.roles)}",
            code=Code.UNKNOWN_ROLE,
        )
    if req.job is not None and req.job not in policy.doc.jobs:
        raise RequestError(f"unknown job {req.job!r}", code=Code.UNKNOWN_JOB)
    if req.current_step < 0:
        raise RequestError("current_step must be >= 0", code=Code.INVALID_ARGUMENT)
    return role


def _climb(
    policy: Policy,
    req: EscalationRequest,
    local_only: bool,
    snapshot: BudgetSnapshot,
    base: dict[str, Any],
) -> EscalationDecision:
    """The first rung above the current step that every rule allows, or why none does."""
    ladder: list[str] = base["ladder"]
    rejected: list[Rejection] = []
    for step in range(req.current_step, len(ladder)):
        info = policy.models[ladder[step]]
        refusal = _rung_refusal(policy, info, req, local_only, snapshot)
        if refusal is None:
            return EscalationDecision(
                escalate=True,
                code="ESCALATE",
                message=f"escalate {req.role} from {base['from_model']} to {info.id} "
                f"({', '.join(f.signal for f in base['fired'])} fired)",
                to_model=info.id,
                to_provider=info.model.provider,
                to_locality=info.locality,
                step=step,
                rejected=rejected,
                **base,
            )
        rejected.append(refusal)
    if not rejected:
        return EscalationDecision(
            escalate=False,
            code=Code.NO_SUFFICIENT_MODEL,
            message=f"role {req.role!r} has no higher rung to escalate to",
            **base,
        )
    first = rejected[0]
    return EscalationDecision(
        escalate=False,
        code=first.code,
        message=f"escalation refused: {first.model} {first.reason}",
        rejected=rejected,
        **base,
    )


def _judge(
    policy: Policy, req: EscalationRequest, local_only: bool
) -> tuple[str | None, str | None]:
    """The judge role high-risk work needs, and its model unless local_only forbids it."""
    judge = policy.doc.risk.judge_role
    if judge is None or req.signals.get("high_risk") is not True:
        return None, None
    info = policy.models[policy.doc.roles[judge].model]
    if local_only and info.locality == "cloud":
        return judge, None
    return judge, info.id
