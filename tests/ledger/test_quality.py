"""The quality store: eval runs, results, the evidence counted from them, and the decision
and audit history by time window; on SQLite and PostgreSQL (``backend``/``ledger``)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from rolegate.errors import Code, LedgerError, RequestError
from rolegate.ledger import EvalResult, EvalRun, Ledger, QualityStore
from rolegate.ledger import migrations as m
from rolegate.ledger.records import to_us
from rolegate.policy.evidence import Evidence
from tests.ledger.backends import Backend
from tests.ledger.workers import T0, at

QUALITY_TABLES = {"rolegate_eval_results", "rolegate_eval_runs"}
RUN = EvalRun(
    run_id="run-1", suite="s", suite_hash="sh", policy_hash="ph", role="coder", job="fix",
    models=("m-a", "m-b"), cases=3, started_us=1_000,
)  # fmt: skip


def res(case: str, outcome: Any, at_us: int, *, model: str = "m-a", **kw: Any) -> EvalResult:
    """An eval result on suite "s" (``source="live"`` etc. through ``kw``)."""
    fields: dict[str, Any] = {"suite": "s", "source": "eval", "run_id": "run-1", **kw}
    if fields["source"] == "live":
        fields["run_id"] = None
    return EvalResult(case_id=case, model=model, outcome=outcome, at_us=at_us, **fields)


def ev(model: str, passed: int, cases: int, last_us: int, suite: str = "s") -> Evidence:
    return Evidence(suite=suite, model=model, passed=passed, cases=cases, last_us=last_us)


def invalid(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(RequestError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == Code.INVALID_ARGUMENT
    return caught.value.message


# -- schema --------------------------------------------------------------------------------


def test_a_new_ledger_has_the_quality_tables(backend: Backend, ledger: Ledger) -> None:
    assert [name for name, _ in backend.migrations()][-1] == "0003_quality"
    assert set(backend.tables()) >= QUALITY_TABLES
    assert isinstance(ledger, QualityStore)


def test_a_ledger_at_0002_gets_0003_on_open(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(m, "MIGRATIONS", m.MIGRATIONS[:2])
    old = backend.open()
    old.put_decision("d-1", {"route": "x"}, now=T0)
    old.close()
    assert [name for name, _ in backend.migrations()] == ["0001_ledger", "0002_work"]
    assert not QUALITY_TABLES & set(backend.tables())
    monkeypatch.undo()
    ledger = backend.open()
    try:
        assert [name for name, _ in backend.migrations()] == [
            "0001_ledger", "0002_work", "0003_quality"
        ]  # fmt: skip
        assert ledger.get_decision("d-1") == {"route": "x"}
        assert ledger.decisions_between(0) == [("d-1", to_us(T0), {"route": "x"})]
        ledger.put_eval_run(RUN)
        ledger.put_eval_results([res("c1", "pass", 5)])
        assert ledger.evidence("s") == [ev("m-a", 1, 1, 5)]
    finally:
        ledger.close()


# -- runs and results ----------------------------------------------------------------------


def test_a_run_round_trips_and_finishes(ledger: Ledger) -> None:
    ledger.put_eval_run(RUN)
    (stored,) = ledger.eval_runs()
    assert stored.owner.count(":") == 2  # default_owner(): pid:host:uuid
    assert stored == EvalRun(**{**_fields(RUN), "owner": stored.owner})
    ledger.finish_eval_run("run-1", 9_000)
    assert ledger.eval_runs("s")[0].finished_us == 9_000
    mine = EvalRun(**{**_fields(RUN), "run_id": "run-2", "job": None, "owner": "me",
                      "models": ["m-c"], "started_us": 2_000})  # fmt: skip
    ledger.put_eval_run(mine)
    ledger.put_eval_run(EvalRun(**{**_fields(RUN), "run_id": "run-3", "suite": "t"}))
    newest = ledger.eval_runs("s")[0]
    assert newest == EvalRun(**{**_fields(mine), "models": ("m-c",)})
    assert [run.run_id for run in ledger.eval_runs()] == ["run-2", "run-3", "run-1"]
    assert [run.run_id for run in ledger.eval_runs("s", limit=1)] == ["run-2"]
    assert [run.run_id for run in ledger.eval_runs("t")] == ["run-3"]
    assert ledger.eval_runs("none") == []
    assert ledger.eval_run("run-2") == newest
    assert ledger.eval_run("run-1") == ledger.eval_runs("s")[1]
    assert ledger.eval_run("nope") is None
    assert ledger.eval_run("bad\x00id") is None
    assert "no eval run 'nope'" in invalid(ledger.finish_eval_run, "nope", 1)


def _fields(run: EvalRun) -> dict[str, Any]:
    return {name: getattr(run, name) for name in EvalRun.__slots__}


def test_a_duplicate_run_id_is_refused(ledger: Ledger) -> None:
    ledger.put_eval_run(RUN)
    again = EvalRun(**{**_fields(RUN), "suite": "other", "owner": "x"})
    assert "already stored" in invalid(ledger.put_eval_run, again)
    assert [run.suite for run in ledger.eval_runs()] == ["s"]


def test_results_round_trip_in_order_with_none_fields(ledger: Ledger) -> None:
    full = res("c1", "pass", 7, score=0.75, latency_ms=12.5, ttft_ms=3.25, input_tokens=10,
               output_tokens=20, cost_micro=1234, code=None)  # fmt: skip
    bare = res("c2", "error", 8, code="PROVIDER_TIMEOUT")
    many = [res(f"n{i}", "fail", 100 + i, score=i) for i in range(150)]  # several INSERTs
    live = res("c1", "pass", 9, source="live")
    ledger.put_eval_results([full, bare, *many, live])
    stored = ledger.eval_results("run-1")
    assert stored == [full, bare, *many]
    assert all(type(r.score) is float for r in stored[2:])
    assert stored[0].score == 0.75
    assert stored[1].score is None
    assert stored[1].input_tokens is None
    assert ledger.eval_results("other") == []
    ledger.put_eval_results([])  # nothing to write
    assert len(ledger.eval_results("run-1")) == 152


def test_a_batch_is_one_transaction(backend: Backend, ledger: Ledger) -> None:
    """A database failure on the last row (a trigger) stores none of the batch."""
    if backend.kind == "sqlite":
        backend.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON rolegate_eval_results"
            " WHEN NEW.case_id = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    else:
        backend.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.case_id = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER boom BEFORE INSERT ON rolegate_eval_results"
            " FOR EACH ROW EXECUTE FUNCTION boom()",
        )
    batch = [*(res(f"c{i}", "pass", i) for i in range(100)), res("boom", "pass", 1)]
    with pytest.raises(LedgerError) as caught:
        ledger.put_eval_results(batch)
    assert caught.value.code == Code.BUDGET_UNAVAILABLE
    assert ledger.eval_results("run-1") == []
    assert ledger.evidence("s") == []


def test_malformed_values_are_refused_before_anything_is_written(ledger: Ledger) -> None:
    for bad in ("a\x00b", "\ud800"):
        assert "run_id must be a string" in invalid(
            ledger.put_eval_run, EvalRun(**{**_fields(RUN), "run_id": bad})
        )
        assert "models[1]" in invalid(
            ledger.put_eval_run, EvalRun(**{**_fields(RUN), "models": ("m", bad)})
        )
        assert "case_id" in invalid(
            ledger.put_eval_results, [res("ok", "pass", 1), res(bad, "pass", 2)]
        )
        assert ledger.evidence(bad) == []
        assert ledger.eval_results(bad) == []
        assert ledger.audit_between(0, kind=bad) == []
        invalid(ledger.finish_eval_run, bad, 1)
    for kw in ({"score": float("nan")}, {"latency_ms": -1.0}, {"input_tokens": True},
               {"cost_micro": -1}, {"source": "batch"}):  # fmt: skip
        invalid(ledger.put_eval_results, [res("c", "pass", 1, **kw)])
    invalid(ledger.put_eval_results, [res("c", "maybe", 1)])
    invalid(ledger.put_eval_results, [res("c", "pass", -1)])
    invalid(ledger.put_eval_run, EvalRun(**{**_fields(RUN), "cases": 2.0}))
    invalid(ledger.eval_runs, limit=-1)
    invalid(ledger.decisions_between, 1.5)
    assert ledger.eval_runs() == []
    assert ledger.eval_results("run-1") == []


# -- evidence ------------------------------------------------------------------------------


def test_the_latest_judged_eval_result_of_a_case_counts(ledger: Ledger) -> None:
    ledger.put_eval_results([
        res("c1", "pass", 10), res("c1", "fail", 11),  # re-run: the fail replaces the pass
        res("c2", "fail", 12), res("c2", "pass", 13),  # and the other way round
        res("c3", "pass", 14), res("c3", "error", 99),  # a later error leaves the pass
        res("c4", "refused", 15), res("c5", "error", 16),  # never judged: not evidence
    ])  # fmt: skip
    assert ledger.evidence("s") == [ev("m-a", 2, 3, 14)]
    ledger.put_eval_results([res("c1", "pass", 5)])  # a later run; ids decide, not at_us
    assert ledger.evidence("s") == [ev("m-a", 3, 3, 14)]
    ledger.put_eval_results([res("c4", "fail", 20)])
    assert ledger.evidence("s") == [ev("m-a", 3, 4, 20)]


def test_every_live_result_counts(ledger: Ledger) -> None:
    ledger.put_eval_results([
        res("c1", "fail", 10), res("c1", "pass", 11, source="live"),
        res("c1", "fail", 12, source="live"), res("c1", "pass", 13, source="live"),
        res("c1", "error", 30, source="live"), res("c1", "refused", 31, source="live"),
    ])  # fmt: skip
    # The eval row is not hidden by the later live rows of the same case, nor they by it.
    assert ledger.evidence("s") == [ev("m-a", 2, 4, 13)]
    ledger.put_eval_results([res("c1", "pass", 14)])  # replaces the eval row only
    assert ledger.evidence("s") == [ev("m-a", 3, 4, 14)]


def test_since_us_drops_older_results_before_the_latest_is_chosen(ledger: Ledger) -> None:
    ledger.put_eval_results([
        res("c1", "pass", 10), res("c1", "fail", 20),
        res("c2", "pass", 30), res("c2", "fail", 5),  # its latest row is older than since
        res("c3", "pass", 8, source="live"), res("c3", "fail", 25, source="live"),
    ])  # fmt: skip
    assert ledger.evidence("s") == [ev("m-a", 1, 4, 25)]
    assert ledger.evidence("s", since_us=15) == [ev("m-a", 1, 3, 30)]
    assert ledger.evidence("s", since_us=20) == [ev("m-a", 1, 3, 30)]  # inclusive
    assert ledger.evidence("s", since_us=21) == [ev("m-a", 1, 2, 30)]
    assert ledger.evidence("s", since_us=31) == []


def test_evidence_is_per_suite_and_per_model(ledger: Ledger) -> None:
    ledger.put_eval_results([
        res("c1", "pass", 1, model="m-b"), res("c2", "fail", 2, model="m-b"),
        res("c1", "pass", 3, model="m-a"), res("c1", "fail", 4, model="m-c"),
        res("c1", "fail", 5, model="m-a", suite="t"),  # same case, other suite
        res("c9", "error", 6, model="m-d"),  # only errors: no entry
    ])  # fmt: skip
    assert ledger.evidence("s") == [ev("m-a", 1, 1, 3), ev("m-b", 1, 2, 2), ev("m-c", 0, 1, 4)]
    assert ledger.evidence("t") == [ev("m-a", 0, 1, 5, suite="t")]
    assert ledger.evidence("u") == []


def test_evidence_is_shared_by_every_ledger_on_the_database(backend: Backend) -> None:
    writer, reader = backend.open(), backend.open()
    try:
        assert reader.evidence("s") == []
        writer.put_eval_run(RUN)
        threads = [
            threading.Thread(
                target=writer.put_eval_results,
                args=([res(f"c{t}-{i}", "pass" if i % 2 else "fail", i) for i in range(10)],),
            )
            for t in range(8)
        ]  # concurrent batches (grouped on SQLite): each one whole
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert reader.evidence("s") == [ev("m-a", 40, 80, 9)]
        assert reader.eval_runs()[0].run_id == "run-1"
        writer.finish_eval_run("run-1", 5)
        assert reader.eval_runs()[0].finished_us == 5
    finally:
        writer.close()
        reader.close()


# -- history windows -----------------------------------------------------------------------


def test_decisions_between_is_a_half_open_window_by_time_then_id(ledger: Ledger) -> None:
    for decision_id, seconds in (("d-c", 2), ("d-b", 1), ("d-a", 1), ("d-0", 0), ("d-z", 3)):
        ledger.put_decision(decision_id, {"id": decision_id, "n": [1]}, now=at(seconds))
    got = ledger.decisions_between(to_us(at(1)), to_us(at(3)))
    assert got == [
        ("d-a", to_us(at(1)), {"id": "d-a", "n": [1]}),
        ("d-b", to_us(at(1)), {"id": "d-b", "n": [1]}),
        ("d-c", to_us(at(2)), {"id": "d-c", "n": [1]}),
    ]
    assert [d for d, _, _ in ledger.decisions_between(to_us(at(2)))] == ["d-c", "d-z"]
    assert ledger.decisions_between(to_us(at(1)), to_us(at(1))) == []
    assert len(ledger.decisions_between(-(2**63))) == 5


def test_audit_between_is_in_write_order_and_filters_kind_exactly(
    backend: Backend, ledger: Ledger
) -> None:
    records = [
        (300, {"kind": "decision", "n": 1}),
        (100, {"kind": "call", "n": 2}),
        (200, {"kind": "decision", "n": 3}),
        (150, {"kind": "call", "meta": {"kind": "decision"}, "n": 4}),
        (160, {"kinds": "decision", "n": 5}),
        (170, {"kind": "decision-2", "n": 6}),
        (400, {"kind": "decision", "n": 7}),
    ]
    backend.execute(*(
        f"INSERT INTO rolegate_audit (at_us, record) VALUES ({t}, '{json.dumps(r)}')"
        for t, r in records
    ))  # fmt: skip
    numbers = [r["n"] for r in ledger.audit_between(100, 400)]
    assert numbers == [1, 2, 3, 4, 5, 6]  # id order, not time order; 400 excluded
    assert [r["n"] for r in ledger.audit_between(150, 301, kind="decision")] == [1, 3]
    assert [r["n"] for r in ledger.audit_between(0, kind="decision")] == [1, 3, 7]
    assert [r["n"] for r in ledger.audit_between(0, kind="call")] == [2, 4]
    assert ledger.audit_between(401) == []


def test_audit_between_sees_records_the_ledger_writes(ledger: Ledger) -> None:
    import time

    before = time.time_ns() // 1000
    ledger.audit({"kind": "call", "model": "m-a"})
    ledger.put_decision("d-1", {"k": 1}, now=T0, audit={"kind": "decision", "id": "d-1"})
    after = time.time_ns() // 1000 + 1
    assert ledger.audit_between(before, after) == [
        {"kind": "call", "model": "m-a"},
        {"kind": "decision", "id": "d-1"},
    ]
    assert ledger.audit_between(before, after, kind="decision") == [
        {"kind": "decision", "id": "d-1"}
    ]
    assert ledger.audit_between(after) == []
