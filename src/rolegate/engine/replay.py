"""``rolegate replay``: what a policy change would have done to the recorded decisions.

Every route_task decision in the ledger is decided again by the pure router under the new
policy, in time order, with the new policy's budget lines simulated over the replayed period
(``replay_budget``) and costs from the recorded calls' actual tokens (``replay_cost``).
Nothing calls a model and nothing is written. The task's text was never stored, so it is
not classified again: the recorded intent stands (classification "recorded"), except where
the new policy decides before any words would (an intent's size), or where the recorded
intent was only the default (then the new policy's default applies).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rolegate.engine.quality import read_evidence
from rolegate.engine.replay_budget import BudgetSim, CapTally, at_us_of, iso, tally_caps
from rolegate.engine.replay_cost import CostTable, Priced, new_cost, old_cost
from rolegate.errors import RequestError
from rolegate.ledger import Ledger
from rolegate.policy import Decision, Policy, RouteRequest, route
from rolegate.policy.budget import utcnow, window_label
from rolegate.policy.decision import PolicyRef, Risk
from rolegate.policy.evidence import NO_EVIDENCE, EvidenceBook
from rolegate.policy.intents import by_size

#: The task text replayed decisions are made on (the real text was never stored).
PLACEHOLDER = "(replayed)"
_RISKS: tuple[Risk, ...] = ("low", "normal", "high")


class Ending(BaseModel):
    """One side of a decision: what it did."""

    outcome: Literal["route", "refuse", "script_only", "error"]
    code: str
    model: str | None = Field(default=None, description="Routed to, or refused (furthest).")

    def key(self) -> tuple[str, str, str | None]:
        return self.outcome, self.code, self.model if self.outcome == "route" else None


class Change(BaseModel):
    decision_id: str
    at: str
    approximate: bool
    old: Ending
    new: Ending
    old_cost_micro: int
    new_cost_micro: int


class Move(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    from_model: str = Field(alias="from")
    to_model: str = Field(alias="to")
    count: int


class CostDelta(BaseModel):
    old_micro: int
    new_micro: int
    delta_micro: int


class CapHit(BaseModel):
    line: str
    window: str
    cap_usd_micro: int | None
    cap_tokens: int | None
    first_at: str = Field(description="The first decision this line refused a model in.")
    refused_after: int = Field(description="Decisions it refused (BUDGET_EXHAUSTED).")
    diverted: int = Field(description="Decisions it sent to a model further down the list.")


class Window(BaseModel):
    since: str | None
    until: str | None


class ReplayReport(BaseModel):
    """What the new policy would have done to the recorded decisions."""

    policy: PolicyRef
    window: Window
    total: int
    unchanged: int
    run: int = Field(description="Decisions with recorded calls (costed from real tokens).")
    approximate: int = Field(description="Recorded without the request, or never counted.")
    estimated: int = Field(description="Decisions costed at their worst case (never run).")
    skipped: int = Field(description="Records that are no readable decision.")
    moved: list[Move]
    refusals_added: dict[str, int]
    refusals_removed: dict[str, int]
    changes: list[Change]
    cost: dict[str, dict[str, CostDelta]]
    caps_hit: list[CapHit]


# -- the request a recorded decision was made on ----------------------------------------


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _risk(value: object) -> Risk | None:
    return next((risk for risk in _RISKS if risk == value), None)


def _from_request(old: Decision, asked: Mapping[str, object]) -> RouteRequest:
    """The caller's request as recorded, at the input size the decision counted."""
    needs = asked.get("needs")
    counted = old.tokens.input_tokens if old.tokens is not None else None
    return RouteRequest(
        task=PLACEHOLDER,
        job=_text(asked.get("job")),
        role=_text(asked.get("role")),
        channel=_text(asked.get("channel")),
        context_tokens=_count(asked.get("context_tokens")),
        input_tokens=counted if counted is not None else _count(asked.get("input_tokens")),
        needs=tuple(n for n in needs if isinstance(n, str)) if isinstance(needs, list) else (),
        local_only=asked.get("local_only") is True,
        risk=_risk(asked.get("risk")),
        max_output_tokens=_count(asked.get("max_output_tokens")),
    )


def _from_decision(policy: Policy, old: Decision) -> RouteRequest:
    """What can be read back from a decision recorded without its request (approximate)."""
    how = old.classification.method if old.classification is not None else None
    named = how == "caller" and any(r.startswith("role given by the caller") for r in old.reasons)
    channel = old.channel if old.channel in policy.doc.channels else None
    return RouteRequest(
        task=PLACEHOLDER,
        job=old.job,
        role=old.role if named else None,
        channel=channel,
        input_tokens=old.tokens.input_tokens if old.tokens is not None else None,
        local_only="local_only: request" in old.reasons,
        risk=_risk(old.risk),
        max_output_tokens=old.max_output_tokens,
    )


def _recorded_intent(policy: Policy, old: Decision, input_tokens: int | None) -> str | None:
    """The intent to keep: the recorded one, unless it was only the default (the new
    policy's default applies) or the new policy decides by size first."""
    if old.intent is None or any(r.startswith("no intent decided") for r in old.reasons):
        return None
    how = old.classification.method if old.classification is not None else None
    if how != "caller" and input_tokens is not None and by_size(policy, input_tokens):
        return None
    return old.intent


def replayed_request(
    policy: Policy, old: Decision, record: Mapping[str, object]
) -> tuple[RouteRequest, bool]:
    """The request to decide again, and whether its record had the request."""
    asked = record.get("request")
    recorded = isinstance(asked, Mapping)
    request = (
        _from_request(old, asked) if isinstance(asked, Mapping) else _from_decision(policy, old)
    )
    intent = _recorded_intent(policy, old, request.input_tokens)
    return dataclasses.replace(request, intent=intent), recorded


# -- replay --------------------------------------------------------------------------------


def _ending(found: Decision | RequestError) -> Ending:
    if isinstance(found, RequestError):
        return Ending(outcome="error", code=str(found.code))
    return Ending(outcome=found.outcome, code=found.code, model=found.model)


def _decide(
    policy: Policy, request: RouteRequest, sim: BudgetSim, at_us: int, evidence: EvidenceBook
) -> Decision | RequestError:
    """The new decision; a request the new policy cannot take (a job, role or channel it no
    longer has) is the error route_task would raise."""
    try:
        return route(request, policy, sim.snapshot(at_us), evidence=evidence)
    except RequestError as exc:
        return exc


class _Replay:
    """The running totals of one replay, decision by decision."""

    def __init__(self, policy: Policy, evidence: EvidenceBook) -> None:
        self.policy = policy
        self.evidence = evidence
        self.sim = BudgetSim(policy)
        self.table = CostTable(policy)
        self.caps: dict[str, CapTally] = {}
        self.moved: Counter[tuple[str, str]] = Counter()
        self.added: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.changes: list[Change] = []
        self.counts: Counter[str] = Counter()

    def step(
        self,
        decision_id: str,
        at_us: int,
        record: Mapping[str, object],
        calls: Sequence[Mapping[str, object]],
    ) -> None:
        try:
            old = Decision.model_validate(record)
        except ValidationError:
            self.counts["skipped"] += 1
            return
        request, recorded = replayed_request(self.policy, old, record)
        new = _decide(self.policy, request, self.sim, at_us, self.evidence)
        before = old_cost(old, calls)
        after = new_cost(self.policy, old, new, calls) if isinstance(new, Decision) else Priced()
        for charge in after.charges:
            self.sim.charge(at_us, charge)
        if isinstance(new, Decision):
            tally_caps(self.caps, self.policy, new, at_us)
        self.table.add(before, 0)
        self.table.add(after, 1)
        routes = isinstance(new, Decision) and new.outcome == "route"
        approximate = not recorded or (request.input_tokens is None and routes)
        self.counts.update(
            total=1,
            run=bool(calls),
            approximate=approximate,
            estimated=before.estimated or after.estimated,
        )
        self._compare(decision_id, at_us, approximate, _ending(old), _ending(new), before, after)

    def _compare(
        self, decision_id: str, at_us: int, approximate: bool, old: Ending, new: Ending,
        before: Priced, after: Priced,
    ) -> None:  # fmt: skip
        if old.key() == new.key():
            self.counts["unchanged"] += 1
            return
        if old.outcome == new.outcome == "route":
            self.moved[(old.model or "", new.model or "")] += 1
        if old.code != new.code:
            if new.outcome in ("refuse", "error"):
                self.added[new.code] += 1
            if old.outcome in ("refuse", "error"):
                self.removed[old.code] += 1
        self.changes.append(
            Change(
                decision_id=decision_id,
                at=iso(at_us),
                approximate=approximate,
                old=old,
                new=new,
                old_cost_micro=before.micro,
                new_cost_micro=after.micro,
            )
        )

    def report(self, since_us: int | None, until_us: int | None) -> ReplayReport:
        doc = self.policy.doc
        moves = sorted(self.moved.items(), key=lambda kv: (-kv[1], kv[0]))
        return ReplayReport(
            policy=PolicyRef(name=doc.name, revision=doc.revision, hash=self.policy.hash),
            window=Window(
                since=None if since_us is None else iso(since_us),
                until=None if until_us is None else iso(until_us),
            ),
            total=self.counts["total"],
            unchanged=self.counts["unchanged"],
            run=self.counts["run"],
            approximate=self.counts["approximate"],
            estimated=self.counts["estimated"],
            skipped=self.counts["skipped"],
            moved=[Move(from_model=a, to_model=b, count=n) for (a, b), n in moves],
            refusals_added=dict(sorted(self.added.items())),
            refusals_removed=dict(sorted(self.removed.items())),
            changes=self.changes,
            cost=self._cost(),
            caps_hit=self._caps(),
        )

    def _cost(self) -> dict[str, dict[str, CostDelta]]:
        return {
            scope: {
                target: CostDelta(old_micro=old, new_micro=new, delta_micro=new - old)
                for target, (old, new) in sorted(targets.items())
            }
            for scope, targets in self.table.sums.items()
        }

    def _caps(self) -> list[CapHit]:
        lines = {line.id: line for line in self.policy.budgets}
        hits = sorted(self.caps.items(), key=lambda kv: (kv[1].first_at_us, kv[0]))
        return [
            CapHit(
                line=line_id,
                window=window_label(lines[line_id]),
                cap_usd_micro=lines[line_id].usd_micro,
                cap_tokens=lines[line_id].tokens,
                first_at=iso(tally.first_at_us),
                refused_after=tally.refused,
                diverted=tally.diverted,
            )
            for line_id, tally in hits
        ]


def replay(
    policy: Policy,
    decisions: Sequence[tuple[str, int, Mapping[str, object]]],
    calls: Sequence[Mapping[str, object]],
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    evidence: EvidenceBook = NO_EVIDENCE,
) -> ReplayReport:
    """Decide the recorded ``decisions`` (decision_id, at_us, record; in time order) again
    under ``policy``; ``calls`` are the "call" audit records (others are ignored);
    ``evidence``: measured quality, for the policy's quality rules. Pure: no model is
    called and nothing is written."""
    by_decision: dict[str, list[Mapping[str, object]]] = {}
    for call in calls:
        decision_id = call.get("decision_id")
        if call.get("kind", "call") == "call" and isinstance(decision_id, str):
            by_decision.setdefault(decision_id, []).append(call)
    state = _Replay(policy, evidence)
    for decision_id, at_us, record in sorted(decisions, key=lambda row: (row[1], row[0])):
        state.step(decision_id, at_us, record, by_decision.get(decision_id, []))
    return state.report(since_us, until_us)


def load_replay(
    policy: Policy, ledger: Ledger, since: datetime, until: datetime | None = None
) -> ReplayReport:
    """Replay the decisions the ledger recorded in [since, until) under ``policy``, with the
    calls made for them (recorded at any time since ``since``). Reads only."""
    since_us = at_us_of(since)
    until_us = None if until is None else at_us_of(until)
    decisions = ledger.decisions_between(since_us, until_us)
    ids = {decision_id for decision_id, _, _ in decisions}
    calls = [
        call
        for call in ledger.audit_between(since_us, None, kind="call")
        if call.get("decision_id") in ids
    ]
    book = read_evidence(policy, ledger, at_us_of(until or utcnow()))
    return replay(policy, decisions, calls, since_us=since_us, until_us=until_us, evidence=book)
