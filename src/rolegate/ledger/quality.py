"""Quality evidence in the ledger: eval runs, per-case results, and the history reads that
policy replay needs (``QualityStore``), with the checks every writer applies first.

Results hold ids, names, outcomes, numbers and codes, never prompt or completion text.
Time is integer microseconds since the Unix epoch (UTC), as everywhere in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, get_args, runtime_checkable

from rolegate.errors import Code, RequestError
from rolegate.ledger.checks import check_names, check_optional_text, check_text
from rolegate.ledger.records import default_owner
from rolegate.policy.evidence import Evidence

__all__ = [
    "OUTCOMES",
    "SOURCES",
    "EvalResult",
    "EvalRun",
    "Outcome",
    "QualityStore",
    "Source",
    "check_count",
    "check_result",
    "check_run",
    "check_us",
    "check_window",
]

Outcome = Literal["pass", "fail", "error", "refused"]
Source = Literal["eval", "live"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
SOURCES: tuple[str, ...] = get_args(Source)

#: What a BIGINT column holds.
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class EvalRun:
    """One run of an eval suite: ``cases`` cases on each of ``models``, for ``role``."""

    run_id: str
    suite: str
    suite_hash: str
    policy_hash: str
    role: str
    job: str | None
    models: tuple[str, ...]
    cases: int  # cases per model
    started_us: int
    finished_us: int | None = None
    owner: str = ""  # the process that ran it; the ledger fills in default_owner() when empty


@dataclass(frozen=True, slots=True)
class EvalResult:
    """One judged (or failed) case for one model: from an eval run, or a live contract check.

    ``run_id`` is None for live results. ``code`` is the error or refusal code, if any.
    """

    suite: str
    case_id: str
    model: str
    source: Source
    outcome: Outcome
    at_us: int
    run_id: str | None = None
    score: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_micro: int = 0
    code: str | None = None


@runtime_checkable
class QualityStore(Protocol):
    """Eval runs and results, the evidence the router judges quality rules on, and the
    decision and audit history in time windows (for replaying a policy against it).

    Writers refuse an id or name no database can store (a NUL character, an unpaired
    surrogate), a malformed number or an unknown outcome with RequestError
    (INVALID_ARGUMENT); readers simply find nothing for such a name. A database that
    cannot be used raises LedgerError (BUDGET_UNAVAILABLE).
    """

    def put_eval_run(self, run: EvalRun) -> None:
        """Record a new eval run (its ``owner`` defaults to ``default_owner()``).

        Raises RequestError (INVALID_ARGUMENT) when ``run.run_id`` is already stored.
        """
        ...

    def finish_eval_run(self, run_id: str, finished_us: int) -> None:
        """Mark the run finished at ``finished_us``; RequestError for an unknown run."""
        ...

    def put_eval_results(self, results: Sequence[EvalResult]) -> None:
        """Append results, all in one transaction (all stored, or none)."""
        ...

    def evidence(self, suite: str, since_us: int | None = None) -> list[Evidence]:
        """Cases passed and judged per model on ``suite``, sorted by model.

        Only judged outcomes ('pass', 'fail') count; 'error' and 'refused' are not
        evidence of quality. Of the 'eval' results, only the latest judged one (highest
        id) per (case_id, model) counts: re-running a case replaces its result, and a
        later error leaves the earlier verdict standing. Every 'live' result counts.
        ``since_us`` (inclusive) first drops the results older than it. ``last_us`` is the
        newest ``at_us`` of the results counted. A model with none has no entry.
        """
        ...

    def eval_runs(self, suite: str | None = None, limit: int = 20) -> list[EvalRun]:
        """The newest ``limit`` runs (of ``suite``, or of every suite), newest first (by
        ``started_us``, then ``run_id``)."""
        ...

    def eval_run(self, run_id: str) -> EvalRun | None:
        """The run stored under ``run_id``, or None."""
        ...

    def eval_results(self, run_id: str) -> list[EvalResult]:
        """The results stored for the run, in the order they were stored."""
        ...

    def decisions_between(
        self, since_us: int, until_us: int | None = None
    ) -> list[tuple[str, int, dict[str, object]]]:
        """(decision_id, at_us, record) of every decision with since_us <= at_us < until_us
        (no upper bound when None), ordered by at_us, then decision_id."""
        ...

    def audit_between(
        self, since_us: int, until_us: int | None = None, kind: str | None = None
    ) -> list[dict[str, object]]:
        """The audit records written at since_us <= at_us < until_us (no upper bound when
        None), in the order they were written; only those whose "kind" equals ``kind``
        when given. An audit record's time is when the ledger stored it."""
        ...

    def audit_rows_between(
        self, since_us: int, until_us: int | None = None, kind: str | None = None
    ) -> list[tuple[int, dict[str, object]]]:
        """``audit_between``'s records with their times: (at_us, record), in the order
        they were written (at_us is when the ledger stored the record)."""
        ...


# -- the checks every writer applies before touching the database ------------------------


def check_us(name: str, value: object, *, low: int = 0) -> int:
    """An int time in microseconds, ``low`` <= value <= BIGINT max (bool refused)."""
    if type(value) is not int or not low <= value <= _BIGINT_MAX:
        raise RequestError(
            f"{name} must be an int of microseconds since the epoch, got {value!r}",
            code=Code.INVALID_ARGUMENT,
        )
    return value


def check_window(since_us: object, until_us: object) -> tuple[int, int | None]:
    """A read's time window: any BIGINT bounds (``until_us`` may be None)."""
    since = check_us("since_us", since_us, low=_BIGINT_MIN)
    until = None if until_us is None else check_us("until_us", until_us, low=_BIGINT_MIN)
    return since, until


def check_count(name: str, value: object) -> int:
    """An int >= 0 that a BIGINT holds (bool refused)."""
    if type(value) is not int or not 0 <= value <= _BIGINT_MAX:
        raise RequestError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _optional_count(name: str, value: object) -> int | None:
    return None if value is None else check_count(name, value)


def _optional_number(name: str, value: object, *, signed: bool = False) -> float | None:
    """None or a finite number (>= 0 unless ``signed``), as a float: NaN and infinities
    do not survive every database (SQLite stores NaN as NULL)."""
    if value is None:
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (signed or value >= 0)
    ):
        return float(value)
    sign = "" if signed else " >= 0"
    raise RequestError(f"{name} must be a finite number{sign} or None, got {value!r}")


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def check_run(run: EvalRun) -> EvalRun:
    """The run, checked, with ``owner`` filled in; RequestError for a malformed field."""
    for name in ("run_id", "suite", "suite_hash", "policy_hash", "role"):
        check_text(name, getattr(run, name))
    check_optional_text("job", run.job)
    models = tuple(check_names("models", run.models))
    check_count("cases", run.cases)
    check_us("started_us", run.started_us)
    if run.finished_us is not None:
        check_us("finished_us", run.finished_us)
    owner = check_text("owner", run.owner) or default_owner()
    return replace(run, models=models, owner=owner)


def check_result(result: EvalResult) -> EvalResult:
    """The result, checked (numbers as floats); RequestError for a malformed field."""
    for name in ("suite", "case_id", "model"):
        check_text(name, getattr(result, name))
    check_optional_text("run_id", result.run_id)
    check_optional_text("code", result.code)
    _one_of("source", result.source, SOURCES)
    _one_of("outcome", result.outcome, OUTCOMES)
    check_us("at_us", result.at_us)
    _optional_count("input_tokens", result.input_tokens)
    _optional_count("output_tokens", result.output_tokens)
    check_count("cost_micro", result.cost_micro)
    return replace(
        result,
        score=_optional_number("score", result.score, signed=True),
        latency_ms=_optional_number("latency_ms", result.latency_ms),
        ttft_ms=_optional_number("ttft_ms", result.ttft_ms),
    )
