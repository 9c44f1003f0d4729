"""escalate: evaluate a role's predicates and move its task up the ladder, with provenance.

A move is recorded on the task (step, from, to, the signals that fired, the consent answer),
so the role's next run_role on that task uses the escalated model. Where the role demands
consent, nothing moves without a granted answer; two calls escalating one role at the same
moment cannot both move it (the second is refused).
"""

from __future__ import annotations

import uuid

from rolegate.engine.requests import Consent, EscalateRequest
from rolegate.engine.results import EscalateResult
from rolegate.engine.store import Store
from rolegate.errors import Code, RefusedError, RequestError
from rolegate.policy import Policy
from rolegate.policy.escalation import EscalationDecision, EscalationRequest, escalate
from rolegate.policy.limits import check_name


async def evaluate(policy: Policy, store: Store, request: EscalateRequest) -> EscalationDecision:
    """The policy's answer for this role, signals and task step (nothing recorded)."""
    check_name(request.role, "role")
    check_name(request.job, "job")
    check_name(request.task_id, "task_id")
    task_id = request.task_id
    step = await store.escalation_step(task_id, request.role) if task_id else 0
    return escalate(
        EscalationRequest(
            role=request.role,
            signals=request.signals,
            job=request.job,
            local_only=request.local_only,
            current_step=step,
        ),
        policy,
        await store.snapshot(),
    )


async def preview(policy: Policy, store: Store, request: EscalateRequest) -> tuple[str, str] | None:
    """(from, to) when an escalation would happen and the role demands consent."""
    role_def = policy.doc.roles.get(request.role)
    if role_def is None or not role_def.escalation.consent:
        return None
    try:
        decision = await evaluate(policy, store, request)
    except RequestError:
        return None  # the tool body reports it
    if not decision.escalate or decision.from_model is None or decision.to_model is None:
        return None
    return decision.from_model, decision.to_model


def _apply_consent(
    decision: EscalationDecision, role: str, consent: Consent | None
) -> tuple[EscalationDecision, str | None]:
    if not (decision.escalate and decision.consent_required):
        return decision, None
    answer = "not_asked" if consent is None else ("granted" if consent.granted else "declined")
    if answer == "granted":
        return decision, answer
    why = "the user declined" if answer == "declined" else "this client cannot be asked"
    held = decision.model_copy(
        update={
            "escalate": False,
            "code": Code.NEEDS_CONSENT,
            "message": f"escalating {role} to {decision.to_model} needs the user's consent; {why}",
        }
    )
    return held, answer


async def run_escalation(policy: Policy, store: Store, request: EscalateRequest) -> EscalateResult:
    role, task_id = request.role, request.task_id
    decision, answer = _apply_consent(await evaluate(policy, store, request), role, request.consent)
    provenance_id = "esc_" + uuid.uuid4().hex
    record: dict[str, object] = {
        "kind": "escalation",
        "request_id": provenance_id,
        "task_id": task_id,
        "role": role,
        "model": decision.from_model,
        "to_model": decision.to_model,
        "code": decision.code,
        "policy_hash": policy.hash,
        "consent": answer,
        "fired": ",".join(f.signal for f in decision.fired),
    }
    if decision.escalate and decision.step is not None and task_id:
        # The move and its audit record in one transaction: they cannot diverge.
        recorded = await store.record_escalation(
            task_id=task_id,
            role=role,
            step=decision.step,
            provenance_id=provenance_id,
            from_model=decision.from_model,
            to_model=decision.to_model,
            fired=[f.signal for f in decision.fired],
            consent=answer,
            audit=record,
        )
        if not recorded:
            raise RefusedError(
                f"task {task_id!r}: role {role!r} was escalated by another call at the same "
                "moment; read rolegate://tasks/{task_id} and escalate again if still needed",
                code=Code.CONSENSUS_FORBIDDEN,
            )
    else:
        await store.audit(record)
    return EscalateResult(provenance_id=provenance_id, consent=answer, **decision.model_dump())
