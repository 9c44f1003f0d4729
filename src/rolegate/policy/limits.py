"""Bounds on everything a caller sends, and the one definition of escalation signals.

Every string and list a caller passes is bounded here, once, so that a hostile call costs
bounded memory and ledger space; the MCP tool schemas and the domain checks both read
these numbers. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from rolegate.errors import Code, RequestError
from rolegate.policy.vocabulary import Signal

#: A policy name (job, role, channel, model, stage) or an id (task_id, decision_id).
MAX_NAME_CHARS = 128
#: route_task classifies the task text; attached material is passed as context_tokens.
MAX_TASK_CHARS = 1_000_000
#: run_role's prompt, system prompt and messages together.
MAX_PROMPT_CHARS = 4_000_000
MAX_MESSAGES = 1_000
MAX_NEEDS = 32
MAX_REASON_CHARS = 4_000
#: Token counts a caller may state (context, input, output); far above any model's window.
MAX_TOKENS = 100_000_000
MAX_COUNT = 1_000_000


def check_name(value: str | None, what: str) -> None:
    """Refuse an over-long or empty name before it is echoed, stored or looked up."""
    if value is None:
        return
    if not value or len(value) > MAX_NAME_CHARS:
        raise RequestError(
            f"{what} must be 1 to {MAX_NAME_CHARS} characters (got {len(value):,})",
            code=Code.INVALID_ARGUMENT,
        )


def check_count(value: int | None, what: str, *, low: int = 0, high: int = MAX_TOKENS) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not low <= value <= high:
        raise RequestError(
            f"{what} must be a whole number from {low:,} to {high:,}", code=Code.INVALID_ARGUMENT
        )


def check_needs(needs: tuple[str, ...]) -> None:
    if len(needs) > MAX_NEEDS:
        raise RequestError(
            f"needs lists {len(needs):,} capabilities; at most {MAX_NEEDS}",
            code=Code.INVALID_ARGUMENT,
        )
    for need in needs:
        check_name(need, "each capability in needs")


SignalKind = Literal["fraction", "count", "tokens", "flag"]
SignalValue = float | bool


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One escalation signal: what it measures and which values it takes."""

    kind: SignalKind
    description: str


#: Every signal a policy predicate may name; the escalate tool's parameters derive from it.
SIGNALS: Mapping[str, SignalSpec] = {
    "confidence": SignalSpec("fraction", "Self-reported confidence, 0 to 1."),
    "self_check_confidence": SignalSpec("fraction", "Confidence of a self-check, 0 to 1."),
    "failed_loops": SignalSpec("count", "Failed compile/test loops so far."),
    "context_estimate": SignalSpec("tokens", "Context tokens the work needs."),
    "contradictions": SignalSpec("flag", "Contradictions were found."),
    "tool_heavy": SignalSpec("flag", "The work is tool-heavy."),
    "full_sweep": SignalSpec("flag", "A full sweep is needed."),
    "scope_large": SignalSpec("flag", "The scope is large or the requirements ambiguous."),
    "interesting_failure": SignalSpec("flag", "An interesting failure worth a second look."),
    "high_risk": SignalSpec("flag", "A high-risk change (needs the cloud judge)."),
    "user_request": SignalSpec("flag", "The user asked to escalate."),
}


def signal_names() -> tuple[str, ...]:
    """The schema's signals, in declaration order; each must have a spec here."""
    names: tuple[str, ...] = get_args(Signal)
    missing = [name for name in names if name not in SIGNALS]
    if missing:  # a programming error: the schema and this table must agree
        raise AssertionError(f"signals without a spec: {missing}")
    return names


def validate_signals(signals: Mapping[str, object]) -> dict[str, SignalValue]:
    """The given signals, checked: known names, right kinds, finite values in range."""
    out: dict[str, SignalValue] = {}
    for name, value in signals.items():
        spec = SIGNALS.get(name)
        if spec is None:
            raise RequestError(
                f"unknown escalation signal {name[:MAX_NAME_CHARS]!r}; the signals are "
                f"{', '.join(SIGNALS)}",
                code=Code.INVALID_ARGUMENT,
            )
        out[name] = _signal_value(name, spec, value)
    return out


def _signal_value(name: str, spec: SignalSpec, value: object) -> SignalValue:
    if spec.kind == "flag":
        if not isinstance(value, bool):
            raise RequestError(f"{name} must be true or false", code=Code.INVALID_ARGUMENT)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} must be a number", code=Code.INVALID_ARGUMENT)
    if spec.kind == "fraction":
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise RequestError(
                f"{name} must be a number from 0 to 1 (got {value!r})", code=Code.INVALID_ARGUMENT
            )
        return float(value)
    high = MAX_COUNT if spec.kind == "count" else MAX_TOKENS
    if not (math.isfinite(value) and float(value).is_integer() and 0 <= value <= high):
        raise RequestError(
            f"{name} must be a whole number from 0 to {high:,}", code=Code.INVALID_ARGUMENT
        )
    return int(value)
