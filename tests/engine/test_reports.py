"""`rolegate report`'s sums over a seeded audit trail, on a real SQLite and PostgreSQL ledger:
every grouping, the totals, the day boundary, the window, and money in dollars."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rolegate.engine.reports import (
    NONE,
    Report,
    Tally,
    day_of,
    dollars,
    load_report,
    select_audit,
    summarize,
    usd_number,
)
from rolegate.ledger import Ledger
from rolegate.ledger.records import to_us
from tests.ledger.backends import Backend, SqliteBackend, make_postgres

D1 = datetime(2025, 3, 1, tzinfo=UTC)
D2 = datetime(2025, 3, 2, tzinfo=UTC)
PROVIDERS = {"m-a": "local", "m-b": "cloud", "m-c": "local"}


def _at(day: datetime, hours: float = 0, us: int = 0) -> int:
    return to_us(day + timedelta(hours=hours)) + us


def _call(
    model: str, provider: str, code: str, inp: int, out: int, cost: int, **kw: object
) -> dict[str, object]:
    return {"kind": "call", "request_id": f"req-{model}-{inp}", "model": model,
            "provider": provider, "policy_hash": "ph", "code": code, "ms": 12.5,
            "input_tokens": inp, "output_tokens": out, "cost_micro": cost, "role": "coder",
            "job": "fix", "decision_id": None, "task_id": None, "stage": None, "attempt": 1,
            **kw}  # fmt: skip


def _decision(outcome: str, code: str, job: str, role: str, model: str | None) -> dict[str, object]:
    return {"kind": "decision", "decision_id": f"dec-{code}-{job}", "outcome": outcome,
            "code": code, "intent": "code", "job": job, "role": role, "model": model,
            "input_tokens": 900, "classified_by": "caller", "policy_hash": "ph"}  # fmt: skip


#: (at_us, record) in write order: two UTC days, every kind the report counts, and one it
#: does not. The comments number them for the expectations below.
SEED: list[tuple[int, dict[str, object]]] = [
    (_at(D1, -1), _decision("route", "ROUTED", "fix", "coder", "m-a")),  # 0: day before
    (_at(D1, 10), _decision("route", "ROUTED", "fix", "coder", "m-a")),  # 1
    (_at(D1, 10.01), _call("m-a", "local", "OK", 1000, 200, 4200, fallback_from=None)),  # 2
    (_at(D1, 11), _decision("refuse", "BUDGET_EXHAUSTED", "fix", "coder", None)),  # 3
    (_at(D1, 12), _call("m-b", "cloud", "OK", 500, 100, 1_250_000, fallback_from="m-a")),  # 4
    (_at(D1, 12.5), _call("m-a", "local", "PROVIDER_UNAVAILABLE", 300, 0, 0)),  # 5
    (_at(D2, 0, -1), {"kind": "consent", "model": "m-a", "to_model": "m-b",  # 6: last us of D1
                      "code": "GRANTED", "policy_hash": "ph"}),
    (_at(D2), {"kind": "consent", "model": "m-a", "to_model": "m-b",  # 7: first us of D2
               "code": "DECLINED", "policy_hash": "ph"}),
    (_at(D2, 1), {"kind": "escalation", "request_id": "esc-1", "task_id": "t-1",  # 8
                  "role": "coder", "model": "m-a", "to_model": "m-b", "code": "ESCALATE",
                  "policy_hash": "ph", "consent": "granted", "fired": "confidence"}),
    (_at(D2, 2), {"kind": "escalation", "request_id": "esc-2", "task_id": None,  # 9
                  "role": "coder", "model": "m-a", "to_model": None, "code": "NO_ESCALATION",
                  "policy_hash": "ph", "consent": None, "fired": ""}),
    (_at(D2, 3), _call("m-b", "cloud", "OK", 800, 400, 30_000, job=None,  # 10: evaluation
                       evaluation=True)),
    (_at(D2, 4), _decision("route", "ROUTED", "docs", "writer", "m-c")),  # 11
    (_at(D2, 4.01), _call("m-c", "local", "OK", 2000, 1000, 0, role="writer", job="docs")),  # 12
    (_at(D2, 5), {"kind": "stage", "task_id": "t-1", "code": "OK", "model": "m-a"}),  # 13
    (_at(D2, 24), _decision("route", "ROUTED", "fix", "coder", "m-a")),  # 14: day after
]  # fmt: skip
SINCE, UNTIL = D1, D2 + timedelta(days=1)

TOTAL = Tally(
    decisions=3, calls=4, input_tokens=3800, output_tokens=1300, cost_micro=1_254_200,
    refusals=2, fallbacks=1, escalations=1, consents_granted=2, consents_denied=1,
    eval_calls=1, eval_cost_micro=30_000,
)  # fmt: skip
EXPECTED: dict[str, dict[str, Tally]] = {
    "model": {
        NONE: Tally(decisions=1, refusals=1),
        "m-a": Tally(decisions=1, calls=2, input_tokens=1300, output_tokens=200,
                     cost_micro=4200, refusals=1, escalations=1, consents_granted=2,
                     consents_denied=1),
        "m-b": Tally(calls=1, input_tokens=500, output_tokens=100, cost_micro=1_250_000,
                     fallbacks=1, eval_calls=1, eval_cost_micro=30_000),
        "m-c": Tally(decisions=1, calls=1, input_tokens=2000, output_tokens=1000),
    },
    "day": {
        "2025-03-01": Tally(decisions=2, calls=3, input_tokens=1800, output_tokens=300,
                            cost_micro=1_254_200, refusals=2, fallbacks=1, consents_granted=1),
        "2025-03-02": Tally(decisions=1, calls=1, input_tokens=2000, output_tokens=1000,
                            escalations=1, consents_granted=1, consents_denied=1, eval_calls=1,
                            eval_cost_micro=30_000),
    },
    "provider": {  # decisions and consents name no provider: the policy's, by model
        NONE: Tally(decisions=1, refusals=1),
        "cloud": Tally(calls=1, input_tokens=500, output_tokens=100, cost_micro=1_250_000,
                       fallbacks=1, eval_calls=1, eval_cost_micro=30_000),
        "local": Tally(decisions=2, calls=3, input_tokens=3300, output_tokens=1200,
                       cost_micro=4200, refusals=1, escalations=1, consents_granted=2,
                       consents_denied=1),
    },
    "job": {
        NONE: Tally(escalations=1, consents_granted=2, consents_denied=1, eval_calls=1,
                    eval_cost_micro=30_000),
        "docs": Tally(decisions=1, calls=1, input_tokens=2000, output_tokens=1000),
        "fix": Tally(decisions=2, calls=3, input_tokens=1800, output_tokens=300,
                     cost_micro=1_254_200, refusals=2, fallbacks=1),
    },
    "role": {
        NONE: Tally(consents_granted=1, consents_denied=1),
        "coder": Tally(decisions=2, calls=3, input_tokens=1800, output_tokens=300,
                       cost_micro=1_254_200, refusals=2, fallbacks=1, escalations=1,
                       consents_granted=1, eval_calls=1, eval_cost_micro=30_000),
        "writer": Tally(decisions=1, calls=1, input_tokens=2000, output_tokens=1000),
    },
    "code": {
        "BUDGET_EXHAUSTED": Tally(decisions=1, refusals=1),
        "DECLINED": Tally(consents_denied=1),
        "ESCALATE": Tally(escalations=1, consents_granted=1),
        "GRANTED": Tally(consents_granted=1),
        "NO_ESCALATION": Tally(),
        "OK": Tally(calls=3, input_tokens=3500, output_tokens=1300, cost_micro=1_254_200,
                    fallbacks=1, eval_calls=1, eval_cost_micro=30_000),
        "PROVIDER_UNAVAILABLE": Tally(calls=1, input_tokens=300, refusals=1),
        "ROUTED": Tally(decisions=2),
    },
}  # fmt: skip


def seed(backend: Backend, rows: list[tuple[int, dict[str, object]]]) -> None:
    """Audit rows at chosen times, written as the ledger writes them (white box)."""
    backend.execute(*(
        f"INSERT INTO rolegate_audit (at_us, record) VALUES ({at}, '{json.dumps(record)}')"
        for at, record in rows
    ))  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A ledger holding SEED, on each backend."""
    made: Backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    if request.param == "postgres":
        made = make_postgres()
    try:
        opened = made.open()
        try:
            seed(made, SEED)
            yield opened
        finally:
            opened.close()
    finally:
        made.destroy()


@pytest.mark.parametrize("by", sorted(EXPECTED))
def test_each_grouping_sums_exactly(ledger: Ledger, by: str) -> None:
    report = load_report(ledger, by, SINCE, UNTIL, PROVIDERS)
    assert dict(report.rows) == EXPECTED[by]
    assert [key for key, _ in report.rows] == sorted(EXPECTED[by])
    assert report.total == TOTAL
    assert report.records == 12  # 1..12: the stage record and both days outside are not
    total = Tally()
    for _, tally in report.rows:
        total.merge(tally)
    assert total == TOTAL  # every counted record is in exactly one group


def test_the_window_is_since_inclusive_until_exclusive(ledger: Ledger) -> None:
    to_d2 = load_report(ledger, "day", D1 + timedelta(hours=12), D2)
    assert [key for key, _ in to_d2.rows] == ["2025-03-01"]
    assert to_d2.total == Tally(
        calls=2,
        input_tokens=800,
        output_tokens=100,
        cost_micro=1_250_000,
        refusals=1,
        fallbacks=1,
        consents_granted=1,
    )  # rows 4, 5, 6
    from_d2 = load_report(ledger, "day", D2, None)
    assert [key for key, _ in from_d2.rows] == ["2025-03-02", "2025-03-03"]
    assert from_d2.total.consents_denied == 1
    assert from_d2.total.consents_granted == 1
    everything = load_report(ledger, "day", None, None)
    assert [key for key, _ in everything.rows] == [
        "2025-02-28", "2025-03-01", "2025-03-02", "2025-03-03"
    ]  # fmt: skip
    assert everything.total.decisions == 5


def test_audit_rows_between_carries_when_each_record_was_stored(ledger: Ledger) -> None:
    rows = ledger.audit_rows_between(to_us(SINCE), to_us(UNTIL))
    assert rows == SEED[1:14]
    assert ledger.audit_between(to_us(SINCE), to_us(UNTIL)) == [r for _, r in SEED[1:14]]
    calls = ledger.audit_rows_between(to_us(SINCE), to_us(UNTIL), kind="consent")
    assert [at for at, _ in calls] == [_at(D2, 0, -1), _at(D2)]


def test_day_of_is_exact_at_midnight_and_follows_the_zone() -> None:
    assert day_of(_at(D2, 0, -1)) == "2025-03-01"
    assert day_of(_at(D2)) == "2025-03-02"
    new_york = timezone(timedelta(hours=-5))
    assert day_of(_at(D2, 4.99), new_york) == "2025-03-01"
    assert day_of(_at(D2, 5), new_york) == "2025-03-02"
    by_ny = summarize(SEED[1:14], "day", 0, None, tz=new_york)
    assert [key for key, _ in by_ny.rows] == ["2025-03-01"]  # all of it before 05:00 UTC D2


def test_money_is_dollars() -> None:
    assert dollars(1_254_200) == "1.254200"
    assert dollars(4200) == "0.004200"
    assert dollars(0) == "0.000000"
    assert dollars(1_234_567_890_123) == "1234567.890123"
    assert dollars(-5) == "-0.000005"
    assert usd_number(1_254_200) == 1.2542
    assert usd_number(999_999_999_999_999) == 999_999_999.999999
    shown = summarize(SEED, "model", to_us(SINCE), to_us(UNTIL), PROVIDERS).as_dict()
    total = shown["total"]
    assert isinstance(total, dict)
    assert total["spend_usd"] == 1.2542
    assert total["eval_spend_usd"] == 0.03
    assert "cost_micro" not in total
    assert "eval_cost_micro" not in total


def test_as_dict_names_the_window_and_rows_by_their_group() -> None:
    report = summarize(SEED[1:3], "job", to_us(SINCE), to_us(UNTIL))
    assert report.as_dict() == {
        "by": "job",
        "since": "2025-03-01T00:00:00+00:00",
        "until": "2025-03-03T00:00:00+00:00",
        "records": 2,
        "rows": [{"job": "fix", "decisions": 1, "calls": 1, "input_tokens": 1000,
                  "output_tokens": 200, "refusals": 0, "fallbacks": 0, "escalations": 0,
                  "consents_granted": 0, "consents_denied": 0, "eval_calls": 0,
                  "spend_usd": 0.0042, "eval_spend_usd": 0.0}],
        "total": {"decisions": 1, "calls": 1, "input_tokens": 1000, "output_tokens": 200,
                  "refusals": 0, "fallbacks": 0, "escalations": 0, "consents_granted": 0,
                  "consents_denied": 0, "eval_calls": 0, "spend_usd": 0.0042,
                  "eval_spend_usd": 0.0},
    }  # fmt: skip


def test_an_empty_window_is_an_empty_report(ledger: Ledger) -> None:
    report = load_report(ledger, "model", D1 + timedelta(days=30), None)
    assert report == Report("model", to_us(D1 + timedelta(days=30)), None, (), Tally(), 0)


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        summarize(SEED, "colour", 0, None)


def test_select_audit_filters_and_keeps_the_newest_first() -> None:
    rows = SEED[1:14]
    fixes = select_audit(rows, job="fix", limit=10)
    assert [r["kind"] for _, r in fixes] == ["call", "call", "decision", "call", "decision"]
    assert fixes[0] == SEED[5]
    assert fixes[-1] == SEED[1]
    assert select_audit(rows, job="fix", code="OK", limit=10) == [SEED[4], SEED[2]]
    assert select_audit(rows, code="ROUTED", limit=1) == [SEED[11]]
    assert select_audit(rows, job="nope", limit=10) == []
    assert select_audit(rows, limit=0) == []
    assert len(select_audit(rows, limit=100)) == 13
