"""A ledger in PostgreSQL, for budgets shared by rolegate processes on several machines.

Writers on a budget line serialize on one row per line in ``rolegate_lines``, locked with
SELECT ... FOR UPDATE in line-id order (so two reservations touching the same lines can
never deadlock). In READ COMMITTED each statement after the lock sees every charge that
the previous lock holder committed, so the check and the insert cannot overspend.

Group commit (see ``_group``) is off by default here: every write is its own transaction
on its thread's connection, and PostgreSQL itself already lets the commits of concurrent
sessions share one WAL flush. A client-side group runs on one connection, one round trip
per statement, serialized: with 16-64 writer threads on a local server it was 20-30%
slower than the sessions committing in parallel (a network's longer round trips would
widen the gap). ``PostgresLedger(url, group_commit=True)`` groups the writes that lock
nothing but the new keys they insert (decisions, audit records, critiques); never the
row-locking ones, whose locks, held until a group commits, could deadlock two processes'
groups.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from rolegate.errors import LedgerError
from rolegate.ledger import migrations
from rolegate.ledger._engine import SqlLedger

CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 30  # like SQLite's busy_timeout: wait this long for a line, then fail closed
# Serializes migrations: concurrent CREATE TABLE IF NOT EXISTS can fail in PostgreSQL.
_SCHEMA_LOCK_KEY = 0x726F6C6567617465  # "rolegate"


def redact(url: str) -> str:
    """The URL without its password (in the authority or as a query parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = "&".join(
        item for item in parts.query.split("&") if item and item.split("=")[0] != "password"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _idle_and_open(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    """False for a connection the server has closed (restart, failover, terminated session).

    Between our transactions the server has nothing to say, so a readable socket means it
    sent its goodbye; checking first spares the next admission a needless failure.
    """
    if conn.closed or conn.broken:
        return False
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return not readable


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"


@dataclass(frozen=True, slots=True)
class _Held:
    pid: int
    conn: psycopg.Connection[tuple[Any, ...]]


class _PgTx:
    for_update = " FOR UPDATE"

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self._conn = conn
        self._cur = conn.cursor()
        self._lock: list[str] = []

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._execute(sql, params)
        return self._cur.fetchall()

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        self._execute(sql, params)
        return self._cur.rowcount

    def savepoint(self) -> None:
        self._cur.execute("SAVEPOINT rolegate_write")

    def release(self) -> None:
        self._cur.execute("RELEASE SAVEPOINT rolegate_write")

    def undo(self) -> bool:
        self._lock = []
        if self._conn.closed or self._conn.broken:
            return False
        try:  # an error aborts the whole transaction; rolling back to the savepoint revives it
            self._cur.execute("ROLLBACK TO SAVEPOINT rolegate_write")
            self._cur.execute("RELEASE SAVEPOINT rolegate_write")
        except psycopg.Error:
            return False
        return True

    def lock_lines(self, line_ids: Sequence[str]) -> None:
        # Sent together with the next statement (pipeline mode): one round trip fewer while
        # the locks are held. The server still runs them in order, so the next statement's
        # snapshot is taken after the locks are granted and sees the previous holder's rows.
        self._lock = sorted(line_ids)

    def _execute(self, sql: str, params: Sequence[object]) -> None:
        sql = sql.replace("?", "%s")
        if not self._lock:
            self._cur.execute(sql, params)
            return
        wanted, self._lock = self._lock, []
        locker = self._conn.cursor()
        # ORDER BY sits below the row-locking step in the plan: rows are locked in id order.
        lock_sql = (
            "SELECT line_id FROM rolegate_lines WHERE line_id = ANY(%s) ORDER BY line_id FOR UPDATE"
        )
        if psycopg.Pipeline.is_supported():
            with self._conn.pipeline():
                locker.execute(lock_sql, [wanted])
                self._cur.execute(sql, params)
        else:
            locker.execute(lock_sql, [wanted])
            self._cur.execute(sql, params)
        if len(locker.fetchall()) != len(wanted):
            raise LedgerError(
                "budget line rows are missing from rolegate_lines: the ledger schema was "
                "changed while in use; restart rolegate"
            )


class PostgresLedger(SqlLedger):
    """A ledger in a PostgreSQL database, one connection per thread."""

    def __init__(self, url: str, *, group_commit: bool = False) -> None:
        self._url = url
        self.description = redact(url)
        try:
            options = str(conninfo_to_dict(url).get("options") or "")
        except psycopg.Error as exc:
            raise LedgerError(f"bad PostgreSQL ledger URL {self.description}: {exc}") from exc
        # A URL may set its own, e.g. options=-c%20lock_timeout%3D500 (milliseconds).
        self._settings = [
            f"SET {name} = '{seconds}s'"
            for name, seconds in (
                ("lock_timeout", LOCK_TIMEOUT_S),
                ("statement_timeout", 2 * LOCK_TIMEOUT_S),
            )
            if name not in options
        ]
        self._local = threading.local()
        self._opened: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._guard = threading.Lock()
        self._known_lines: set[str] = set()
        self._closed = False
        self._create_schema()
        super().__init__(group_scope="inserts" if group_commit else "none")

    def _create_schema(self) -> None:
        """Apply the missing migrations (see ``migrations``), or nothing when none is missing.

        The check reads ``rolegate_migrations`` only, so a role with DML rights alone may use
        a schema an administrator migrated (DDL needs CREATE rights). The migrations run
        under a transaction-scoped advisory lock: a process opening the database at the
        same time waits, then re-reads the list (READ COMMITTED) and finds them applied.
        """
        missing: list[str] = []
        try:
            with self._transaction(write=True) as tx:
                missing = [m.name for m in migrations.pending(tx, "postgres")]
                if not missing:
                    return
                tx.run("SELECT pg_advisory_xact_lock(?)", [_SCHEMA_LOCK_KEY])
                migrations.migrate(tx, "postgres")
        except LedgerError as exc:
            if missing and isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                raise LedgerError(
                    f"the ledger {self.description} needs schema migration(s) "
                    f"{', '.join(missing)}, and this role may not create tables: open it "
                    "once as the schema's owner (any rolegate command that opens the "
                    "ledger applies them), then retry"
                ) from exc
            raise

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        for setting in self._settings:  # session-wide: autocommit, so they persist
            conn.execute(setting)  # built from the constants above only
        return conn

    def _conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._closed:
            raise LedgerError(f"the ledger {self.description} was closed")
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid():
            if _idle_and_open(held.conn):
                return held.conn
            self._forget(held.conn)
        # A connection inherited through fork() belongs to the parent: drop it, never use it.
        conn = self._connect()
        self._local.held = _Held(os.getpid(), conn)
        with self._guard:
            self._opened.append(conn)
        return conn

    def _forget(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self._local.held = None
        with self._guard:
            if conn in self._opened:
                self._opened.remove(conn)
        conn.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_PgTx]:
        try:
            conn = self._conn()
            try:
                with conn.transaction():
                    yield _PgTx(conn)
            finally:
                if conn.broken:
                    # Fail this call closed; the next one opens a fresh connection.
                    self._forget(conn)
        except psycopg.Error as exc:
            raise self._unusable(exc) from exc

    def _group_transaction(self) -> AbstractContextManager[_PgTx]:
        return self._transaction(write=True)

    def _database_error(self, exc: Exception) -> Exception:
        if not isinstance(exc, psycopg.Error):
            return exc
        error = self._unusable(exc)
        error.__cause__ = exc
        return error

    def _unusable(self, exc: psycopg.Error) -> LedgerError:
        return LedgerError(
            f"the budget ledger {self.description} cannot be used "
            f"({type(exc).__name__}: {_first_line(exc)}): check that PostgreSQL is "
            "running and reachable and that this role may write the rolegate_* tables; "
            "admission fails closed until then"
        )

    def _prepare_lines(self, line_ids: Sequence[str]) -> None:
        # Created in their own short transaction, before any lock is held, so the lock order
        # inside reservations stays strictly by line id.
        missing = [line_id for line_id in line_ids if line_id not in self._known_lines]
        if not missing:
            return
        with self._transaction(write=True) as tx:
            for line_id in sorted(missing):
                tx.run(
                    "INSERT INTO rolegate_lines (line_id) VALUES (?) ON CONFLICT DO NOTHING",
                    [line_id],
                )
        self._known_lines.update(missing)

    def close(self) -> None:
        self._closed = True
        with self._guard:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
