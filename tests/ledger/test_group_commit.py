"""Group commit: concurrent writes share one transaction, each caller gets its own outcome.

Groups are made deterministic by pausing the committer (``paused``): the writes started
meanwhile queue up, and the first of them leads them all as one group when the pause ends.
Nothing here asserts on time; the waits only guard against a hang.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from rolegate.errors import Code, LedgerError, RequestError
from rolegate.ledger import Ledger, MemoryWork, SqliteLedger, WorkStore
from rolegate.ledger._engine import SqlLedger
from rolegate.ledger._group import GroupCommit, Member
from tests.ledger import workers
from tests.ledger.backends import Backend, SqliteBackend
from tests.ledger.stages import CTX, run_processes
from tests.ledger.workers import T0, line

CAP = line("global:*:day", usd_micro=10**12)
GUARD_S = 120  # only ever reached when something hangs


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.001)


def open_grouped(backend: Backend) -> Ledger:
    """The backend's ledger with group commit on (PostgreSQL's is off unless asked for)."""
    if isinstance(backend, SqliteBackend):
        return backend.open()
    from rolegate.ledger.postgres import PostgresLedger

    return PostgresLedger(backend.url, group_commit=True)


@pytest.fixture
def grouped(backend: Backend) -> Iterator[Ledger]:
    opened = open_grouped(backend)
    try:
        yield opened
    finally:
        opened.close()


def committer(ledger: Ledger) -> GroupCommit:
    found: GroupCommit = ledger.group_commit  # type: ignore[attr-defined]
    return found


def in_one_group(ledger: Ledger, calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run ``calls`` in threads, queued while the committer is paused: one group. Each
    call's result, or the exception it raised."""
    group = committer(ledger)
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            outcomes[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome under test, whatever it is
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    groups = group.groups
    with group.paused():
        for thread in threads:
            thread.start()
        wait_until(lambda: group.waiting() == len(calls), f"{len(calls)} queued writes")
    for thread in threads:
        thread.join()
    assert group.groups == groups + 1  # they really shared one transaction
    return outcomes


def decide(ledger: Ledger, decision_id: str, **audit: object) -> Callable[[], None]:
    record = {"kind": "decision", "decision_id": decision_id, **audit}
    return lambda: ledger.put_decision(decision_id, {"n": 1}, now=T0, audit=record)


def audit_count(ledger: Ledger) -> Counter[str]:
    return Counter(str(r.get("decision_id")) for r in ledger.recent_audit(1_000_000))


# -- the committer alone --------------------------------------------------------------------


def test_groups_follow_the_queue_and_are_capped() -> None:
    seen: list[list[int]] = []

    def run(members: Sequence[Member[Any]]) -> None:
        seen.append([m.work(None) for m in members])
        for m in members:
            m.succeed(m.work(None))

    group = GroupCommit(run, max_group=2)
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        results[i] = group.submit(lambda _: i)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(5)]
    with group.paused():
        for queued, thread in enumerate(threads, 1):  # one at a time: a known queue order
            thread.start()
            wait_until(partial(_queued, group, queued), "the queue to grow")
    for thread in threads:
        thread.join()
    assert seen == [[0, 1], [2, 3], [4]]
    assert results == {i: i for i in range(5)}
    assert (group.groups, group.writes) == (3, 5)


def _queued(group: GroupCommit, n: int) -> bool:
    return group.waiting() == n


def test_a_failed_group_fails_every_member_and_the_next_group_runs() -> None:
    attempts: list[int] = []

    def run(members: Sequence[Member[Any]]) -> None:
        attempts.append(len(members))
        for m in members:
            m.succeed("done")
        if len(attempts) == 1:
            raise LedgerError("the ledger cannot be used (disk I/O error): fails closed")

    group = GroupCommit(run)
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            group.submit(lambda _: "x")
        except LedgerError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(3)]
    with group.paused():
        for thread in threads:
            thread.start()
        wait_until(lambda: group.waiting() == 3, "three queued writes")
    for thread in threads:
        thread.join()
    # Every member failed with the group, each with its own instance of the same error.
    assert [str(e) for e in errors] == [
        "BUDGET_UNAVAILABLE: the ledger cannot be used (disk I/O error): fails closed"
    ] * 3
    assert len({id(e) for e in errors}) == 3
    assert group.submit(lambda _: "after") == "done"  # not wedged


# -- on the ledgers -------------------------------------------------------------------------


def test_many_threads_writing_at_once_lose_and_duplicate_nothing(grouped: Ledger) -> None:
    ledger = grouped
    threads, count = 16, 30
    errors: list[str] = []

    def write(t: int) -> None:
        for j in range(count):
            key = f"t{t}-{j}"
            try:
                decide(ledger, f"dec-{key}")()
                ledger.audit({"kind": "note", "decision_id": f"note-{key}"})
                ledger.reserve(request_id=f"req-{key}", owner="t", lines=[CAP], cost_micro=10,
                               tokens=1, now=T0, lease_s=3600)  # fmt: skip
                ledger.commit(f"req-{key}", cost_micro=7, tokens=1, now=T0)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(f"{key}: {exc!r}")

    pool = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    keys = [f"t{t}-{j}" for t in range(threads) for j in range(count)]
    assert all(ledger.get_decision(f"dec-{key}") == {"n": 1} for key in keys)
    audited = audit_count(ledger)
    assert all(audited[f"dec-{key}"] == 1 and audited[f"note-{key}"] == 1 for key in keys)
    assert sum(audited.values()) == 2 * len(keys)
    spent = ledger.snapshot(workers.Budgets((CAP,)), T0).get(CAP.id)
    assert spent is not None
    assert (spent.spent_micro, spent.reserved_micro) == (7 * len(keys), 0)
    group = committer(ledger)
    per_key = 4 if isinstance(ledger, SqliteLedger) else 2  # PostgreSQL: the inserts only
    assert group.writes == per_key * len(keys)  # each write ran once, in exactly one group


def test_a_refused_write_fails_alone_and_the_rest_of_its_group_commits(grouped: Ledger) -> None:
    ledger = grouped
    decide(ledger, "dec-taken")()
    outcomes = in_one_group(
        ledger, [decide(ledger, "dec-a"), decide(ledger, "dec-taken"), decide(ledger, "dec-b")]
    )
    assert outcomes[0::2] == [None, None]
    assert isinstance(outcomes[1], RequestError)
    assert outcomes[1].code == Code.INVALID_ARGUMENT
    assert ledger.get_decision("dec-a") == ledger.get_decision("dec-b") == {"n": 1}
    assert audit_count(ledger) == Counter({"dec-taken": 1, "dec-a": 1, "dec-b": 1})


def _poison_sqlite(backend: SqliteBackend, *, at_commit: bool) -> None:
    if at_commit:  # a deferred foreign key, checked at COMMIT (with foreign_keys on)
        backend.execute(
            "CREATE TABLE poison_parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE poison_child (ref INTEGER REFERENCES poison_parent (id)"
            " DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER poison AFTER INSERT ON rolegate_audit"
            " WHEN NEW.record LIKE '%\"poison\"%' BEGIN INSERT INTO poison_child VALUES (1); END",
        )
    else:
        backend.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON rolegate_audit"
            " WHEN NEW.record LIKE '%\"poison\"%'"
            " BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        )


def _poison_postgres(backend: Backend, *, at_commit: bool) -> None:
    backend.execute(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.record LIKE '%\"poison\"%' THEN RAISE EXCEPTION 'refused by a test trigger';"
        " END IF; RETURN NEW; END $$",
        "CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON rolegate_audit"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION poison()"
        if at_commit
        else "CREATE TRIGGER poison BEFORE INSERT ON rolegate_audit"
        " FOR EACH ROW EXECUTE FUNCTION poison()",
    )


class _ForeignKeysOn(SqliteLedger):
    """Deferred foreign keys are only checked on connections that turn them on."""

    def _connect(self, mode: str) -> sqlite3.Connection:
        conn = super()._connect(mode)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn


def poisoned(backend: Backend, *, at_commit: bool) -> Ledger:
    """A ledger whose database refuses any audit record carrying ``"poison"``: at COMMIT
    (``at_commit``), or in the INSERT itself."""
    if isinstance(backend, SqliteBackend):
        backend.open().close()  # the schema first
        _poison_sqlite(backend, at_commit=at_commit)
        return _ForeignKeysOn(backend.path)
    ledger = open_grouped(backend)
    _poison_postgres(backend, at_commit=at_commit)
    return ledger


def test_a_failed_commit_reaches_every_caller_of_its_group_and_no_other(backend: Backend) -> None:
    ledger = poisoned(backend, at_commit=True)
    try:
        before = in_one_group(ledger, [decide(ledger, f"dec-before-{i}") for i in range(3)])
        failed = in_one_group(
            ledger,
            [decide(ledger, "dec-x"), decide(ledger, "dec-poisoned", poison=True),
             decide(ledger, "dec-y"), lambda: ledger.audit({"kind": "note", "decision_id": "z"})],
        )  # fmt: skip
        after = in_one_group(ledger, [decide(ledger, f"dec-after-{i}") for i in range(3)])
        assert before == after == [None, None, None]
        assert all(isinstance(e, LedgerError) for e in failed), failed
        assert {e.code for e in failed if isinstance(e, LedgerError)} == {Code.BUDGET_UNAVAILABLE}
        assert len({str(e) for e in failed}) == 1  # the same error for all, as a lone write's
        assert len({id(e) for e in failed}) == 4  # but one instance each
        for name in ("dec-x", "dec-poisoned", "dec-y"):
            assert ledger.get_decision(name) is None  # nothing of the failed group is kept
        stored = [f"dec-{when}-{i}" for when in ("before", "after") for i in range(3)]
        assert all(ledger.get_decision(name) == {"n": 1} for name in stored)
        assert audit_count(ledger) == Counter(stored)
    finally:
        ledger.close()


def test_a_database_error_inside_one_write_fails_only_that_write(backend: Backend) -> None:
    ledger = poisoned(backend, at_commit=False)
    try:
        outcomes = in_one_group(
            ledger,
            [decide(ledger, "dec-a"), decide(ledger, "dec-poisoned", poison=True),
             decide(ledger, "dec-b")],
        )  # fmt: skip
        assert outcomes[0::2] == [None, None]
        refused = outcomes[1]
        assert isinstance(refused, LedgerError), refused
        assert refused.code == Code.BUDGET_UNAVAILABLE
        assert "refused by a test trigger" in refused.message
        assert refused.__cause__ is not None  # the database's own error, as before
        # Its decision went with its audit record (one savepoint); the others committed.
        assert ledger.get_decision("dec-poisoned") is None
        assert ledger.get_decision("dec-a") == ledger.get_decision("dec-b") == {"n": 1}
        assert audit_count(ledger) == Counter({"dec-a": 1, "dec-b": 1})
    finally:
        ledger.close()


def test_row_locking_writes_are_grouped_on_sqlite_only(grouped: Ledger) -> None:
    ledger = grouped
    group = committer(ledger)
    done = threading.Event()

    def reserve() -> None:
        ledger.reserve(request_id="r1", owner="t", lines=[CAP], cost_micro=1, tokens=1,
                       now=T0, lease_s=60)  # fmt: skip
        done.set()

    thread = threading.Thread(target=reserve)
    with group.paused():
        thread.start()
        if isinstance(ledger, SqliteLedger):
            wait_until(lambda: group.waiting() == 1, "the reservation to queue")
            assert not done.is_set()
        else:
            wait_until(done.is_set, "the reservation, in its own transaction")
    thread.join()
    assert done.is_set()


def test_postgresql_groups_nothing_unless_asked(pg_backend: Backend) -> None:
    ledger = pg_backend.open()
    try:
        with committer(ledger).paused():  # no write waits for it
            decide(ledger, "dec-a")()
            ledger.audit({"kind": "note"})
        assert committer(ledger).writes == 0
        assert ledger.get_decision("dec-a") == {"n": 1}
    finally:
        ledger.close()


def test_two_processes_writing_at_once_on_one_ledger(backend: Backend) -> None:
    backend.open().close()  # created and migrated before the race starts
    processes, threads, count = 2, 8, 25
    barrier = CTX.Barrier(processes)
    results = CTX.Queue()
    reports = run_processes(
        workers.write_concurrently,
        [(backend.url, w, threads, count, barrier, results) for w in range(processes)],
        results,
    )
    assert [errors for _, errors, _, _ in reports] == [[], []]
    ledger = backend.open()
    try:
        keys = [f"w{w}-t{t}-{j}" for w in range(processes) for t in range(threads)
                for j in range(count)]  # fmt: skip
        assert all(ledger.get_decision(f"dec-{key}") is not None for key in keys)
        audited = audit_count(ledger)
        assert all(audited[f"dec-{key}"] == 1 for key in keys)
        assert sum(audited.values()) == 2 * len(keys)  # + one "call" record per commit
        assert set(backend.request_states().values()) == {"committed"}
        assert len(backend.request_states()) == len(keys)
    finally:
        ledger.close()


def test_a_forked_child_writes_while_the_parent_is_mid_group(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    try:
        with committer(ledger).paused():  # the parent's committer is busy when it forks
            child = fork.Process(target=_write_child, args=(ledger, results))
            child.start()
            outcome = results.get(timeout=GUARD_S)
            child.join(timeout=GUARD_S)
        assert outcome == "ok"
        assert ledger.get_decision("dec-child") == {"n": 1}
    finally:
        ledger.close()


def _write_child(ledger: Ledger, results: Any) -> None:
    try:
        decide(ledger, "dec-child")()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        results.put(repr(exc))


def test_an_escalation_and_its_audit_record_are_one_write(work: WorkStore) -> None:
    def escalate(provenance_id: str, audit: dict[str, object] | None) -> bool:
        return work.record_escalation(
            task_id="task-1", role="planner", step=0, provenance_id=provenance_id,
            from_model="m-a", to_model="m-b", fired=["low"], policy_hash="h", consent=None,
            now=T0, audit=audit,
        )  # fmt: skip

    with pytest.raises(ValueError, match="prompt"):
        escalate("esc-0", {"kind": "escalation", "prompt": "text"})
    assert escalate("esc-1", {"kind": "escalation", "request_id": "esc-1"}) is True
    assert escalate("esc-2", {"kind": "escalation", "request_id": "esc-2"}) is False
    if isinstance(work, MemoryWork):
        return  # no audit trail in memory
    assert isinstance(work, SqlLedger)
    trail = [r for r in work.recent_audit(10) if r.get("kind") == "escalation"]
    assert trail == [{"kind": "escalation", "request_id": "esc-1"}]  # not the refused step's
