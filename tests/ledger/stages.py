"""Helpers for the work-store tests: claim, finish and escalate in one line, and processes."""

from __future__ import annotations

import multiprocessing
import queue
import time
from datetime import datetime
from typing import Any

import pytest

from rolegate.errors import Code, RefusedError
from rolegate.ledger import WorkStore
from tests.ledger.workers import T0

CTX = multiprocessing.get_context("spawn")
PROCESSES = 8
TASK, STAGE, ROLE = "task-1", "plan", "planner"


def claim(
    store: WorkStore,
    request_id: str,
    *,
    model: str = "m-a",
    role: str = ROLE,
    now: datetime = T0,
    lease_s: float = 60,
    task_id: str = TASK,
    stage: str = STAGE,
) -> None:
    store.claim_stage(
        task_id=task_id, stage=stage, role=role, model=model, request_id=request_id, now=now,
        lease_s=lease_s,
    )  # fmt: skip


def finish(
    store: WorkStore,
    request_id: str,
    *,
    model: str = "m-a",
    role: str = ROLE,
    valid: bool | None = True,
    now: datetime = T0,
    task_id: str = TASK,
    stage: str = STAGE,
) -> None:
    store.finish_stage(
        task_id=task_id, stage=stage, request_id=request_id, role=role, model=model,
        authority="owner", contract_valid=valid, now=now,
    )  # fmt: skip


def escalate(
    store: WorkStore,
    step: int,
    to_model: str | None,
    *,
    role: str = ROLE,
    from_model: str | None = "m-a",
    provenance_id: str | None = None,
    now: datetime = T0,
    task_id: str = TASK,
) -> bool:
    return store.record_escalation(
        task_id=task_id, role=role, step=step, provenance_id=provenance_id or f"p-{role}-{step}",
        from_model=from_model, to_model=to_model, fired=["low_confidence"], policy_hash="h1",
        consent=None, now=now,
    )  # fmt: skip


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    """The CONSENSUS_FORBIDDEN sentence ``call`` raises."""
    with pytest.raises(RefusedError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == Code.CONSENSUS_FORBIDDEN
    return caught.value.message


def owner_of(store: WorkStore, stage: str = STAGE, task_id: str = TASK) -> dict[str, Any]:
    view = store.task_view(task_id)
    assert view is not None
    entry: dict[str, Any] = view["stages"][stage]
    return entry


def run_processes(
    target: Any, args_per_worker: list[tuple[Any, ...]], results: Any, timeout_s: float = 240
) -> list[Any]:
    """Start one process per argument tuple; their reports, failing fast if one dies."""
    procs = [CTX.Process(target=target, args=args) for args in args_per_worker]
    for p in procs:
        p.start()
    reports: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(reports) < len(procs):
            try:
                reports.append(results.get(timeout=0.5))
            except queue.Empty:
                died = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not died, f"a worker died with exit code {died[0]} (traceback above)"
                alive = sum(p.is_alive() for p in procs)
                assert time.monotonic() < deadline, (
                    f"{len(reports)} of {len(procs)} workers reported in {timeout_s:g} s; "
                    f"{alive} still running"
                )
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return reports
