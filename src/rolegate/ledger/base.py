"""The budget ledger's one interface, and the small pieces every backend shares.

Money is integer micro-USD and time is integer microseconds since the Unix epoch (UTC)
inside the ledger: no floats are ever summed or compared.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from rolegate.errors import Code, RefusedError, RequestError
from rolegate.policy.budget import overrun, window_reset
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import BudgetSnapshot, ScopeUsage

#: Keys an audit record may never carry, at any depth: the trail holds no prompt or output.
FORBIDDEN_AUDIT_KEYS = frozenset({"prompt", "completion", "messages", "text", "output"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class HasBudgets(Protocol):
    """What ``snapshot`` needs of a policy (``Policy`` satisfies it)."""

    @property
    def budgets(self) -> Sequence[BudgetLine]: ...


@runtime_checkable
class WorkStore(Protocol):
    """Tasks, stage owners, escalation steps and decisions: the state one run leaves for the next.

    ``SqlLedger`` keeps it in the ledger database, shared by every process that opens it and
    kept across restarts; ``MemoryWork`` keeps it in one process (a server without a ledger).
    Both have the same semantics. Records hold ids, names, models, numbers and codes, never
    prompt or completion text. Writers take the current time explicitly (UTC-aware).

    Every id and name may be any ``str``; one that no database can store (a NUL character,
    an unpaired surrogate) is refused with RequestError (INVALID_ARGUMENT) by writers and is
    simply not found by readers. The SQL store raises LedgerError (BUDGET_UNAVAILABLE) when
    the database cannot be used.

    One authoritative owner output per (task_id, stage): a run first claims the stage
    (``claim_stage``), then either turns the claim into the owner output (``finish_stage``)
    or drops it (``release_stage``). A second owner output for a stage needs an escalation
    of the role to another model (``record_escalation``) first.
    """

    def put_decision(
        self,
        decision_id: str,
        record: Mapping[str, object],
        *,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        """Store a router decision (ids, names, numbers) under ``decision_id``.

        ``audit``, when given, is appended in the same transaction (one durable write).
        Raises RequestError for a ``decision_id`` already stored, ValueError for a record
        or audit record carrying a text key (see ``FORBIDDEN_AUDIT_KEYS``).
        """
        ...

    def get_decision(self, decision_id: str) -> dict[str, object] | None:
        """The record stored under ``decision_id`` (by any process), or None."""
        ...

    def claim_stage(
        self,
        *,
        task_id: str,
        stage: str,
        role: str,
        model: str,
        request_id: str,
        now: datetime,
        lease_s: float,
    ) -> None:
        """Claim the right to write the owner output of ``stage`` of ``task_id``, or raise.

        Raises RefusedError (CONSENSUS_FORBIDDEN) when the stage already has its owner
        output and the latest escalation of ``role`` on the task did not move it to
        ``model`` (or the owner output is already from ``model``), and when another run's
        claim on the stage has not expired. A claim expires ``lease_s`` after ``now``; an
        expired one (its process died) is taken over. Claiming again with the same
        ``request_id`` renews the claim.
        """
        ...

    def finish_stage(
        self,
        *,
        task_id: str,
        stage: str,
        request_id: str,
        role: str,
        model: str,
        authority: str,
        contract_valid: bool | None,
        now: datetime,
        output_request_id: str | None = None,
    ) -> None:
        """Make the claim of ``request_id`` the stage's owner output and drop the claim.
        ``output_request_id`` is the provider call that produced the output (default: the
        claim's id).

        ``model`` is the one that ran (a declared fallback may differ from the claimed
        one). An earlier owner's model is appended to the stage's ``replaced`` history.
        Raises RefusedError (CONSENSUS_FORBIDDEN) when ``request_id`` no longer holds the
        claim (its lease expired and another run took the stage over): that output is not
        the stage's owner output.
        """
        ...

    def release_stage(self, *, task_id: str, stage: str, request_id: str) -> None:
        """The run failed: drop its claim (no-op if it holds none); an owner output stays."""
        ...

    def record_critique(
        self,
        *,
        task_id: str,
        stage: str | None,
        role: str,
        model: str,
        request_id: str,
        contract_valid: bool | None,
        now: datetime,
    ) -> None:
        """Record a sidecar (non-authoritative) run on the task."""
        ...

    def record_escalation(
        self,
        *,
        task_id: str,
        role: str,
        step: int,
        provenance_id: str,
        from_model: str | None,
        to_model: str | None,
        fired: Sequence[str],
        policy_hash: str,
        consent: str | None,
        now: datetime,
    ) -> bool:
        """Record that ``role`` climbed rung ``step`` on the task; False (nothing written)
        when that (task_id, role, step) is already recorded, by this process or another."""
        ...

    def escalation_step(self, task_id: str, role: str) -> int:
        """How many rungs ``role`` has already climbed on the task: max(step) + 1, or 0."""
        ...

    def current_model(self, task_id: str, role: str) -> str | None:
        """``to_model`` of the latest (highest step) escalation of ``role`` on the task."""
        ...

    def was_escalated(self, task_id: str) -> bool:
        """Whether any role was escalated on the task."""
        ...

    def task_view(self, task_id: str) -> dict[str, Any] | None:
        """The task's stages, escalations and critiques; None when nothing was recorded.

        ``{"task_id", "stages": {stage: {role, model, request_id, authority, contract_valid,
        authoritative: True, replaced: [models]}}, "escalations": [{provenance_id, role,
        step, from_model, to_model, fired, policy_hash, consent}], "critiques": [{role,
        model, request_id, authority, contract_valid, stage, authoritative: False}]}``.
        Stages are by name; escalations by time, role and step; critiques in record order.
        """
        ...


@runtime_checkable
class Ledger(WorkStore, Protocol):
    """Spend and reservations per budget line, shared by every process that opens it, and
    the work store (``WorkStore``) in the same database.

    All methods are synchronous and short; the server calls them from a worker thread.
    Each takes the current time explicitly so tests can drive the clock.
    """

    description: str

    def snapshot(self, policy: HasBudgets, now: datetime) -> BudgetSnapshot:
        """Spent plus unexpired reserved amounts per line, in the window ``now`` falls in."""
        ...

    def reserve(
        self,
        *,
        request_id: str,
        owner: str,
        lines: Sequence[BudgetLine],
        cost_micro: int,
        tokens: int,
        now: datetime,
        lease_s: float,
    ) -> None:
        """Admit a call's worst case against every line at once, or raise.

        Raises BudgetExhaustedError (a RefusedError, code BUDGET_EXHAUSTED) naming the
        first line that cannot take it, RequestError for a request id already used, and
        LedgerError (BUDGET_UNAVAILABLE) when the ledger cannot be read or written.
        """
        ...

    def commit(
        self,
        request_id: str,
        *,
        cost_micro: int,
        tokens: int,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        """Replace the reservation by the real charge; a second commit is a no-op.

        ``audit``, when given, is appended in the same transaction (one durable write).
        """
        ...

    def release(
        self, request_id: str, now: datetime, *, audit: Mapping[str, object] | None = None
    ) -> None:
        """Drop a reservation; releasing twice, or after commit, does nothing.

        ``audit``, when given, is appended in the same transaction.
        """
        ...

    def sweep(self, now: datetime) -> int:
        """Reclaim reservations whose lease expired; returns how many."""
        ...

    def audit(self, record: Mapping[str, object]) -> None:
        """Append one audit record (ids, model, counts, cost, codes, timing; never text)."""
        ...

    def recent_audit(self, limit: int) -> list[dict[str, object]]:
        """The newest ``limit`` audit records, newest first."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """A request as the ledger keeps it (one row per request id)."""

    request_id: str
    owner: str
    line_ids: tuple[str, ...]
    at_us: int
    expires_us: int
    state: str  # reserved | committed | released | expired
    cost_micro: int
    tokens: int


class BudgetExhaustedError(RefusedError):
    """A reservation does not fit a budget line; ``line_id`` names the refusing one."""

    def __init__(
        self, message: str, *, line_id: str, left_micro: int | None, left_tokens: int | None
    ) -> None:
        super().__init__(message, code=Code.BUDGET_EXHAUSTED)
        self.line_id = line_id
        self.left_micro = left_micro
        self.left_tokens = left_tokens


def default_owner() -> str:
    """``pid:host:uuid``: who holds a reservation, for people reading the ledger."""
    return f"{os.getpid()}:{socket.gethostname()}:{uuid.uuid4().hex[:12]}"


def to_utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("the ledger needs timezone-aware datetimes (UTC); got a naive one")
    return now.astimezone(UTC)


def to_us(now: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (to_utc(now) - _EPOCH) // _MICROSECOND


def lease_us(lease_s: float) -> int:
    if not lease_s > 0:
        raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
    return max(1, round(lease_s * 1_000_000))


def unique_lines(lines: Sequence[BudgetLine]) -> list[BudgetLine]:
    """Lines by id, once each, in id order: the fixed order locks are taken in."""
    return sorted({line.id: line for line in lines}.values(), key=lambda line: line.id)


def refusal(
    line: BudgetLine,
    now: datetime,
    *,
    spent_micro: int,
    spent_tokens: int,
    cost_micro: int,
    tokens: int,
) -> BudgetExhaustedError | None:
    """The error for the first cap of ``line`` the call would break, or None if it fits.

    ``spent_*`` include the unexpired reservations already held on the line.
    """
    over = overrun(
        line,
        ScopeUsage(spent_micro=spent_micro, spent_tokens=spent_tokens),
        cost_micro=cost_micro,
        tokens=tokens,
    )
    if over is None:
        return None
    reset = window_reset(line, to_utc(now))
    when = f"resets at {reset.isoformat()}" if reset else f"rolling {line.window_seconds}s window"
    return BudgetExhaustedError(
        f"budget {line.id} has {over.what} (including open reservations); {over.need}; {when}",
        line_id=line.id,
        left_micro=over.left_micro,
        left_tokens=over.left_tokens,
    )


def audit_json(record: Mapping[str, object], *, what: str = "audit") -> str:
    """The record as JSON, refusing any key that would carry prompt or completion text.

    ``what`` names the record in the error ("audit", "decision").
    """
    _check_keys(record, f"{what} record")
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _check_keys(value: object, where: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if str(key).lower() in FORBIDDEN_AUDIT_KEYS:
                raise ValueError(
                    f"{where} has key {key!r}: the ledger never stores prompt or "
                    "completion text; record token counts instead"
                )
            _check_keys(inner, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            _check_keys(inner, f"{where}[{i}]")


# -- the work store's argument checks, shared by every implementation -------------------


def storable(value: object) -> bool:
    """Whether ``value`` is a str every store keeps as is (no NUL, valid UTF-8)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate: neither SQLite nor PostgreSQL takes it
        return False
    return True


def check_text(name: str, value: object) -> str:
    """``value`` if it is a storable str, else RequestError (INVALID_ARGUMENT)."""
    if not storable(value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise RequestError(
            f"{name} must be a string without NUL characters or unpaired surrogates, got {shown}",
            code=Code.INVALID_ARGUMENT,
        )
    return str(value)


def check_texts(**values: str) -> dict[str, str]:
    """Each argument checked storable (RequestError names the first that is not)."""
    return {name: check_text(name, value) for name, value in values.items()}


def check_optional_text(name: str, value: object) -> str | None:
    return None if value is None else check_text(name, value)


def check_names(name: str, values: object) -> list[str]:
    """A sequence of storable strings (a bare str is refused: it is not a list of names)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise RequestError(f"{name} must be a list of strings, got {values!r}")
    return [check_text(f"{name}[{i}]", value) for i, value in enumerate(values)]


def check_verdict(value: object) -> bool | None:
    """A contract verdict: True, False or None (no contract)."""
    if value is not None and type(value) is not bool:
        raise RequestError(f"contract_valid must be True, False or None, got {value!r}")
    return value


def check_step(value: object) -> int:
    if type(value) is not int or value < 0:
        raise RequestError(f"step must be an int >= 0, got {value!r}")
    return value


def owner_refusal(task_id: str, stage: str, model: str) -> RefusedError:
    return RefusedError(
        f"stage {stage!r} of task {task_id!r} already has its owner output (from {model}); "
        "a second authoritative run needs an escalation first",
        code=Code.CONSENSUS_FORBIDDEN,
    )


def claimed_refusal(task_id: str, stage: str) -> RefusedError:
    return RefusedError(
        f"stage {stage!r} of task {task_id!r} is being written by another run now "
        "(one owner per stage)",
        code=Code.CONSENSUS_FORBIDDEN,
    )


def lost_claim_refusal(task_id: str, stage: str, request_id: str) -> RefusedError:
    return RefusedError(
        f"request {request_id!r} holds no claim on stage {stage!r} of task {task_id!r} (its "
        "lease expired and another run took the stage over, or it never claimed it); its "
        "output is not the stage's owner output",
        code=Code.CONSENSUS_FORBIDDEN,
    )


def decision_reused(decision_id: str) -> RequestError:
    return RequestError(
        f"decision_id {decision_id!r} was already used; every decision needs a fresh one",
        code=Code.INVALID_ARGUMENT,
    )
