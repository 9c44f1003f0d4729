"""The Ledger interface on top of a backend's transactions, shared by SQLite and PostgreSQL.

The rules themselves are SQL functions of one open transaction (``Tx``): the budget's in
``_budget_sql``, the work store's in ``_work_sql``, the quality store's in ``_quality_sql``.
The backends differ only in how they serialize writers on a budget line: SQLite takes the
database write lock (``BEGIN IMMEDIATE``), PostgreSQL locks one row per line, in line-id
order.

Lock order, the same everywhere so that transactions cannot deadlock:
request row -> budget line rows (by id) -> charge rows, and for the work store
stage claim row -> stage owner row (see ``_work_sql``).

Durable writes go through group commit (``_group``, which explains the design): writes
arriving together from many threads share one transaction and one fsync, each caller
still answered with its own outcome, and only once its write is committed. Which writes
are grouped is the backend's ``group_scope``: ``all`` (SQLite), ``inserts`` (only writes
that lock nothing but the new keys they insert, ``locks_rows=False``: decisions, audit
records, critiques; grouped row locks could deadlock two processes' groups) or ``none``
(each write its own transaction).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal, TypeVar

from rolegate.ledger._budget_sql import (
    check_amounts,
    do_audit,
    do_commit,
    do_recent_audit,
    do_release,
    do_reserve,
    do_sweep,
    usage,
)
from rolegate.ledger._group import GroupCommit, Member
from rolegate.ledger._quality_sql import SqlQualityStore
from rolegate.ledger._tx import GroupTx, Tx
from rolegate.ledger._work_ledger import SqlWorkStore
from rolegate.ledger.base import HasBudgets
from rolegate.ledger.checks import audit_json
from rolegate.ledger.records import unique_lines
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import BudgetSnapshot

__all__ = ["GroupScope", "GroupTx", "SqlLedger", "Tx"]

T = TypeVar("T")
#: Which writes share group transactions (see the module docstring).
GroupScope = Literal["all", "inserts", "none"]


class SqlLedger(SqlWorkStore, SqlQualityStore, ABC):
    """The Ledger interface on top of a backend's transactions (see ``base.Ledger``)."""

    description: str

    def __init__(self, *, group_scope: GroupScope = "all") -> None:
        self.group_scope: GroupScope = group_scope
        self._group = GroupCommit(self._run_group)

    @property
    def group_commit(self) -> GroupCommit:
        """The group committer of this ledger (its counters; ``paused`` for tests)."""
        return self._group

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction that commits on exit, rolls back on any exception, and turns
        database errors into LedgerError (BUDGET_UNAVAILABLE)."""

    @abstractmethod
    def _group_transaction(self) -> AbstractContextManager[GroupTx]:
        """The write transaction one group runs in; like ``_transaction(write=True)``."""

    @abstractmethod
    def _database_error(self, exc: Exception) -> Exception:
        """What a lone write's transaction would have raised for ``exc``: LedgerError for
        a database error, ``exc`` itself otherwise."""

    @abstractmethod
    def _prepare_lines(self, line_ids: Sequence[str]) -> None:
        """Run before a reservation's transaction, outside it."""

    @abstractmethod
    def close(self) -> None: ...

    # -- transactions ----------------------------------------------------------------------

    def _read(self, work: Callable[[Tx], T]) -> T:
        with self._transaction(write=False) as tx:
            return work(tx)

    def _write(self, work: Callable[[Tx], T], *, locks_rows: bool = True) -> T:
        scope = self.group_scope
        if scope == "all" or (scope == "inserts" and not locks_rows):
            return self._group.submit(work)
        with self._transaction(write=True) as tx:
            return work(tx)

    def _run_group(self, members: Sequence[Member[Any]]) -> None:
        """One transaction for the whole group; each member in its own savepoint."""
        if len(members) == 1:
            # Alone: its own transaction, exactly as a lone write always ran (no savepoint).
            member = members[0]
            try:
                with self._group_transaction() as tx:
                    member.succeed(member.work(tx))
            except Exception as exc:  # noqa: BLE001 - its own refusal, or its commit's LedgerError
                member.fail(exc)
            return
        with self._group_transaction() as tx:
            for member in members:
                tx.savepoint()
                try:
                    value = member.work(tx)
                except Exception as exc:
                    if not tx.undo():
                        raise  # the transaction is gone: the whole group fails with it
                    member.fail(self._database_error(exc))
                else:
                    tx.release()
                    member.succeed(value)

    # -- the budget ledger (see ``base.Ledger``) -------------------------------------------

    def snapshot(self, policy: HasBudgets, now: datetime) -> BudgetSnapshot:
        lines = unique_lines(policy.budgets)
        return self._read(lambda tx: BudgetSnapshot(usage(tx, lines, now)))

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
        check_amounts(cost_micro, tokens)
        self._prepare_lines(sorted({line.id for line in lines}))
        self._write(
            lambda tx: do_reserve(
                tx,
                request_id=request_id,
                owner=owner,
                lines=lines,
                cost_micro=cost_micro,
                tokens=tokens,
                now=now,
                lease_s=lease_s,
            )
        )

    def commit(
        self,
        request_id: str,
        *,
        cost_micro: int,
        tokens: int,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        check_amounts(cost_micro, tokens)
        encoded = None if audit is None else audit_json(audit)

        def work(tx: Tx) -> None:
            if do_commit(tx, request_id, cost_micro=cost_micro, tokens=tokens, now=now):
                do_audit(tx, encoded)  # a repeated commit records nothing twice

        self._write(work)

    def release(
        self, request_id: str, now: datetime, *, audit: Mapping[str, object] | None = None
    ) -> None:
        encoded = None if audit is None else audit_json(audit)

        def work(tx: Tx) -> None:
            do_release(tx, request_id, now)
            do_audit(tx, encoded)

        self._write(work)

    def sweep(self, now: datetime) -> int:
        return self._write(lambda tx: do_sweep(tx, now))

    def audit(self, record: Mapping[str, object]) -> None:
        encoded = audit_json(record)  # refuse text before taking any lock
        self._write(lambda tx: do_audit(tx, encoded), locks_rows=False)

    def recent_audit(self, limit: int) -> list[dict[str, object]]:
        return [record for _, record in self.recent_audit_rows(limit)]

    def recent_audit_rows(self, limit: int) -> list[tuple[int, dict[str, object]]]:
        return self._read(lambda tx: do_recent_audit(tx, limit))
