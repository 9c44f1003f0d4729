"""What binds every provider call of one run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Constraints:
    """The role, the job, and every rule a call of this run is held to: the caller's
    arguments plus, with a decision_id, the constraints the decision was made under."""

    role: str
    job: str | None
    local_only: bool
    channel: str | None
    risk: str | None
    needs: frozenset[str]
    max_output: int
    decision_id: str | None = None
    decision_model: str | None = None
