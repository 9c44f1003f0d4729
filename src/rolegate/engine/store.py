"""The engine's one door to durable state: usage, decisions, tasks and the audit trail.

Every read and write runs in a worker thread, never on the event loop (a ledger call may
wait on a lock, an fsync or the network). With a ledger, decisions and task state live in
it, shared by every process that opens it; without one they are kept in memory and spend
is not counted. Audit records, once durable, go to the plugins' audit sinks.

Observers (the server's metrics) see every call and decision record as it happens, with or
without a ledger: they count what happened on this process, not what was made durable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Protocol, TypeVar

import anyio

from rolegate.engine.spool import Spool, spool_dir_for
from rolegate.errors import LedgerError
from rolegate.ledger.base import Ledger, WorkStore, default_owner
from rolegate.ledger.memory import MemoryWork
from rolegate.logs import get_logger
from rolegate.policy import BudgetSnapshot, Policy
from rolegate.policy.budget import utcnow
from rolegate.policy.decision import NO_USAGE

T = TypeVar("T")
#: This process in the audit trail (``pid:host:uuid``), as its reservations name their owner:
#: `rolegate audit --process` picks one server's records (one MCP window over stdio).
PROCESS = default_owner()
#: The MCP session a tool call came in on (set by the server around each call; None for
#: a script or the stateless era): records name it, for `rolegate audit --session`.
SESSION: ContextVar[str | None] = ContextVar("rolegate_session", default=None)


def stamped(record: Mapping[str, object]) -> dict[str, object]:
    """An audit record with this process and, inside a tool call, its session."""
    session = SESSION.get()
    extra = {"process": PROCESS} if session is None else {"process": PROCESS, "session": session}
    return {**record, **extra}


SWEEP_EVERY_S = 60.0
log = get_logger()

Observer = Callable[[Mapping[str, object]], None]
"""Sees each event as it happens, with or without a ledger: the ``call`` record of every
settled provider call (``accounting.settle``; a call that produced nothing and was released
also carries ``released: True``) and the ``decision`` record of every route_task. Records
hold ids, names from the policy, codes and figures, never text. An observer runs on the
request path: it must be quick; if it raises, the error is logged and the call goes on."""


class UsageSource(Protocol):
    description: str

    def snapshot(self, policy: Policy, now: datetime) -> BudgetSnapshot: ...


class NoUsage:
    """Where spent/reserved amounts come from without a ledger: nowhere."""

    description = "none (no ledger configured; spend is not counted)"

    def snapshot(self, policy: Policy, now: datetime) -> BudgetSnapshot:
        return NO_USAGE


class AuditSink(Protocol):
    def deliver(self, record: Mapping[str, object]) -> None: ...


class Store:
    """Usage, decisions, stage claims, escalations and audit, off the event loop."""

    def __init__(
        self,
        policy: Policy,
        *,
        ledger: Ledger | None = None,
        clock: Callable[[], datetime] = utcnow,
        sinks: AuditSink | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.clock = clock
        self.sinks = sinks
        # Empty by default; the server adds its metrics (``server.app.build_server``).
        self.observers: list[Observer] = list(observers)
        self.usage: UsageSource = ledger if ledger is not None else NoUsage()
        self.work: WorkStore = ledger if ledger is not None else MemoryWork()
        self.spool = Spool(spool_dir_for(ledger)) if ledger is not None else None
        self._last_sweep = 0.0  # monotonic time dead reservations were last swept

    @staticmethod
    async def _off_loop(fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    async def snapshot(self) -> BudgetSnapshot:
        """Usage per budget line (nothing to read when the policy has no budgets)."""
        if not self.policy.budgets:
            return NO_USAGE
        usage, policy, now = self.usage, self.policy, self.clock()
        return await self._off_loop(lambda: usage.snapshot(policy, now))

    def sweep_due(self) -> bool:
        """True once a minute: time to mark reservations of dead processes as expired."""
        if time.monotonic() - self._last_sweep <= SWEEP_EVERY_S:
            return False
        self._last_sweep = time.monotonic()
        return True

    # -- decisions ----------------------------------------------------------
    async def put_decision(
        self, decision_id: str, record: dict[str, object], audit: dict[str, object]
    ) -> None:
        """Store the decision with its audit record in one transaction (ids, no text)."""
        work, now = self.work, self.clock()
        durable_audit = stamped(audit) if self.ledger is not None else None
        await self._off_loop(
            lambda: work.put_decision(
                decision_id=decision_id, record=record, now=now, audit=durable_audit
            )
        )
        if durable_audit is not None:
            self._deliver(durable_audit)
        self.observe(audit)

    async def get_decision(self, decision_id: str) -> dict[str, object] | None:
        work = self.work
        return await self._off_loop(lambda: work.get_decision(decision_id=decision_id))

    # -- tasks --------------------------------------------------------------
    async def current_model(self, task_id: str, role: str) -> str | None:
        work = self.work
        return await self._off_loop(lambda: work.current_model(task_id=task_id, role=role))

    async def escalation_step(self, task_id: str, role: str) -> int:
        work = self.work
        return await self._off_loop(lambda: work.escalation_step(task_id=task_id, role=role))

    async def was_escalated(self, task_id: str) -> bool:
        work = self.work
        return await self._off_loop(lambda: work.was_escalated(task_id=task_id))

    async def task_view(self, task_id: str) -> dict[str, Any] | None:
        work = self.work
        return await self._off_loop(lambda: work.task_view(task_id=task_id))

    async def claim_stage(
        self, task_id: str, stage: str, role: str, model: str, claim: str, lease_s: float
    ) -> None:
        work, now = self.work, self.clock()
        await self._off_loop(
            lambda: work.claim_stage(
                task_id=task_id,
                stage=stage,
                role=role,
                model=model,
                request_id=claim,
                now=now,
                lease_s=lease_s,
            )
        )

    async def release_stage(self, task_id: str, stage: str, claim: str) -> None:
        """Give a claim back; if the ledger cannot take it, the claim's lease expires."""
        work = self.work
        with anyio.CancelScope(shield=True), contextlib.suppress(LedgerError):
            await self._off_loop(
                lambda: work.release_stage(task_id=task_id, stage=stage, request_id=claim)
            )

    async def finish_stage(
        self,
        *,
        task_id: str,
        stage: str,
        claim: str,
        output_request_id: str,
        role: str,
        model: str,
        authority: str,
        contract_valid: bool | None,
    ) -> None:
        work, now = self.work, self.clock()
        await self._off_loop(
            lambda: work.finish_stage(
                task_id=task_id,
                stage=stage,
                request_id=claim,
                output_request_id=output_request_id,
                role=role,
                model=model,
                authority=authority,
                contract_valid=contract_valid,
                now=now,
            )
        )

    async def record_critique(
        self,
        *,
        task_id: str,
        stage: str | None,
        role: str,
        model: str,
        request_id: str,
        contract_valid: bool | None,
    ) -> None:
        work, now = self.work, self.clock()
        await self._off_loop(
            lambda: work.record_critique(
                task_id=task_id,
                stage=stage,
                role=role,
                model=model,
                request_id=request_id,
                contract_valid=contract_valid,
                now=now,
            )
        )

    async def record_escalation(
        self,
        *,
        task_id: str,
        role: str,
        step: int,
        provenance_id: str,
        from_model: str | None,
        to_model: str | None,
        fired: list[str],
        consent: str | None,
        audit: dict[str, object],
    ) -> bool:
        """Record a move up the ladder with its audit record, in one transaction; False
        (nothing written) when another call moved the role first."""
        work, now, policy_hash = self.work, self.clock(), self.policy.hash
        durable_audit = stamped(audit) if self.ledger is not None else None
        recorded = await self._off_loop(
            lambda: work.record_escalation(
                task_id=task_id,
                role=role,
                step=step,
                provenance_id=provenance_id,
                from_model=from_model,
                to_model=to_model,
                fired=fired,
                policy_hash=policy_hash,
                consent=consent,
                now=now,
                audit=durable_audit,
            )
        )
        if recorded and durable_audit is not None:
            self._deliver(durable_audit)
        return recorded

    # -- audit --------------------------------------------------------------
    async def audit(self, record: Mapping[str, object]) -> None:
        """Append an audit record durably (no ledger: nowhere), then hand it to the sinks."""
        ledger = self.ledger
        if ledger is None:
            return
        record = stamped(record)
        await self._off_loop(lambda: ledger.audit(record))
        self._deliver(record)

    def delivered(self, record: Mapping[str, object]) -> None:
        """A record the ledger wrote in another transaction (a call's settle): to the sinks."""
        self._deliver(record)

    def observe(self, record: Mapping[str, object]) -> None:
        """Hand an event to the observers (see ``Observer``); one that fails is logged by
        its error type only, and never fails the call."""
        for observer in self.observers:
            try:
                observer(record)
            except Exception as exc:  # noqa: BLE001 - an observer must never fail a paid call
                kind = record.get("kind")
                log.warning("observer_failed", kind=kind, error_type=type(exc).__name__)

    def _deliver(self, record: Mapping[str, object]) -> None:
        if self.sinks is not None:
            self.sinks.deliver(record)
