"""route_task: the router's decision, stored so that run_role can be bound to it."""

from __future__ import annotations

import uuid

from rolegate.engine.results import RouteResult
from rolegate.engine.store import Store
from rolegate.errors import Code, RequestError
from rolegate.policy import Decision, Policy, RouteRequest, route
from rolegate.policy.decision import Classification
from rolegate.policy.evidence import EvidenceBook


async def route_task(
    policy: Policy,
    store: Store,
    request: RouteRequest,
    proposal: Classification | None = None,
    resident: frozenset[str] | None = None,
    evidence: EvidenceBook | None = None,
) -> RouteResult:
    """The router's decision, stored under a decision_id (usable from any process on the
    same ledger) and audited in the same transaction (ids, no text). ``proposal``: the
    task reader's classification, when no signal or keyword decides the intent. ``resident``:
    the tracked models loaded now, for policies with ``residency``. ``evidence``: measured
    pass rates, for policies with quality rules."""
    decision = route(request, policy, await store.snapshot(), proposal, resident, evidence)
    how = decision.classification
    decision_id = "dec_" + uuid.uuid4().hex
    audit: dict[str, object] = {
        "kind": "decision",
        "decision_id": decision_id,
        "outcome": decision.outcome,
        "code": decision.code,
        "intent": decision.intent,
        "job": decision.job,
        "role": decision.role,
        "model": decision.model,
        "input_tokens": decision.tokens.input_tokens if decision.tokens else None,
        "classified_by": how.method if how else None,
        "confidence": how.confidence if how else None,
        "router_asked": how.router_asked if how else False,
        "policy_hash": policy.hash,
    }
    record = decision.model_dump(mode="json")
    record["request"] = _request_record(request)
    await store.put_decision(decision_id, record, audit)
    # The decision was validated when the router built it: no second validation.
    fields = {name: getattr(decision, name) for name in type(decision).model_fields}
    return RouteResult.model_construct(decision_id=decision_id, **fields)


def _request_record(request: RouteRequest) -> dict[str, object]:
    """What the caller asked, without the task's text: what ``rolegate replay`` re-decides."""
    return {
        "job": request.job,
        "role": request.role,
        "channel": request.channel,
        "context_tokens": request.context_tokens,
        "input_tokens": request.input_tokens,
        "needs": list(request.needs),
        "local_only": request.local_only,
        "risk": request.risk,
        "max_output_tokens": request.max_output_tokens,
    }


async def load_decision(policy: Policy, store: Store, decision_id: str) -> Decision:
    """A stored decision made under the active policy, or UNKNOWN_DECISION."""
    found = await store.get_decision(decision_id)
    if found is None:
        raise RequestError(
            f"unknown decision_id {decision_id!r}; route the task again with route_task",
            code=Code.UNKNOWN_DECISION,
        )
    decision = Decision.model_validate(found)
    if decision.policy.hash != policy.hash:
        raise RequestError(
            f"decision {decision_id} was made under another policy "
            f"({decision.policy.hash}); route the task again",
            code=Code.UNKNOWN_DECISION,
        )
    return decision
