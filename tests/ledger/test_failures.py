"""When the ledger cannot be written or reached, admission fails closed: BUDGET_UNAVAILABLE."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from rolegate.errors import Code, LedgerError
from rolegate.ledger import Ledger, open_ledger
from rolegate.policy.decision import ScopeUsage
from tests.ledger import workers
from tests.ledger.backends import Backend, PostgresBackend
from tests.ledger.workers import T0, Budgets, line

CTX = multiprocessing.get_context("spawn")
CAP = line("global:*:day", usd_micro=10_000)


def reserve(ledger: Ledger, request_id: str, cost: int = 100) -> None:
    ledger.reserve(
        request_id=request_id, owner="t", lines=[CAP], cost_micro=cost, tokens=1, now=T0,
        lease_s=60,
    )  # fmt: skip


def test_an_unwritable_ledger_refuses_admission(backend: Backend) -> None:
    # In a child: for SQLite, file writes are made to fail for that process only.
    results = CTX.Queue()
    child = CTX.Process(target=workers.try_after_breaking, args=(backend, (CAP,), results))
    child.start()
    outcome = results.get(timeout=60)
    child.join(timeout=30)
    assert child.exitcode == 0
    for call in ("reserve", "commit", "audit"):
        code, _, message = outcome[call].partition("|")
        assert code == Code.BUDGET_UNAVAILABLE, (call, outcome[call])
        assert "fails closed" in message
    assert outcome["snapshot"] == "ok"  # reading still works: check_budget can still report
    # Nothing half-written: only the reservation made before the break exists, uncommitted.
    assert backend.request_states() == {"before": "reserved"}
    reopened = backend.open()
    try:
        assert reopened.snapshot(Budgets((CAP,)), T0).get(CAP.id) == ScopeUsage(0, 100, 0, 10)
    finally:
        reopened.close()


def test_an_unreachable_ledger_fails_closed_then_recovers(backend: Backend, ledger: Ledger) -> None:
    reserve(ledger, "before")
    with backend.unreachable():
        for attempt in ("during-1", "during-2"):  # the broken session, then a failed reconnect
            with pytest.raises(LedgerError) as caught:
                reserve(ledger, attempt)
            assert caught.value.code == Code.BUDGET_UNAVAILABLE
            assert "admission fails closed" in caught.value.message
        with pytest.raises(LedgerError):
            ledger.snapshot(Budgets((CAP,)), T0)
    reserve(ledger, "after")
    assert backend.request_states() == {"before": "reserved", "after": "reserved"}


def test_a_writer_stuck_holding_the_lock_times_out_as_unavailable(backend: Backend) -> None:
    impatient = open_ledger(backend.short_timeout_url())
    try:
        reserve(impatient, "first")
        with backend.hold_write_lock(CAP.id):
            started = time.monotonic()
            with pytest.raises(LedgerError) as caught:
                reserve(impatient, "blocked")
            waited = time.monotonic() - started
            assert caught.value.code == Code.BUDGET_UNAVAILABLE
            assert "lock" in caught.value.message
            assert 0.25 <= waited < 5
        reserve(impatient, "after")
    finally:
        impatient.close()
    assert backend.request_states() == {"first": "reserved", "after": "reserved"}


def test_a_connection_the_server_dropped_is_replaced_before_use(
    pg_backend: PostgresBackend,
) -> None:
    ledger = pg_backend.open()
    try:
        reserve(ledger, "before")
        pg_backend.drop_sessions()
        time.sleep(0.2)  # let the server's goodbye reach the idle socket
        reserve(ledger, "after")  # no BUDGET_UNAVAILABLE for a merely stale connection
    finally:
        ledger.close()
    assert pg_backend.request_states() == {"before": "reserved", "after": "reserved"}


def test_a_closed_ledger_refuses(ledger: Ledger) -> None:
    ledger.close()
    with pytest.raises(LedgerError, match="was closed"):
        reserve(ledger, "x")
