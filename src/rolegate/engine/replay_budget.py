"""A policy's budget lines replayed over recorded time (``rolegate replay``).

Each line keeps the spend of the replayed decisions in the window the current moment falls
in: day and month windows start afresh at their boundaries, rolling windows slide. Only
what was replayed counts (nothing spent before the replayed period, no reservations), and
decisions are fed in time order, so every window start only moves forward.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rolegate.errors import Code
from rolegate.ledger.records import from_us
from rolegate.policy import BudgetSnapshot, Decision, Policy, ScopeUsage
from rolegate.policy.budget import window_start

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at_us_of(moment: datetime) -> int:
    """An aware datetime as exact microseconds since the epoch."""
    return (moment.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def iso(at_us: int) -> str:
    return from_us(at_us).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Charge:
    """Spend on one model, with the coordinates budget lines and cost scopes count by."""

    job: str | None
    role: str | None
    model: str
    provider: str
    micro: int
    tokens: int


def touched_lines(policy: Policy, charge: Charge) -> list[str]:
    """Ids of the lines of ``policy`` that ``charge`` counts against, once each."""
    lines = policy.budgets_touching(
        job=charge.job, role=charge.role, model=charge.model, provider=charge.provider
    )
    return list(dict.fromkeys(line.id for line in lines))


class BudgetSim:
    """Spend per budget line of ``policy``, in the window each moment falls in."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # Lines sharing an id (a money cap and a token cap on one scope) share their usage,
        # as in the ledger.
        self._lines = {line.id: line for line in policy.budgets}
        self._events: dict[str, deque[tuple[int, int, int]]] = {i: deque() for i in self._lines}
        self._totals: dict[str, tuple[int, int]] = dict.fromkeys(self._lines, (0, 0))

    def snapshot(self, at_us: int) -> BudgetSnapshot:
        """What each line has spent in its window at ``at_us`` (no earlier moment after)."""
        now = from_us(at_us)
        usage: dict[str, ScopeUsage] = {}
        for line_id, line in self._lines.items():
            start = at_us_of(window_start(line, now))
            events = self._events[line_id]
            micro, tokens = self._totals[line_id]
            while events and events[0][0] < start:
                _, gone_micro, gone_tokens = events.popleft()
                micro, tokens = micro - gone_micro, tokens - gone_tokens
            self._totals[line_id] = (micro, tokens)
            if micro or tokens:
                usage[line_id] = ScopeUsage(spent_micro=micro, spent_tokens=tokens)
        return BudgetSnapshot(usage)

    def charge(self, at_us: int, charge: Charge) -> None:
        """Count ``charge`` against every line it touches, at ``at_us``."""
        for line_id in touched_lines(self.policy, charge):
            self._events[line_id].append((at_us, charge.micro, charge.tokens))
            micro, tokens = self._totals[line_id]
            self._totals[line_id] = (micro + charge.micro, tokens + charge.tokens)


def exhausted_lines(policy: Policy, decision: Decision) -> list[str]:
    """The budget lines that refused a model in ``decision`` (its BUDGET_EXHAUSTED
    rejections name them: ``budget LINE has ...``), once each, in order."""
    ids = sorted({line.id for line in policy.budgets}, key=len, reverse=True)
    found: list[str] = []
    for rejection in decision.rejected:
        if rejection.code != Code.BUDGET_EXHAUSTED:
            continue
        for line_id in ids:
            if rejection.reason.startswith(f"budget {line_id} has ") and line_id not in found:
                found.append(line_id)
                break
    return found


@dataclass(slots=True)
class CapTally:
    """One line's hits: when first, decisions it refused, decisions it sent elsewhere."""

    first_at_us: int
    refused: int = 0
    diverted: int = 0


def tally_caps(caps: dict[str, CapTally], policy: Policy, decision: Decision, at_us: int) -> None:
    """Count the lines that refused a model in ``decision``: a refusal they caused (code
    BUDGET_EXHAUSTED), or a route they sent to a model further down the list."""
    routed = decision.outcome == "route"
    if not routed and decision.code != Code.BUDGET_EXHAUSTED:
        return  # refused for another reason first: no cap decided it
    for line_id in exhausted_lines(policy, decision):
        tally = caps.setdefault(line_id, CapTally(at_us))
        if routed:
            tally.diverted += 1
        else:
            tally.refused += 1
