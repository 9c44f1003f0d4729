"""A state machine over reserve/commit/release/crash/clock-advance+sweep, checked against a model.

Invariants on every step: the ledger's snapshot equals the model's, and spent + reserved never
exceeds any cap. Commits charge at most what was reserved (the provider was asked for at most
the worst case), so the invariant is exact rather than approximate.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rolegate.ledger import BudgetExhaustedError, Ledger
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import ScopeUsage
from tests.ledger.workers import Budgets, line

START = datetime(2025, 1, 31, 23, 50, tzinfo=UTC)  # ten minutes before day and month roll over


@dataclass
class Req:
    lines: tuple[str, ...]
    cost: int
    tokens: int
    at: datetime
    expires: datetime
    state: str = "reserved"
    charged: tuple[int, int] = (0, 0)
    abandoned: bool = False


def model_window_start(bl: BudgetLine, now: datetime) -> datetime:
    if bl.window == "day":
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    if bl.window == "month":
        return datetime(now.year, now.month, 1, tzinfo=UTC)
    assert bl.window_seconds is not None
    return now - timedelta(seconds=bl.window_seconds)


class LedgerMachine(RuleBasedStateMachine):
    ledger: Ledger  # set on a subclass per test

    def __init__(self) -> None:
        super().__init__()
        self.prefix = uuid.uuid4().hex[:10]  # examples share one store; ids never collide
        self.now = START
        self.reqs: dict[str, Req] = {}
        self.lines: tuple[BudgetLine, ...] = ()

    @initialize(
        day=st.integers(0, 1_500), month=st.integers(0, 3_000), tokens=st.integers(0, 2_000),
        rolling=st.integers(0, 1_000),
    )  # fmt: skip
    def make_lines(self, day: int, month: int, tokens: int, rolling: int) -> None:
        # Examples share one store: retire earlier examples' open reservations, since sweep()
        # counts every expired reservation in the store, not just this example's.
        self.ledger.sweep(START + timedelta(days=3_650))
        p = self.prefix
        self.lines = (
            line(f"{p}:global:*:day", usd_micro=day),
            line(f"{p}:role:r:month", usd_micro=month, tokens=tokens, window="month"),
            line(f"{p}:model:m:rolling", usd_micro=rolling, window="rolling", window_seconds=600),
        )

    # -- the model ---------------------------------------------------------------
    def usage(self, bl: BudgetLine) -> ScopeUsage:
        start = model_window_start(bl, self.now)
        spent = [0, 0]
        held = [0, 0]
        for r in self.reqs.values():
            if bl.id not in r.lines or r.at < start:
                continue
            if r.state == "committed":
                spent = [spent[0] + r.charged[0], spent[1] + r.charged[1]]
            elif r.state == "reserved" and r.expires > self.now:
                held = [held[0] + r.cost, held[1] + r.tokens]
        return ScopeUsage(spent[0], held[0], spent[1], held[1])

    def first_refusing(self, chosen: list[BudgetLine], cost: int, tokens: int) -> str | None:
        for bl in sorted(chosen, key=lambda b: b.id):
            u = self.usage(bl)
            if bl.usd_micro is not None and u.spent_micro + u.reserved_micro + cost > bl.usd_micro:
                return bl.id
            if bl.tokens is not None and u.spent_tokens + u.reserved_tokens + tokens > bl.tokens:
                return bl.id
        return None

    def live(self) -> list[str]:
        return sorted(
            rid
            for rid, r in self.reqs.items()
            if r.state == "reserved" and not r.abandoned and r.expires > self.now
        )

    # -- rules -------------------------------------------------------------------
    @rule(
        which=st.sets(st.integers(0, 2), max_size=3), cost=st.integers(0, 400),
        tokens=st.integers(0, 300), lease=st.sampled_from([5, 60, 3_600]),
    )  # fmt: skip
    def reserve(self, which: set[int], cost: int, tokens: int, lease: int) -> None:
        chosen = [self.lines[i] for i in sorted(which)]
        rid = f"{self.prefix}-{len(self.reqs)}"
        expected = self.first_refusing(chosen, cost, tokens)
        refused: str | None = None
        try:
            self.ledger.reserve(
                request_id=rid, owner="machine", lines=chosen, cost_micro=cost, tokens=tokens,
                now=self.now, lease_s=lease,
            )  # fmt: skip
        except BudgetExhaustedError as exc:
            refused = exc.line_id
        assert refused == expected, f"refused by {refused}, the model says {expected}"
        if refused is not None:
            return
        self.reqs[rid] = Req(
            tuple(bl.id for bl in chosen), cost, tokens, self.now,
            self.now + timedelta(seconds=lease),
        )  # fmt: skip

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.live()))
        r = self.reqs[rid]
        charged = (data.draw(st.integers(0, r.cost)), data.draw(st.integers(0, r.tokens)))
        self.ledger.commit(rid, cost_micro=charged[0], tokens=charged[1], now=self.now)
        r.state, r.charged = "committed", charged

    @precondition(lambda self: any(r.state == "committed" for r in self.reqs.values()))
    @rule(data=st.data(), cost=st.integers(0, 10_000))
    def commit_again(self, data: st.DataObject, cost: int) -> None:
        done = sorted(rid for rid, r in self.reqs.items() if r.state == "committed")
        rid = data.draw(st.sampled_from(done))
        self.ledger.commit(rid, cost_micro=cost, tokens=cost, now=self.now)  # a no-op

    @precondition(lambda self: bool(self.reqs))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        self.ledger.release(rid, self.now)
        if self.reqs[rid].state == "reserved":
            self.reqs[rid].state = "released"

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """A process dies: its reservations stay until their lease runs out."""
        for rid in data.draw(st.sets(st.sampled_from(self.live()), min_size=1)):
            self.reqs[rid].abandoned = True

    @rule(
        seconds=st.sampled_from([1, 4, 30, 59, 61, 300, 601, 3_600, 86_400, 40 * 86_400]),
        sweep=st.booleans(),
    )
    def advance(self, seconds: int, sweep: bool) -> None:
        self.now += timedelta(seconds=seconds)
        if not sweep:
            return  # expired but unswept reservations must already stop counting
        expired = [r for r in self.reqs.values() if r.state == "reserved" and r.expires <= self.now]
        assert self.ledger.sweep(self.now) == len(expired)
        for r in expired:
            r.state = "expired"

    # -- invariants ----------------------------------------------------------------
    @invariant()
    def matches_model_and_never_overspends(self) -> None:
        if not self.lines:
            return
        snap = self.ledger.snapshot(Budgets(self.lines), self.now)
        for bl in self.lines:
            got = snap.get(bl.id)
            assert got == self.usage(bl), bl.id
            assert bl.usd_micro is None or got.spent_micro + got.reserved_micro <= bl.usd_micro
            assert bl.tokens is None or got.spent_tokens + got.reserved_tokens <= bl.tokens


def test_ledger_state_machine(ledger: Ledger) -> None:
    machine = type("BoundLedgerMachine", (LedgerMachine,), {"ledger": ledger})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
