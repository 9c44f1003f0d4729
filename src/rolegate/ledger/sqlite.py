"""The default ledger: one SQLite file shared by every rolegate process on the machine.

WAL lets readers run while one writer writes; synchronous=FULL makes a committed
reservation survive a power cut; every write starts with BEGIN IMMEDIATE so that it takes
the write lock up front, where busy_timeout applies (a deferred transaction that upgrades
later can fail with SQLITE_BUSY at once, whatever the timeout).

Every write goes through group commit (see ``_group``): the writes of many threads share
one BEGIN IMMEDIATE ... COMMIT, on one writer connection, so one fsync covers them all.
Reads use a connection per thread and never wait for writers (WAL).
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rolegate.errors import LedgerError
from rolegate.ledger import migrations
from rolegate.ledger._engine import SqlLedger

DEFAULT_BUSY_TIMEOUT_S = 30.0


def default_path() -> Path:
    """$XDG_DATA_HOME/rolegate/ledger.sqlite3, else ~/.local/share/rolegate/ledger.sqlite3."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rolegate" / "ledger.sqlite3"


@dataclass(frozen=True, slots=True)
class _Held:
    """A thread's connection, valid only in the process and for the file it was opened in."""

    pid: int
    file: tuple[int, int]  # (st_dev, st_ino)
    conn: sqlite3.Connection


class _Slot:
    """Where a connection is kept: per thread (readers), or the one writer connection."""

    held: _Held | None = None


class _SqliteTx:
    # The whole database is write-locked by BEGIN IMMEDIATE: no row locks to take.
    for_update = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT rolegate_write")

    def release(self) -> None:
        self._conn.execute("RELEASE rolegate_write")

    def undo(self) -> bool:
        # SQLite rolls the whole transaction back by itself on some errors (I/O, full disk).
        if not self._conn.in_transaction:
            return False
        try:
            self._conn.execute("ROLLBACK TO rolegate_write")
            self._conn.execute("RELEASE rolegate_write")
        except sqlite3.Error:
            return False
        return True

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def lock_lines(self, line_ids: Sequence[str]) -> None:
        return None


class SqliteLedger(SqlLedger):
    """A ledger in one SQLite file; safe from many threads and processes at once."""

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ) -> None:
        self.path = Path(path).absolute()
        self.description = f"sqlite://{self.path}"
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._writer = _Slot()  # used by the leader of the running group only
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._closed = False
        self._create()
        super().__init__()

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the ledger directory {self.path.parent} ({exc.strerror}); "
                "make it writable or choose another path with --ledger sqlite:///PATH"
            ) from exc
        try:
            conn = self._connect("rwc")
            try:
                # journal_mode cannot change inside a transaction; it persists in the file.
                mode = self._journal_mode_wal(conn)
                if str(mode).lower() != "wal":
                    raise LedgerError(
                        f"{self.description} cannot use WAL mode (got {mode!r}); put the ledger "
                        "on a local file system"
                    )
                # The missing migrations, in order, in one write transaction: a process
                # opening the file at the same time waits, then finds them applied.
                self._begin_immediate(conn)
                try:
                    migrations.migrate(_SqliteTx(conn), "sqlite")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _journal_mode_wal(self, conn: sqlite3.Connection) -> object:
        """PRAGMA journal_mode=WAL, retried while busy until busy_timeout.

        Processes opening a new file at once race to switch it to WAL, and the loser gets
        SQLITE_BUSY at once: SQLite does not call its busy handler for that switch.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.001
        while True:
            try:
                return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.05)

    def _connect(self, mode: str) -> sqlite3.Connection:
        # mode=rw after the first open: a ledger file that vanished must not be silently
        # recreated empty, which would forget everything already spent.
        uri = f"file:{quote(str(self.path))}?mode={mode}"
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self._busy_timeout_s,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # used by one thread; close() may run on another
        )
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _conn(self, slot: _Slot | None = None) -> sqlite3.Connection:
        """This thread's connection (or ``slot``'s), reopened when the file was replaced."""
        slot = slot if slot is not None else self._thread_slot()
        if self._closed:
            raise LedgerError(f"the ledger {self.description} was closed")
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise LedgerError(
                f"the ledger file {self.path} is gone or unreadable ({exc.strerror}); restore "
                "it, or start with another --ledger; admission fails closed until then"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise LedgerError(
                f"the ledger path {self.path} is not a regular file; restore the ledger file, "
                "or start with another --ledger; admission fails closed until then"
            )
        held = slot.held
        file = (st.st_dev, st.st_ino)
        if held is not None and held.pid == os.getpid() and held.file == file:
            return held.conn
        if held is not None and held.pid == os.getpid():
            self._forget(held.conn, slot)  # the file was replaced: never write the old inode
        # A connection inherited through fork() is dropped, not closed: it is the parent's.
        try:
            conn = self._connect("rw")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        slot.held = _Held(os.getpid(), file, conn)
        with self._guard:
            self._opened.append(conn)
        return conn

    def _thread_slot(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot()
        return slot

    def _prepare_lines(self, line_ids: Sequence[str]) -> None:
        return None  # nothing to prepare: BEGIN IMMEDIATE locks the whole database

    def _forget(self, conn: sqlite3.Connection, slot: _Slot) -> None:
        if slot.held is not None and slot.held.conn is conn:
            slot.held = None
        with self._guard:
            if conn in self._opened:
                self._opened.remove(conn)
        with suppress(sqlite3.Error):  # it is being discarded because it is broken
            conn.close()

    def _transaction(self, *, write: bool) -> AbstractContextManager[_SqliteTx]:
        return self._on(self._thread_slot(), write=write)

    def _group_transaction(self) -> AbstractContextManager[_SqliteTx]:
        return self._on(self._writer, write=True)

    @contextmanager
    def _on(self, slot: _Slot, *, write: bool) -> Iterator[_SqliteTx]:
        conn = self._conn(slot)
        try:
            if write:
                self._begin_immediate(conn)
            else:
                conn.execute("BEGIN")
            try:
                yield _SqliteTx(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn, slot)
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _database_error(self, exc: Exception) -> Exception:
        if not isinstance(exc, sqlite3.Error):
            return exc
        error = self._error(exc)
        error.__cause__ = exc
        return error

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """Take the write lock, polling with short sleeps until busy_timeout.

        SQLite's own busy handler backs off to 100 ms sleeps, so a waiting process keeps
        losing the lock to luckier ones: with 8 busy processes single admissions stalled
        for seconds. Polling every 0.1-2 ms keeps the wait close to the queue's length.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.0001
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                    if not busy or time.monotonic() >= deadline:
                        raise
                else:
                    return
                time.sleep(delay * random.uniform(0.5, 1.5))  # jitter: no lockstep retries
                delay = min(delay * 2, 0.002)
        finally:
            # Other statements keep SQLite's handler (e.g. a reader meeting WAL recovery).
            conn.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout_s * 1000)}")

    def _rollback(self, conn: sqlite3.Connection, slot: _Slot) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._forget(conn, slot)  # cannot roll back: do not reuse it

    def _error(self, exc: sqlite3.Error) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            hint = (
                f"another process held it locked for over {self._busy_timeout_s:g} s; "
                "retry, or find the process that keeps it locked"
            )
        elif "readonly" in text or "read-only" in text:
            hint = "make the file, its -wal and -shm files and its directory writable"
        elif "disk" in text or "full" in text:
            hint = "the disk is full, read-only or failing; free space or fix the file system"
        elif "unable to open" in text:
            hint = "check that the path exists, is a file and is writable"
        else:
            hint = "check the file and the disk, or start with another --ledger"
        return LedgerError(
            f"the budget ledger {self.description} cannot be used ({text}): {hint}; "
            "admission fails closed until then"
        )

    def close(self) -> None:
        self._closed = True
        with self._guard:
            opened, self._opened = self._opened, []
        for conn in opened:
            with suppress(sqlite3.Error):  # best effort: the process may be exiting
                conn.close()
