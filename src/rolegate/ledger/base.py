"""The ledger's one interface (``Ledger``, its work store ``WorkStore`` and its quality store
``QualityStore``, see ``quality``).

The pieces every backend shares live beside it (``records``: the reservation row, the budget
refusal and exact time arithmetic; ``checks``: argument checks and refusals) and are
re-exported here, where callers have always imported them from.

Money is integer micro-USD and time is integer microseconds since the Unix epoch (UTC)
inside the ledger: no floats are ever summed or compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from rolegate.ledger.checks import (
    FORBIDDEN_AUDIT_KEYS,
    audit_json,
    check_names,
    check_optional_text,
    check_step,
    check_text,
    check_texts,
    check_verdict,
    claimed_refusal,
    decision_reused,
    lost_claim_refusal,
    owner_refusal,
    storable,
)
from rolegate.ledger.quality import EvalResult, EvalRun, QualityStore
from rolegate.ledger.records import (
    BudgetExhaustedError,
    Reservation,
    default_owner,
    lease_us,
    refusal,
    to_us,
    to_utc,
    unique_lines,
)
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import BudgetSnapshot

__all__ = [
    "FORBIDDEN_AUDIT_KEYS",
    "BudgetExhaustedError",
    "EvalResult",
    "EvalRun",
    "HasBudgets",
    "Ledger",
    "QualityStore",
    "Reservation",
    "WorkStore",
    "audit_json",
    "check_names",
    "check_optional_text",
    "check_step",
    "check_text",
    "check_texts",
    "check_verdict",
    "claimed_refusal",
    "decision_reused",
    "default_owner",
    "lease_us",
    "lost_claim_refusal",
    "owner_refusal",
    "refusal",
    "storable",
    "to_us",
    "to_utc",
    "unique_lines",
]


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
        audit: Mapping[str, object] | None = None,
    ) -> bool:
        """Record that ``role`` climbed rung ``step`` on the task; False (nothing written)
        when that (task_id, role, step) is already recorded, by this process or another.

        ``audit``, when given, is appended in the same transaction when the step is
        recorded (one durable write), and not at all when False is returned.
        """
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
class Ledger(WorkStore, QualityStore, Protocol):
    """Spend and reservations per budget line, shared by every process that opens it, and
    the work store (``WorkStore``) and quality store (``QualityStore``) in the same database.

    All methods are synchronous and short; the server calls them from a worker thread.
    Each takes the current time explicitly so tests can drive the clock. A write returns
    once it is committed and durable; writes made at the same moment from many threads may
    share one transaction and one fsync (group commit, see ``_group``), each still
    succeeding or failing on its own.
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

    def recent_audit_rows(self, limit: int) -> list[tuple[int, dict[str, object]]]:
        """The same, each with the microseconds since the epoch it was written at."""
        ...

    def close(self) -> None: ...
