"""The quality store half of ``SqlLedger`` (see ``quality.QualityStore``), shared by both
backends: arguments checked in the caller's thread, then one read or one durable write
(``_read``/``_write``) per call, its SQL run inside the transaction the backend opened.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rolegate.errors import Code, RequestError
from rolegate.ledger._tx import Tx
from rolegate.ledger.checks import storable
from rolegate.ledger.quality import (
    EvalResult,
    EvalRun,
    check_count,
    check_result,
    check_run,
    check_us,
    check_window,
)
from rolegate.policy.evidence import Evidence

T = TypeVar("T")

_RUN_COLUMNS = (
    "run_id, suite, suite_hash, policy_hash, role, job, models, cases, owner, started_us,"
    " finished_us"
)
_RESULT_COLUMNS = (
    "run_id, suite, case_id, model, source, outcome, score, latency_ms, ttft_ms,"
    " input_tokens, output_tokens, cost_micro, code, at_us"
)
#: Rows per INSERT: 14 parameters each stays under SQLite's oldest limit of 999.
_CHUNK = 64

# One query: every judged live row, and of the judged eval rows of a (case, model) only
# the one no later judged eval row of the same case and model supersedes (within the
# window). The index (suite, model, case_id, id) answers the NOT EXISTS probe.
_EVIDENCE = """SELECT r.model, SUM(CASE WHEN r.outcome = 'pass' THEN 1 ELSE 0 END), COUNT(*),
    MAX(r.at_us)
FROM rolegate_eval_results r
WHERE r.suite = ? AND r.outcome IN ('pass', 'fail') AND r.at_us >= ?
    AND (r.source = 'live' OR NOT EXISTS (
        SELECT 1 FROM rolegate_eval_results n
        WHERE n.suite = r.suite AND n.model = r.model AND n.case_id = r.case_id
            AND n.source = 'eval' AND n.outcome IN ('pass', 'fail') AND n.id > r.id
            AND n.at_us >= ?))
GROUP BY r.model"""
#: The lowest BIGINT: ``since_us=None`` is a window with no lower bound.
_NO_SINCE = -(2**63)


def _unknown_run(run_id: str) -> RequestError:
    return RequestError(f"no eval run {run_id!r} is stored", code=Code.INVALID_ARGUMENT)


def do_put_eval_run(tx: Tx, run: EvalRun) -> None:
    added = tx.run(
        f"INSERT INTO rolegate_eval_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id) DO NOTHING",
        [run.run_id, run.suite, run.suite_hash, run.policy_hash, run.role, run.job,
         json.dumps(list(run.models)), run.cases, run.owner, run.started_us, run.finished_us],
    )  # fmt: skip
    if added != 1:
        raise RequestError(
            f"eval run {run.run_id!r} is already stored; every run needs a fresh run_id",
            code=Code.INVALID_ARGUMENT,
        )


def do_finish_eval_run(tx: Tx, run_id: str, finished_us: int) -> None:
    found = tx.run(
        "UPDATE rolegate_eval_runs SET finished_us = ? WHERE run_id = ?", [finished_us, run_id]
    )
    if found != 1:
        raise _unknown_run(run_id)


def _result_row(r: EvalResult) -> list[object]:
    return [r.run_id, r.suite, r.case_id, r.model, r.source, r.outcome, r.score,
            r.latency_ms, r.ttft_ms, r.input_tokens, r.output_tokens, r.cost_micro, r.code,
            r.at_us]  # fmt: skip


def do_put_eval_results(tx: Tx, results: Sequence[EvalResult]) -> None:
    """In order, so that ids (which decide the latest result of a case) follow the list."""
    one = "(" + ", ".join("?" * 14) + ")"
    for start in range(0, len(results), _CHUNK):
        chunk = results[start : start + _CHUNK]
        tx.run(
            f"INSERT INTO rolegate_eval_results ({_RESULT_COLUMNS}) VALUES "
            + ", ".join([one] * len(chunk)),
            [value for result in chunk for value in _result_row(result)],
        )


def do_evidence(tx: Tx, suite: str, since_us: int | None) -> list[Evidence]:
    since = _NO_SINCE if since_us is None else since_us
    found = tx.rows(_EVIDENCE, [suite, since, since])
    evidence = [
        Evidence(suite=suite, model=model, passed=int(passed), cases=int(cases),
                 last_us=int(last))
        for model, passed, cases, last in found
    ]  # fmt: skip
    # Sorted here, not by ORDER BY: database collations differ; Python's order does not.
    return sorted(evidence, key=lambda item: item.model)


def _run(row: tuple[Any, ...]) -> EvalRun:
    run_id, suite, suite_hash, policy_hash, role, job, models, cases, owner, started, done = row
    return EvalRun(
        run_id=run_id, suite=suite, suite_hash=suite_hash, policy_hash=policy_hash, role=role,
        job=job, models=tuple(json.loads(models)), cases=int(cases), owner=owner,
        started_us=int(started), finished_us=None if done is None else int(done),
    )  # fmt: skip


def do_eval_runs(tx: Tx, suite: str | None, limit: int) -> list[EvalRun]:
    where, params = ("", []) if suite is None else (" WHERE suite = ?", [suite])
    found = tx.rows(
        f"SELECT {_RUN_COLUMNS} FROM rolegate_eval_runs{where}"
        " ORDER BY started_us DESC, run_id DESC LIMIT ?",
        [*params, limit],
    )
    return [_run(row) for row in found]


def do_eval_run(tx: Tx, run_id: str) -> EvalRun | None:
    found = tx.rows(f"SELECT {_RUN_COLUMNS} FROM rolegate_eval_runs WHERE run_id = ?", [run_id])
    return _run(found[0]) if found else None


def _optional(kind: Callable[[Any], T], value: object) -> T | None:
    return None if value is None else kind(value)


def _result(row: tuple[Any, ...]) -> EvalResult:
    run_id, suite, case_id, model, source, outcome, score, latency, ttft, inp, out = row[:11]
    cost, code, at = row[11:]
    return EvalResult(
        suite=suite, case_id=case_id, model=model, source=source, outcome=outcome,
        at_us=int(at), run_id=run_id, score=_optional(float, score),
        latency_ms=_optional(float, latency), ttft_ms=_optional(float, ttft),
        input_tokens=_optional(int, inp), output_tokens=_optional(int, out),
        cost_micro=int(cost), code=code,
    )  # fmt: skip


def do_eval_results(tx: Tx, run_id: str) -> list[EvalResult]:
    found = tx.rows(
        f"SELECT {_RESULT_COLUMNS} FROM rolegate_eval_results WHERE run_id = ? ORDER BY id",
        [run_id],
    )
    return [_result(row) for row in found]


def _window(since_us: int, until_us: int | None) -> tuple[str, list[object]]:
    if until_us is None:
        return "at_us >= ?", [since_us]
    return "at_us >= ? AND at_us < ?", [since_us, until_us]


def do_decisions_between(
    tx: Tx, since_us: int, until_us: int | None
) -> list[tuple[str, int, dict[str, object]]]:
    where, params = _window(since_us, until_us)
    found = tx.rows(
        f"SELECT decision_id, at_us, record FROM rolegate_decisions WHERE {where}", params
    )
    rows = [(str(did), int(at), dict(json.loads(record))) for did, at, record in found]
    return sorted(rows, key=lambda row: (row[1], row[0]))  # code point order, on both


def do_audit_between(
    tx: Tx, since_us: int, until_us: int | None
) -> list[tuple[int, dict[str, object]]]:
    where, params = _window(since_us, until_us)
    found = tx.rows(f"SELECT at_us, record FROM rolegate_audit WHERE {where} ORDER BY id", params)
    return [(int(at), dict(json.loads(record))) for at, record in found]


class SqlQualityStore(ABC):
    """``QualityStore`` over ``_read`` and ``_write`` (which ``SqlLedger`` provides)."""

    @abstractmethod
    def _write(self, work: Callable[[Tx], T], *, locks_rows: bool = True) -> T: ...

    @abstractmethod
    def _read(self, work: Callable[[Tx], T]) -> T: ...

    def put_eval_run(self, run: EvalRun) -> None:
        checked = check_run(run)
        self._write(lambda tx: do_put_eval_run(tx, checked), locks_rows=False)

    def finish_eval_run(self, run_id: str, finished_us: int) -> None:
        if not storable(run_id):
            raise _unknown_run(run_id)
        done = check_us("finished_us", finished_us)
        # Row-locking: it updates the run's row.
        self._write(lambda tx: do_finish_eval_run(tx, run_id, done))

    def put_eval_results(self, results: Sequence[EvalResult]) -> None:
        if isinstance(results, str | bytes) or not isinstance(results, Sequence):
            raise RequestError(f"results must be a list of EvalResult, got {results!r}")
        checked = [check_result(result) for result in results]
        if checked:  # appends only: their keys are new
            self._write(lambda tx: do_put_eval_results(tx, checked), locks_rows=False)

    def evidence(self, suite: str, since_us: int | None = None) -> list[Evidence]:
        since = None if since_us is None else check_us("since_us", since_us, low=_NO_SINCE)
        if not storable(suite):
            return []
        return self._read(lambda tx: do_evidence(tx, suite, since))

    def eval_runs(self, suite: str | None = None, limit: int = 20) -> list[EvalRun]:
        count = check_count("limit", limit)
        if suite is not None and not storable(suite):
            return []
        return self._read(lambda tx: do_eval_runs(tx, suite, count))

    def eval_run(self, run_id: str) -> EvalRun | None:
        if not storable(run_id):
            return None
        return self._read(lambda tx: do_eval_run(tx, run_id))

    def eval_results(self, run_id: str) -> list[EvalResult]:
        if not storable(run_id):
            return []
        return self._read(lambda tx: do_eval_results(tx, run_id))

    def decisions_between(
        self, since_us: int, until_us: int | None = None
    ) -> list[tuple[str, int, dict[str, object]]]:
        since, until = check_window(since_us, until_us)
        return self._read(lambda tx: do_decisions_between(tx, since, until))

    def audit_between(
        self, since_us: int, until_us: int | None = None, kind: str | None = None
    ) -> list[dict[str, object]]:
        return [record for _, record in self.audit_rows_between(since_us, until_us, kind)]

    def audit_rows_between(
        self, since_us: int, until_us: int | None = None, kind: str | None = None
    ) -> list[tuple[int, dict[str, object]]]:
        since, until = check_window(since_us, until_us)
        if kind is not None and not storable(kind):
            return []
        rows = self._read(lambda tx: do_audit_between(tx, since, until))
        if kind is None:
            return rows
        # Exact, after decoding: a LIKE on the JSON text could match a nested "kind".
        return [(at, record) for at, record in rows if record.get("kind") == kind]
