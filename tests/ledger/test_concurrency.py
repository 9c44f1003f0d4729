"""Many processes at once, and processes that die: the issue's admission-exactness tests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from rolegate.ledger import BudgetExhaustedError, Ledger
from rolegate.policy.decision import ScopeUsage
from tests.ledger import workers
from tests.ledger.backends import Backend
from tests.ledger.workers import Budgets, at, line

CTX = multiprocessing.get_context("spawn")  # no inherited connections or locks
PROCESSES = 8
PER_PROCESS = 200
COST = 1_000
TOKENS = 7


def test_eight_processes_at_a_barrier_admit_exactly_floor_cap_over_cost(
    backend: Backend, ledger: Ledger
) -> None:
    demand = PROCESSES * PER_PROCESS * COST
    # Half the demand, plus COST - 1 so that a rounding or off-by-one error would admit one more.
    cap = demand // 2 + COST - 1
    money = line("global:*:day", usd_micro=cap)
    tokens = line("model:m:month", tokens=10**9, window="month")  # never binding; also tracked
    lines = (money, tokens)
    barrier = CTX.Barrier(PROCESSES)
    results = CTX.Queue()
    procs = [
        CTX.Process(
            target=workers.reserve_many,
            args=(backend.url, w, PER_PROCESS, lines, COST, TOKENS, barrier, results),
        )
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0, "a worker died (see its traceback above)"

    admitted = [rid for r in reports for rid in r[1]]
    committed = {rid: charge for r in reports for rid, charge in r[4].items()}
    assert [e for r in reports for e in r[3]] == []  # no busy/lock/unavailable errors at all
    assert len(admitted) == cap // COST == PROCESSES * PER_PROCESS // 2
    assert sum(r[2] for r in reports) == PROCESSES * PER_PROCESS - len(admitted)
    assert len(set(admitted)) == len(admitted)

    # Lost records 0: exactly the admitted requests exist, each in the state its worker left it.
    states = backend.request_states()
    assert set(states) == set(admitted)
    assert {rid for rid, s in states.items() if s == "committed"} == set(committed)
    assert {s for rid, s in states.items() if rid not in committed} == {"reserved"}

    snap = ledger.snapshot(Budgets(lines), at(1))
    open_reservations = len(admitted) - len(committed)
    assert snap.get(money.id) == ScopeUsage(
        spent_micro=sum(committed.values()),
        reserved_micro=open_reservations * COST,
        spent_tokens=len(committed) * TOKENS,
        reserved_tokens=open_reservations * TOKENS,
    )
    assert snap.get(tokens.id).spent_tokens + snap.get(tokens.id).reserved_tokens == (
        len(admitted) * TOKENS
    )
    used = snap.get(money.id)
    assert used.spent_micro + used.reserved_micro <= cap  # overspend 0


def test_reservations_of_a_killed_process_are_swept_after_the_lease(
    backend: Backend, ledger: Ledger
) -> None:
    cap = line("global:*:day", usd_micro=350)
    ready = CTX.Event()
    child = CTX.Process(
        target=workers.reserve_then_hang, args=(backend.url, (cap,), 3, 30.0, ready)
    )
    child.start()
    try:
        assert ready.wait(timeout=60), "the child never made its reservations"
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL

    assert ledger.snapshot(Budgets((cap,)), at(10)).get(cap.id).reserved_micro == 300
    with pytest.raises(BudgetExhaustedError):  # the dead process's worst case still holds
        ledger.reserve(
            request_id="new", owner="t", lines=[cap], cost_micro=100, tokens=0,
            now=at(10), lease_s=60,
        )  # fmt: skip
    assert ledger.sweep(at(29)) == 0
    assert ledger.sweep(at(30)) == 3
    assert ledger.snapshot(Budgets((cap,)), at(30)).get(cap.id) == ScopeUsage()
    assert set(backend.request_states().values()) == {"expired"}
    ledger.reserve(
        request_id="new", owner="t", lines=[cap], cost_micro=350, tokens=0,
        now=at(31), lease_s=60,
    )  # fmt: skip


def test_a_process_killed_inside_a_transaction_does_not_wedge_the_ledger(
    backend: Backend, ledger: Ledger
) -> None:
    cap = line("global:*:day", usd_micro=100)
    ready = CTX.Event()
    child = CTX.Process(target=workers.hang_inside_transaction, args=(backend.url, cap.id, ready))
    child.start()
    try:
        assert ready.wait(timeout=60), "the child never opened its transaction"
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=30)
    started = time.monotonic()
    ledger.reserve(
        request_id="after", owner="t", lines=[cap], cost_micro=100, tokens=0, now=at(0),
        lease_s=60,
    )  # fmt: skip
    assert time.monotonic() - started < 10  # the lock died with its holder
    assert ledger.recent_audit(10) == []  # the dead transaction's write was rolled back
