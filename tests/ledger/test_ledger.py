"""Ledger semantics, the same on every backend (see conftest: ``backend`` is parametrized)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from rolegate.errors import Code, RefusedError, RequestError
from rolegate.ledger import BudgetExhaustedError, Ledger
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import ScopeUsage
from tests.ledger.backends import Backend
from tests.ledger.workers import T0, Budgets, at, line

DAY = line("global:*:day", usd_micro=1_000)


def reserve(
    ledger: Ledger,
    request_id: str,
    lines: list[BudgetLine],
    cost: int = 100,
    tokens: int = 10,
    now: datetime = T0,
    lease_s: float = 60,
) -> None:
    ledger.reserve(
        request_id=request_id,
        owner="test",
        lines=lines,
        cost_micro=cost,
        tokens=tokens,
        now=now,
        lease_s=lease_s,
    )


def usage(ledger: Ledger, one: BudgetLine, now: datetime = T0) -> ScopeUsage:
    return ledger.snapshot(Budgets((one,)), now).get(one.id)


def test_reserve_then_refuse_naming_the_line_and_what_is_left(ledger: Ledger) -> None:
    reserve(ledger, "a", [DAY], cost=600)
    with pytest.raises(BudgetExhaustedError) as caught:
        reserve(ledger, "b", [DAY], cost=401)
    err = caught.value
    assert isinstance(err, RefusedError)
    assert err.code == Code.BUDGET_EXHAUSTED
    assert (err.line_id, err.left_micro) == (DAY.id, 400)
    assert DAY.id in err.message
    assert "$0.000400 left of $0.001000" in err.message
    assert "resets at 2025-03-15T00:00:00+00:00" in err.message
    reserve(ledger, "c", [DAY], cost=400)  # exactly what is left still fits
    assert usage(ledger, DAY) == ScopeUsage(0, 1_000, 0, 20)


def test_token_caps_refuse_too(ledger: Ledger) -> None:
    toks = line("model:m:day", tokens=50)
    reserve(ledger, "a", [toks], cost=0, tokens=30)
    with pytest.raises(BudgetExhaustedError) as caught:
        reserve(ledger, "b", [toks], cost=0, tokens=21)
    assert (caught.value.line_id, caught.value.left_tokens) == (toks.id, 20)
    assert "20 tokens left of 50" in caught.value.message


def test_a_refusal_on_one_line_records_nothing_on_any(ledger: Ledger, backend: Backend) -> None:
    roomy = line("global:*:month", usd_micro=10_000, window="month")
    tight = line("role:r:day", usd_micro=150)
    reserve(ledger, "a", [roomy, tight], cost=100)
    with pytest.raises(BudgetExhaustedError) as caught:
        reserve(ledger, "b", [roomy, tight], cost=100)
    assert caught.value.line_id == tight.id
    snap = ledger.snapshot(Budgets((roomy, tight)), T0)
    assert snap.get(roomy.id).reserved_micro == 100
    assert snap.get(tight.id).reserved_micro == 100
    assert backend.request_states() == {"a": "reserved"}
    reserve(ledger, "b", [roomy], cost=100)  # the refused id was not burnt


def test_duplicate_request_id_is_rejected(ledger: Ledger) -> None:
    reserve(ledger, "a", [DAY])
    with pytest.raises(RequestError) as caught:
        reserve(ledger, "a", [DAY])
    assert caught.value.code == Code.INVALID_ARGUMENT
    ledger.commit("a", cost_micro=1, tokens=1, now=T0)
    with pytest.raises(RequestError):
        reserve(ledger, "a", [DAY])
    assert usage(ledger, DAY) == ScopeUsage(1, 0, 1, 0)


def test_commit_replaces_the_reservation_and_is_idempotent(ledger: Ledger) -> None:
    reserve(ledger, "a", [DAY], cost=500, tokens=50)
    ledger.commit("a", cost_micro=120, tokens=12, now=at(1))
    assert usage(ledger, DAY) == ScopeUsage(120, 0, 12, 0)
    ledger.commit("a", cost_micro=999, tokens=99, now=at(2))  # a retry: no-op
    ledger.release("a", at(3))  # too late to release: the charge stands
    assert usage(ledger, DAY) == ScopeUsage(120, 0, 12, 0)


def test_release_is_idempotent_and_frees_the_room(ledger: Ledger, backend: Backend) -> None:
    reserve(ledger, "a", [DAY], cost=1_000)
    ledger.release("a", T0)
    ledger.release("a", T0)
    ledger.release("never-reserved", T0)
    assert usage(ledger, DAY) == ScopeUsage()
    reserve(ledger, "b", [DAY], cost=1_000)
    assert backend.request_states() == {"a": "released", "b": "reserved"}


def test_commit_after_release_or_expiry_still_charges(ledger: Ledger) -> None:
    reserve(ledger, "released", [DAY], cost=300)
    ledger.release("released", T0)
    ledger.commit("released", cost_micro=250, tokens=5, now=at(1))
    reserve(ledger, "expired", [DAY], cost=300, lease_s=10)
    assert ledger.sweep(at(10)) == 1
    ledger.commit("expired", cost_micro=200, tokens=5, now=at(11))
    assert usage(ledger, DAY, at(12)) == ScopeUsage(450, 0, 10, 0)


def test_commit_of_an_unknown_request_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(RequestError, match="no reservation 'ghost'"):
        ledger.commit("ghost", cost_micro=1, tokens=1, now=T0)


def test_expired_reservations_stop_counting_and_sweep_reclaims_them(
    ledger: Ledger, backend: Backend
) -> None:
    reserve(ledger, "short", [DAY], cost=700, lease_s=30)
    reserve(ledger, "long", [DAY], cost=200, lease_s=300)
    assert usage(ledger, DAY, at(29)).reserved_micro == 900
    # Expired but not yet swept: no longer counted, so it cannot block admission.
    assert usage(ledger, DAY, at(30)).reserved_micro == 200
    reserve(ledger, "fits", [DAY], cost=800, now=at(30))
    assert ledger.sweep(at(29)) == 0
    assert ledger.sweep(at(31)) == 1
    assert ledger.sweep(at(31)) == 0
    assert backend.request_states() == {"short": "expired", "long": "reserved", "fits": "reserved"}


def test_day_window_resets_at_utc_midnight(ledger: Ledger) -> None:
    late = datetime(2025, 3, 14, 23, 59, 59, tzinfo=UTC)
    reserve(ledger, "a", [DAY], cost=1_000, now=late)
    ledger.commit("a", cost_micro=1_000, tokens=10, now=late)
    with pytest.raises(BudgetExhaustedError):
        reserve(ledger, "b", [DAY], cost=1, now=late)
    midnight = late + timedelta(seconds=1)
    assert usage(ledger, DAY, midnight) == ScopeUsage()
    reserve(ledger, "b", [DAY], cost=1_000, now=midnight)


def test_charge_counts_in_the_window_it_was_reserved_in(ledger: Ledger) -> None:
    late = datetime(2025, 3, 14, 23, 59, 59, tzinfo=UTC)
    reserve(ledger, "a", [DAY], cost=900, now=late)
    ledger.commit("a", cost_micro=800, tokens=8, now=late + timedelta(seconds=5))
    assert usage(ledger, DAY, late + timedelta(seconds=6)) == ScopeUsage()
    assert usage(ledger, DAY, late).spent_micro == 800


def test_month_window_and_non_utc_clocks(ledger: Ledger) -> None:
    month = line("provider:p:month", usd_micro=1_000, window="month")
    reserve(ledger, "a", [month], cost=600, now=datetime(2025, 3, 31, 23, 0, tzinfo=UTC))
    ledger.commit("a", cost_micro=600, tokens=1, now=T0)
    # 00:30 on 1 April in UTC+2 is still 31 March in UTC: the same month window.
    cest = timezone(timedelta(hours=2))
    assert usage(ledger, month, datetime(2025, 4, 1, 0, 30, tzinfo=cest)).spent_micro == 600
    assert usage(ledger, month, datetime(2025, 4, 1, 0, 0, tzinfo=UTC)).spent_micro == 0
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.snapshot(Budgets((month,)), datetime(2025, 4, 1))


def test_rolling_window_slides(ledger: Ledger) -> None:
    hour = line("global:*:rolling3600s", usd_micro=1_000, window="rolling", window_seconds=3600)
    reserve(ledger, "a", [hour], cost=600)
    ledger.commit("a", cost_micro=600, tokens=1, now=T0)
    reserve(ledger, "b", [hour], cost=400, now=at(1800))
    ledger.commit("b", cost_micro=400, tokens=1, now=at(1800))
    with pytest.raises(BudgetExhaustedError) as caught:
        reserve(ledger, "c", [hour], cost=1, now=at(3599))
    assert "rolling 3600s window" in caught.value.message
    assert usage(ledger, hour, at(3601)).spent_micro == 400  # "a" slid out
    reserve(ledger, "c", [hour], cost=600, now=at(3601))
    assert usage(ledger, hour, at(5401)).reserved_micro == 0  # lease over
    assert usage(ledger, hour, at(5401)).spent_micro == 0


def test_amounts_must_be_non_negative_ints(ledger: Ledger) -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(RequestError):
            reserve(ledger, "x", [DAY], cost=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease_s"):
        reserve(ledger, "x", [DAY], lease_s=0)
    assert usage(ledger, DAY) == ScopeUsage()


def test_snapshot_amounts_are_ints_and_cover_only_policy_lines(ledger: Ledger) -> None:
    other = line("job:j:day", usd_micro=5, tokens=5)
    reserve(ledger, "a", [DAY], cost=7, tokens=3)
    ledger.commit("a", cost_micro=5, tokens=2, now=T0)
    reserve(ledger, "b", [DAY], cost=11, tokens=4)
    snap = ledger.snapshot(Budgets((DAY, other)), T0)
    assert snap.usage == {DAY.id: ScopeUsage(5, 11, 2, 4)}
    assert all(type(v) is int for v in vars_of(snap.get(DAY.id)))


def vars_of(u: ScopeUsage) -> list[object]:
    return [u.spent_micro, u.reserved_micro, u.spent_tokens, u.reserved_tokens]


def test_audit_keeps_records_newest_first_and_never_text(ledger: Ledger) -> None:
    ledger.audit({"event": "decision", "decision_id": "dec_1", "cost_micro": 12})
    ledger.audit({"event": "call", "request_id": "r1", "usage": {"input_tokens": 3}})
    assert [r["event"] for r in ledger.recent_audit(10)] == ["call", "decision"]
    assert ledger.recent_audit(1) == [
        {"event": "call", "request_id": "r1", "usage": {"input_tokens": 3}}
    ]
    for bad in (
        {"event": "call", "prompt": "secret"},
        {"event": "call", "Completion": "secret"},
        {"event": "call", "detail": {"messages": [{"role": "user"}]}},
        {"event": "call", "steps": [{"output": "secret"}]},
        {"event": "call", "text": "secret"},
    ):
        with pytest.raises(ValueError, match="never stores prompt or completion text"):
            ledger.audit(bad)
    assert len(ledger.recent_audit(100)) == 2
    assert "secret" not in repr(ledger.recent_audit(100))


def test_commit_and_release_write_their_audit_record_in_the_same_transaction(
    ledger: Ledger,
) -> None:
    reserve(ledger, "a", [DAY], cost=500, tokens=50)
    reserve(ledger, "b", [DAY], cost=500, tokens=50)
    ledger.commit("a", cost_micro=120, tokens=12, now=at(1), audit={"kind": "call", "id": "a"})
    ledger.release("b", at(2), audit={"kind": "call", "id": "b", "code": "PROVIDER_UNAVAILABLE"})
    assert [r["id"] for r in ledger.recent_audit(10)] == ["b", "a"]
    assert usage(ledger, DAY) == ScopeUsage(120, 0, 12, 0)
    # A record with text is refused before anything is written: the charge is not half-made.
    reserve(ledger, "c", [DAY], cost=500, tokens=50)
    with pytest.raises(ValueError, match="never stores prompt or completion text"):
        ledger.commit("c", cost_micro=7, tokens=1, now=at(3), audit={"prompt": "secret"})
    assert usage(ledger, DAY) == ScopeUsage(120, 500, 12, 50)
    assert len(ledger.recent_audit(10)) == 2
