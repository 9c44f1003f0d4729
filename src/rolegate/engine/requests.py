"""What callers hand the engine: typed requests, the user's consent, and the caller itself.

The engine knows nothing of MCP. A transport adapts its request context to ``Caller``
(progress out, consent questions in); ``NO_CALLER`` is a caller that can be told nothing and
asked nothing (a script, a test, a client without those capabilities).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rolegate.policy.limits import SignalValue


@dataclass(frozen=True, slots=True)
class Consent:
    """The user's answer about switching models, asked before the call started."""

    granted: bool
    asked: bool


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One run_role call: the role, its input, and the ids that bind it."""

    role: str
    prompt: str | None = None
    messages: Sequence[Mapping[str, object]] | None = None
    system: str | None = None
    job: str | None = None
    task_id: str | None = None
    stage: str | None = None
    decision_id: str | None = None
    max_output_tokens: int | None = None
    channel: str | None = None
    local_only: bool = False
    consent: Consent | None = None
    # Evaluation only (``rolegate eval``; no tool exposes it): run exactly this model, held
    # to every rule, with no fallback, no quality choice and no live evidence.
    model: str | None = None


@dataclass(frozen=True, slots=True)
class EscalateRequest:
    """One escalate call: the role, the signals observed, and the task it is about."""

    role: str
    signals: Mapping[str, SignalValue] = field(default_factory=dict)
    job: str | None = None
    task_id: str | None = None
    reason: str | None = None  # free text: never logged or stored
    local_only: bool = False
    consent: Consent | None = None


@dataclass(frozen=True, slots=True)
class BudgetQuery:
    """One check_budget call: optionally, a call to test against context and budgets."""

    job: str | None = None
    role: str | None = None
    model: str | None = None
    text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class Caller(Protocol):
    """The client of one request, as the run path sees it."""

    @property
    def wants_progress(self) -> bool:
        """Did the client ask for progress? Nothing is reported as streamed otherwise."""
        ...

    async def progress(self, chunks: int, text: str) -> None:
        """Send one piece of partial output."""
        ...

    async def ask(self, question: str) -> bool | None:
        """Ask the user now; None when this client cannot be asked mid-call."""
        ...


class _NoCaller:
    wants_progress = False

    async def progress(self, chunks: int, text: str) -> None:
        return None

    async def ask(self, question: str) -> bool | None:
        return None


NO_CALLER: Caller = _NoCaller()
