"""Group commit: concurrent ledger writes share one transaction and one fsync.

Why. Every write used to be its own durable transaction: on SQLite, BEGIN IMMEDIATE (one
writer for the whole file), a few statements, COMMIT with ``synchronous=FULL`` (one fsync
of the WAL). Under load the write lock became the bottleneck: each waiter polls for the
lock with short sleeps, the lock and the GIL change hands unfairly, and throughput *fell*
as callers were added (on a 2-core box, put_decision from 1 thread: ~3,300/s; from 64
threads: ~760/s with p99 over 600 ms).

Design: leader/follower group commit, in the callers' own threads. A write is a function of
an open transaction, submitted with ``GroupCommit.submit``, which queues it. The first
writer that finds no group running becomes the leader: it takes what is queued (at most
``MAX_GROUP``), the backend opens one write transaction, runs each write between a
SAVEPOINT and its RELEASE, and commits once; then the leader wakes every member with its
own outcome and hands leadership to the first write queued meanwhile, whose thread runs
the next group. While one group commits, the next fills up, so batching follows the load
with no timer: a lone write commits at once (no added latency when idle), and under load
one fsync covers many writes. There is no extra thread to start, stop or hand work to (a
dedicated writer thread would add a thread switch to every write), and a forked child
starts with an empty, idle committer.

What a caller sees is what it saw before:

* It returns only after the COMMIT of its group returned: committed and durable.
* The group behaves as its writes run one after another in queue order, each seeing the
  earlier ones, as they would have seen them committed; they just become durable together.
* A write that raises (a budget refusal, a reused id, a database error after which the
  transaction is still usable) is rolled back to its savepoint and raised to its own
  caller only; the rest of the group commits.
* When the transaction itself fails (BEGIN, COMMIT, or an error that made the database
  drop the transaction), nothing of the group is committed, and every member gets the
  LedgerError (BUDGET_UNAVAILABLE) a lone write would have got, a copy each.
* A write runs exactly once, in exactly one group, and is never retried: no record is
  lost without its caller being told, and none is written twice.

A group of one is simply the write's own transaction (no savepoint), as before.

Which writes are grouped is the backend's choice (``SqlLedger.group_scope``). SQLite groups
all of them: BEGIN IMMEDIATE serializes every writer of the file anyway, so one group at a
time per process costs no concurrency, and a group cannot deadlock. PostgreSQL groups none
by default: its sessions already share WAL flushes when they commit together, and a group
serialized on one connection measured slower (see ``postgres``); when asked to, it groups
only inserts that lock nothing but their own new keys (decisions, audit records,
critiques). Writes that lock budget lines, requests or stage rows keep their own
transaction there: in a shared one their locks would pile up until the group commits, and
two processes' groups could take them in opposite orders and deadlock.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from rolegate.errors import LedgerError

T = TypeVar("T")

#: Writes in one transaction at most: bounds how long one group holds the write lock.
MAX_GROUP = 128


class Member(Generic[T]):
    """One queued write and, once its group is done, its outcome."""

    __slots__ = ("done", "error", "settled", "value", "wake", "work")

    def __init__(self, work: Callable[[Any], T]) -> None:
        self.work = work
        self.wake = threading.Event()  # set when done, or when this member's thread leads
        self.done = False
        self.settled = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def succeed(self, value: T) -> None:
        self.value, self.error, self.settled = value, None, True

    def fail(self, error: BaseException) -> None:
        self.value, self.error, self.settled = None, error, True

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # T, set by succeed()


def _copy(error: BaseException) -> LedgerError:
    """A group's failure, one instance per member (threads never share a traceback)."""
    if isinstance(error, LedgerError):
        copied = LedgerError(error.message, code=error.code)
    else:  # not a database error the backend knows: still fail closed
        copied = LedgerError(f"the ledger write failed ({type(error).__name__}: {error})")
    copied.__cause__ = error.__cause__ if isinstance(error, LedgerError) else error
    return copied


_COMMITTERS: weakref.WeakSet[GroupCommit] = weakref.WeakSet()


class GroupCommit:
    """Runs submitted writes in groups; ``run`` executes one group (see the module doc).

    ``run(members)`` must run every member's work in one transaction, record each one's
    outcome (``succeed``/``fail``) and return only once that transaction committed, or
    raise (the whole group then fails, whatever was recorded).
    """

    def __init__(
        self, run: Callable[[Sequence[Member[Any]]], None], *, max_group: int = MAX_GROUP
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be >= 1")
        self._run = run
        self._max_group = max_group
        self._reset()
        _COMMITTERS.add(self)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._queue: deque[Member[Any]] = deque()
        self._leading = False  # a group is running, or its leader is about to take one
        self.groups = 0  # groups committed or failed: for tests and benchmarks
        self.writes = 0

    def submit(self, work: Callable[[Any], T]) -> T:
        """Run ``work(tx)`` in the next group; its result once that group committed."""
        member: Member[T] = Member(work)
        with self._mutex:
            self._queue.append(member)
            lead = not self._leading
            self._leading = True
        if not lead:
            member.wake.wait()
        if not member.done:
            self._lead()  # first in line: this thread runs the next group
        return member.outcome()

    def waiting(self) -> int:
        """Writes queued for the next group."""
        with self._mutex:
            return len(self._queue)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Queue every write until the block ends, then run them as groups (for tests)."""
        with self._mutex:
            if self._leading:
                raise RuntimeError("a group is running; pause an idle committer")
            self._leading = True
        try:
            yield
        finally:
            self._hand_over()

    def _lead(self) -> None:
        with self._mutex:
            take = min(len(self._queue), self._max_group)
            group = [self._queue.popleft() for _ in range(take)]
            self.groups += 1
            self.writes += take
        try:
            self._run(group)
            for member in group:
                if not member.settled:  # never answer None for a write that did not run
                    member.fail(LedgerError("the ledger write was not run; retry"))
        except BaseException as exc:
            for member in group:
                member.fail(_copy(exc))
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like: the leader's thread stops here
        finally:
            for member in group:
                member.done = True
                member.wake.set()
            self._hand_over()

    def _hand_over(self) -> None:
        with self._mutex:
            if self._queue:
                self._queue[0].wake.set()  # not done: that thread leads the next group
            else:
                self._leading = False


def _after_fork() -> None:
    # The child has one thread; writes queued by the parent's other threads are not its own.
    for committer in list(_COMMITTERS):
        committer._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
