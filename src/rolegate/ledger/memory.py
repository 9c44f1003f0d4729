"""The work store in one process's memory, for a server run without a ledger.

The same semantics as the ledger's (``base.WorkStore``), checked by the same tests, but
seen by this process only and forgotten when it exits. Bounded: at most ``max_tasks``
tasks (the least recently written is dropped first) and ``max_decisions`` decisions (the
oldest first). Thread-safe: one lock around every call, each of which is short.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rolegate.ledger.base import (
    audit_json,
    check_names,
    check_optional_text,
    check_step,
    check_text,
    check_texts,
    check_verdict,
    claimed_refusal,
    decision_reused,
    lease_us,
    lost_claim_refusal,
    owner_refusal,
    to_us,
)

MAX_TASKS = 10_000
MAX_DECISIONS = 10_000


@dataclass(slots=True)
class _Claim:
    request_id: str
    role: str
    model: str
    expires_us: int


@dataclass(slots=True)
class _Task:
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> view entry
    claims: dict[str, _Claim] = field(default_factory=dict)  # stage -> open claim
    escalations: dict[tuple[str, int], tuple[int, dict[str, Any]]] = field(
        default_factory=dict
    )  # (role, step) -> (at_us, view entry)
    critiques: list[dict[str, Any]] = field(default_factory=list)

    def current_model(self, role: str) -> str | None:
        steps = [step for (who, step) in self.escalations if who == role]
        if not steps:
            return None
        found: str | None = self.escalations[(role, max(steps))][1]["to_model"]
        return found


class MemoryWork:
    """``WorkStore`` in memory (see the module docstring)."""

    def __init__(self, *, max_tasks: int = MAX_TASKS, max_decisions: int = MAX_DECISIONS) -> None:
        if max_tasks < 1 or max_decisions < 1:
            raise ValueError("max_tasks and max_decisions must be >= 1")
        self._max_tasks = max_tasks
        self._max_decisions = max_decisions
        self._lock = threading.Lock()
        # Records kept as their JSON, as the ledger keeps them: readers get fresh copies.
        self._decisions: OrderedDict[str, str] = OrderedDict()
        self._tasks: OrderedDict[str, _Task] = OrderedDict()

    # Called with the lock held.
    def _written(self, task_id: str) -> _Task:
        """The task, created if new, and marked the most recently written."""
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = _Task()
        self._tasks.move_to_end(task_id)
        while len(self._tasks) > self._max_tasks:
            self._tasks.popitem(last=False)
        return task

    def put_decision(
        self,
        decision_id: str,
        record: Mapping[str, object],
        *,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        check_text("decision_id", decision_id)
        encoded = audit_json(record, what="decision")
        if audit is not None:
            audit_json(audit)  # refused like the ledger's; there is no audit trail to append to
        to_us(now)
        with self._lock:
            if decision_id in self._decisions:
                raise decision_reused(decision_id)
            self._decisions[decision_id] = encoded
            while len(self._decisions) > self._max_decisions:
                self._decisions.popitem(last=False)

    def get_decision(self, decision_id: str) -> dict[str, object] | None:
        with self._lock:
            found = self._decisions.get(decision_id)
        return None if found is None else dict(json.loads(found))

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
        check_texts(task_id=task_id, stage=stage, role=role, model=model, request_id=request_id)
        now_us = to_us(now)
        expires_us = now_us + lease_us(lease_s)
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                owner = task.owners.get(stage)
                if owner is not None and (
                    owner["role"] != role
                    or owner["model"] == model
                    or task.current_model(role) != model
                ):
                    raise owner_refusal(task_id, stage, owner["model"])
                held = task.claims.get(stage)
                if held is not None and held.request_id != request_id and held.expires_us > now_us:
                    raise claimed_refusal(task_id, stage)
            self._written(task_id).claims[stage] = _Claim(request_id, role, model, expires_us)

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
        output_request_id = output_request_id or request_id
        check_texts(
            task_id=task_id,
            stage=stage,
            request_id=request_id,
            output_request_id=output_request_id,
            role=role,
            model=model,
            authority=authority,
        )
        verdict = check_verdict(contract_valid)
        to_us(now)
        with self._lock:
            task = self._tasks.get(task_id)
            held = None if task is None else task.claims.get(stage)
            if task is None or held is None or held.request_id != request_id:
                raise lost_claim_refusal(task_id, stage, request_id)
            task = self._written(task_id)
            earlier = task.owners.get(stage)
            history = [*earlier["replaced"], earlier["model"]] if earlier else []
            task.owners[stage] = {
                "role": role,
                "model": model,
                "request_id": output_request_id,
                "authority": authority,
                "contract_valid": verdict,
                "authoritative": True,
                "replaced": history,
            }
            del task.claims[stage]

    def release_stage(self, *, task_id: str, stage: str, request_id: str) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            held = None if task is None else task.claims.get(stage)
            if task is not None and held is not None and held.request_id == request_id:
                del task.claims[stage]

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
        check_texts(task_id=task_id, role=role, model=model, request_id=request_id)
        where = check_optional_text("stage", stage)
        verdict = check_verdict(contract_valid)
        to_us(now)
        entry = {
            "role": role,
            "model": model,
            "request_id": request_id,
            "authority": "sidecar",
            "contract_valid": verdict,
            "stage": where,
            "authoritative": False,
        }
        with self._lock:
            self._written(task_id).critiques.append(entry)

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
        check_texts(
            task_id=task_id, role=role, provenance_id=provenance_id, policy_hash=policy_hash
        )
        entry = {
            "provenance_id": provenance_id,
            "role": role,
            "step": check_step(step),
            "from_model": check_optional_text("from_model", from_model),
            "to_model": check_optional_text("to_model", to_model),
            "fired": check_names("fired", fired),
            "policy_hash": policy_hash,
            "consent": check_optional_text("consent", consent),
        }
        if audit is not None:
            audit_json(audit)  # refused like the ledger's; there is no audit trail to append to
        now_us = to_us(now)
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and (role, step) in task.escalations:
                return False
            self._written(task_id).escalations[(role, step)] = (now_us, entry)
            return True

    def escalation_step(self, task_id: str, role: str) -> int:
        with self._lock:
            task = self._tasks.get(task_id)
            steps = [] if task is None else [s for (who, s) in task.escalations if who == role]
        return max(steps) + 1 if steps else 0

    def current_model(self, task_id: str, role: str) -> str | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.current_model(role)

    def was_escalated(self, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            return bool(task and task.escalations)

    def task_view(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or not (task.owners or task.escalations or task.critiques):
                return None
            # Copies, ordered as the ledger orders them: stages by name; escalations by
            # time, role and step; critiques as recorded.
            ordered = sorted(task.escalations.items(), key=lambda kv: (kv[1][0], *kv[0]))
            return {
                "task_id": task_id,
                "stages": {
                    stage: {**entry, "replaced": list(entry["replaced"])}
                    for stage, entry in sorted(task.owners.items())
                },
                "escalations": [
                    {**entry, "fired": list(entry["fired"])} for _, (_, entry) in ordered
                ],
                "critiques": [dict(entry) for entry in task.critiques],
            }
