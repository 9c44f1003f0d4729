"""Work items: which role owns each stage, escalations and critiques, per task_id."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel

MAX_TASKS = 10_000


class TaskStore:
    """In-process record of tasks (ids, models, codes; never prompt or output text)."""

    def __init__(self) -> None:
        self._tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def _task(self, task_id: str) -> dict[str, Any]:
        task = self._tasks.get(task_id)
        if task is None:
            task = {"task_id": task_id, "stages": {}, "escalations": [], "critiques": []}
            self._tasks[task_id] = task
            while len(self._tasks) > MAX_TASKS:
                self._tasks.popitem(last=False)
        return task

    def escalation_step(self, task_id: str, role: str) -> int:
        """How many rungs ``role`` has already climbed for ``task_id`` (0: none)."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return 0
            steps = [e["step"] + 1 for e in task["escalations"] if e["role"] == role]
            return max(steps, default=0)

    def record_escalation(
        self,
        task_id: str,
        role: str,
        step: int,
        provenance_id: str,
        decision: BaseModel,
        *,
        consent: str | None = None,
    ) -> None:
        data = decision.model_dump(mode="json")
        with self._lock:
            self._task(task_id)["escalations"].append(
                {
                    "provenance_id": provenance_id,
                    "role": role,
                    "step": step,
                    "from_model": data.get("from_model"),
                    "to_model": data.get("to_model"),
                    "fired": [f["signal"] for f in data.get("fired", [])],
                    "policy_hash": data["policy"]["hash"],
                    "consent": consent,
                }
            )

    def was_escalated(self, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            return bool(task and task["escalations"])

    def current_model(self, task_id: str, role: str) -> str | None:
        """The model an escalation moved ``role`` to on this task, if any."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            moves = [e for e in task["escalations"] if e["role"] == role]
            return moves[-1]["to_model"] if moves else None

    def stage_owner(self, task_id: str, stage: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else task["stages"].get(stage)

    def record_run(
        self,
        task_id: str,
        stage: str | None,
        role: str,
        authority: str,
        model: str,
        request_id: str,
        *,
        contract_valid: bool | None,
    ) -> None:
        entry = {
            "role": role,
            "model": model,
            "request_id": request_id,
            "authority": authority,
            "contract_valid": contract_valid,
        }
        with self._lock:
            task = self._task(task_id)
            if authority == "sidecar":
                task["critiques"].append({**entry, "stage": stage, "authoritative": False})
                return
            if stage is None:
                return
            previous = task["stages"].get(stage)
            history = [*previous["replaced"], previous["model"]] if previous else []
            task["stages"][stage] = {**entry, "authoritative": True, "replaced": history}

    def view(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return (
                None
                if task is None
                else {
                    "task_id": task_id,
                    "stages": dict(task["stages"]),
                    "escalations": list(task["escalations"]),
                    "critiques": list(task["critiques"]),
                }
            )
