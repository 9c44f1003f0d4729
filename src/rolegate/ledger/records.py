"""The values every ledger backend shares: a reservation row, the budget refusal, owners and
the exact time arithmetic.

Money is integer micro-USD and time is integer microseconds since the Unix epoch (UTC)
inside the ledger: no floats are ever summed or compared.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rolegate.errors import Code, RefusedError
from rolegate.policy.budget import overrun, window_reset
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import ScopeUsage

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A request as the ledger keeps it (one row per request id)."""

    request_id: str
    owner: str
    line_ids: tuple[str, ...]
    at_us: int
    expires_us: int
    state: str  # reserved | committed | released | expired
    cost_micro: int
    tokens: int


class BudgetExhaustedError(RefusedError):
    """A reservation does not fit a budget line; ``line_id`` names the refusing one."""

    def __init__(
        self, message: str, *, line_id: str, left_micro: int | None, left_tokens: int | None
    ) -> None:
        super().__init__(message, code=Code.BUDGET_EXHAUSTED)
        self.line_id = line_id
        self.left_micro = left_micro
        self.left_tokens = left_tokens


def default_owner() -> str:
    """``pid:host:uuid``: who holds a reservation, for people reading the ledger."""
    return f"{os.getpid()}:{socket.gethostname()}:{uuid.uuid4().hex[:12]}"


def to_utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("the ledger needs timezone-aware datetimes (UTC); got a naive one")
    return now.astimezone(UTC)


def to_us(now: datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (to_utc(now) - _EPOCH) // _MICROSECOND


def from_us(at_us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime (exact): ``to_us`` undone."""
    return _EPOCH + at_us * _MICROSECOND


def lease_us(lease_s: float) -> int:
    if not lease_s > 0:
        raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
    return max(1, round(lease_s * 1_000_000))


def unique_lines(lines: Sequence[BudgetLine]) -> list[BudgetLine]:
    """Lines by id, once each, in id order: the fixed order locks are taken in."""
    return sorted({line.id: line for line in lines}.values(), key=lambda line: line.id)


def refusal(
    line: BudgetLine,
    now: datetime,
    *,
    spent_micro: int,
    spent_tokens: int,
    cost_micro: int,
    tokens: int,
) -> BudgetExhaustedError | None:
    """The error for the first cap of ``line`` the call would break, or None if it fits.

    ``spent_*`` include the unexpired reservations already held on the line.
    """
    over = overrun(
        line,
        ScopeUsage(spent_micro=spent_micro, spent_tokens=spent_tokens),
        cost_micro=cost_micro,
        tokens=tokens,
    )
    if over is None:
        return None
    reset = window_reset(line, to_utc(now))
    when = f"resets at {reset.isoformat()}" if reset else f"rolling {line.window_seconds}s window"
    return BudgetExhaustedError(
        f"budget {line.id} has {over.what} (including open reservations); {over.need}; {when}",
        line_id=line.id,
        left_micro=over.left_micro,
        left_tokens=over.left_tokens,
    )
