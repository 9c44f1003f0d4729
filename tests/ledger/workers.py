"""Shared helpers, and the code child processes run (importable by a spawned interpreter)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from rolegate.errors import RolegateError
from rolegate.ledger import BudgetExhaustedError, default_owner, open_ledger
from rolegate.policy.compiled import BudgetLine

T0 = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


def line(
    line_id: str,
    *,
    usd_micro: int | None = None,
    tokens: int | None = None,
    window: str = "day",
    window_seconds: int | None = None,
) -> BudgetLine:
    if window == "rolling":
        assert window_seconds is not None
    return BudgetLine(line_id, "global", None, window, window_seconds, usd_micro, tokens)


@dataclass(frozen=True)
class Budgets:
    """The one part of a Policy that ``snapshot`` reads."""

    budgets: tuple[BudgetLine, ...]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reserve_many(
    url: str,
    worker: int,
    count: int,
    lines: tuple[BudgetLine, ...],
    cost: int,
    tokens: int,
    barrier: Barrier,
    results: Any,
) -> None:
    """Reserve ``count`` times as fast as possible once every worker is at the barrier;
    then, after a second barrier (all reservations done), commit every other one."""
    ledger = open_ledger(url)
    owner = default_owner()
    admitted: list[str] = []
    refused = 0
    errors: list[str] = []
    latencies: list[float] = []
    barrier.wait(timeout=120)
    for j in range(count):
        request_id = f"w{worker}-{j}"
        started = time.perf_counter()
        try:
            ledger.reserve(
                request_id=request_id,
                owner=owner,
                lines=lines,
                cost_micro=cost,
                tokens=tokens,
                now=T0,
                lease_s=3600,
            )
            admitted.append(request_id)
        except BudgetExhaustedError:
            refused += 1
        except RolegateError as exc:  # counted, and the test requires none
            errors.append(str(exc))
        latencies.append(time.perf_counter() - started)
    barrier.wait(timeout=120)
    committed: dict[str, int] = {}
    for k, request_id in enumerate(admitted):
        if k % 2 == 0:
            charge = cost - k % 5  # real usage at or below the reserved worst case
            ledger.commit(request_id, cost_micro=charge, tokens=tokens, now=T0)
            committed[request_id] = charge
    ledger.close()
    results.put((worker, admitted, refused, errors, committed, latencies))


def reserve_then_hang(
    url: str, lines: tuple[BudgetLine, ...], count: int, lease_s: float, ready: Event
) -> None:
    """Hold ``count`` reservations, then wait to be killed with SIGKILL."""
    ledger = open_ledger(url)
    for j in range(count):
        ledger.reserve(
            request_id=f"doomed-{j}",
            owner=default_owner(),
            lines=lines,
            cost_micro=100,
            tokens=10,
            now=T0,
            lease_s=lease_s,
        )
    ready.set()
    time.sleep(600)


def hang_inside_transaction(url: str, line_id: str, ready: Event) -> None:
    """Take the writer's lock on ``line_id`` and write, then wait to be killed mid-transaction."""
    ledger = open_ledger(url)
    ledger._prepare_lines([line_id])  # type: ignore[attr-defined]
    with ledger._transaction(write=True) as tx:  # type: ignore[attr-defined]
        tx.lock_lines([line_id])
        tx.run("INSERT INTO rolegate_audit (at_us, record) VALUES (?, ?)", [0, '{"x":1}'])
        ready.set()
        time.sleep(600)


def try_after_breaking(backend: Any, lines: tuple[BudgetLine, ...], results: Any) -> None:
    """Reserve once, make the store unwritable, then report what each call does."""
    ledger = backend.open()
    common = {"owner": default_owner(), "lines": lines, "tokens": 10, "now": T0, "lease_s": 60}
    ledger.reserve(request_id="before", cost_micro=100, **common)
    backend.make_unwritable()
    outcome: dict[str, str] = {}
    calls: dict[str, Callable[[], object]] = {
        "reserve": lambda: ledger.reserve(request_id="after", cost_micro=100, **common),
        "commit": lambda: ledger.commit("before", cost_micro=90, tokens=9, now=T0),
        "audit": lambda: ledger.audit({"event": "call", "request_id": "after"}),
        "snapshot": lambda: ledger.snapshot(Budgets(lines), T0),
    }
    for name, call in calls.items():
        try:
            call()
            outcome[name] = "ok"
        except RolegateError as exc:
            outcome[name] = f"{exc.code}|{exc.message}"
    results.put(outcome)


# -- the work store -----------------------------------------------------------------------


def claim_at_barrier(
    url: str, worker: int, task_id: str, stage: str, barrier: Barrier, results: Any
) -> None:
    """Claim one stage once every worker is at the barrier; report the outcome."""
    ledger = open_ledger(url)
    request_id = f"claim-{worker}"
    barrier.wait(timeout=180)
    try:
        ledger.claim_stage(
            task_id=task_id,
            stage=stage,
            role="planner",
            model="m-a",
            request_id=request_id,
            now=T0,
            lease_s=3600,
        )
        outcome = "claimed"
    except RolegateError as exc:
        outcome = f"{exc.code}|{exc.message}"
    ledger.close()
    results.put((request_id, outcome))


def escalate_at_barrier(
    url: str, worker: int, task_id: str, barrier: Barrier, results: Any
) -> None:
    """Record step 0 of one role's escalation once every worker is at the barrier."""
    ledger = open_ledger(url)
    provenance_id = f"esc-{worker}"
    barrier.wait(timeout=180)
    try:
        won: bool | str = ledger.record_escalation(
            task_id=task_id,
            role="planner",
            step=0,
            provenance_id=provenance_id,
            from_model="m-a",
            to_model=f"m-{worker}",
            fired=["low_confidence"],
            policy_hash="h",
            consent=None,
            now=T0,
        )
    except RolegateError as exc:
        won = f"{exc.code}|{exc.message}"
    ledger.close()
    results.put((provenance_id, won))


def claim_and_finish_many(
    url: str, worker: int, tasks: int, stage: str, barrier: Barrier, results: Any
) -> None:
    """For each task in turn: claim the stage and, when that succeeds, finish it at once.

    Runs of other workers finish while this one claims: a claim must still see their owner.
    """
    ledger = open_ledger(url)
    owned: list[str] = []
    errors: list[str] = []
    barrier.wait(timeout=180)
    for k in range(tasks):
        task_id = f"task-{k}"
        request_id = f"w{worker}-{k}"
        try:
            ledger.claim_stage(
                task_id=task_id, stage=stage, role="planner", model="m-a",
                request_id=request_id, now=T0, lease_s=3600,
            )  # fmt: skip
        except RolegateError as exc:
            if exc.code != "CONSENSUS_FORBIDDEN":
                errors.append(str(exc))
            continue
        try:
            ledger.finish_stage(
                task_id=task_id, stage=stage, request_id=request_id, role="planner",
                model="m-a", authority="owner", contract_valid=True, now=T0,
            )  # fmt: skip
            owned.append(task_id)
        except RolegateError as exc:
            errors.append(str(exc))
    ledger.close()
    results.put((worker, owned, errors))


def open_at_barrier(url: str, barrier: Barrier, results: Any) -> None:
    """Open (and so migrate) the ledger once every worker is at the barrier."""
    barrier.wait(timeout=180)
    try:
        open_ledger(url).close()
        results.put("ok")
    except RolegateError as exc:
        results.put(str(exc))


def read_decision(url: str, decision_id: str, results: Any) -> None:
    ledger = open_ledger(url)
    try:
        results.put(ledger.get_decision(decision_id))
    finally:
        ledger.close()


def write_concurrently(
    url: str, worker: int, threads: int, count: int, barrier: Barrier, results: Any
) -> None:
    """``threads`` threads, each storing ``count`` decisions (with their audit records) and
    reserving then committing ``count`` calls, all starting once every worker is ready."""
    ledger = open_ledger(url)
    cap = line("global:*:day", usd_micro=10**12)
    errors: list[str] = []

    def write(thread: int) -> None:
        for j in range(count):
            key = f"w{worker}-t{thread}-{j}"
            try:
                ledger.put_decision(
                    f"dec-{key}", {"worker": worker, "n": j}, now=T0,
                    audit={"kind": "decision", "decision_id": f"dec-{key}"},
                )  # fmt: skip
                ledger.reserve(
                    request_id=f"req-{key}", owner="t", lines=[cap], cost_micro=10, tokens=1,
                    now=T0, lease_s=3600,
                )  # fmt: skip
                ledger.commit(f"req-{key}", cost_micro=7, tokens=1, now=T0, audit={"kind": "call"})
            except RolegateError as exc:
                errors.append(f"{key}: {exc}")

    pool = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    barrier.wait(timeout=180)
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    committer = ledger.group_commit  # type: ignore[attr-defined]
    ledger.close()
    results.put((worker, errors, committer.groups, committer.writes))
