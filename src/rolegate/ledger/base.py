"""The budget ledger's one interface, and the small pieces every backend shares.

Money is integer micro-USD and time is integer microseconds since the Unix epoch (UTC)
inside the ledger: no floats are ever summed or compared.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from rolegate.errors import Code, RefusedError
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import BudgetSnapshot
from rolegate.server.windows import window_reset

#: Keys an audit record may never carry, at any depth: the trail holds no prompt or output.
FORBIDDEN_AUDIT_KEYS = frozenset({"prompt", "completion", "messages", "text", "output"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class HasBudgets(Protocol):
    """What ``snapshot`` needs of a policy (``Policy`` satisfies it)."""

    @property
    def budgets(self) -> Sequence[BudgetLine]: ...


@runtime_checkable
class Ledger(Protocol):
    """Spend and reservations per budget line, shared by every process that opens it.

    All methods are synchronous and short; the server calls them from a worker thread.
    Each takes the current time explicitly so tests can drive the clock.
    """

    description: str

    def snapshot(self, policy: HasBudgets, now: datetime) -> BudgetSnapshot:
        """Spent plus unexpired reserved amounts per line, in the window ``now`` falls in."""
        ...

    def reserve(
        self,
        *,
        request_id: str,
        owner: str,
        lines: Sequence[BudgetLine],
        cost_micro: int,
        tokens: int,
        now: datetime,
        lease_s: float,
    ) -> None:
        """Admit a call's worst case against every line at once, or raise.

        Raises BudgetExhaustedError (a RefusedError, code BUDGET_EXHAUSTED) naming the
        first line that cannot take it, RequestError for a request id already used, and
        LedgerError (BUDGET_UNAVAILABLE) when the ledger cannot be read or written.
        """
        ...

    def commit(
        self,
        request_id: str,
        *,
        cost_micro: int,
        tokens: int,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        """Replace the reservation by the real charge; a second commit is a no-op.

        ``audit``, when given, is appended in the same transaction (one durable write).
        """
        ...

    def release(
        self, request_id: str, now: datetime, *, audit: Mapping[str, object] | None = None
    ) -> None:
        """Drop a reservation; releasing twice, or after commit, does nothing.

        ``audit``, when given, is appended in the same transaction.
        """
        ...

    def sweep(self, now: datetime) -> int:
        """Reclaim reservations whose lease expired; returns how many."""
        ...

    def audit(self, record: Mapping[str, object]) -> None:
        """Append one audit record (ids, model, counts, cost, codes, timing; never text)."""
        ...

    def recent_audit(self, limit: int) -> list[dict[str, object]]:
        """The newest ``limit`` audit records, newest first."""
        ...

    def close(self) -> None: ...


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


def lease_us(lease_s: float) -> int:
    if not lease_s > 0:
        raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
    return max(1, round(lease_s * 1_000_000))


def usd(micro: int) -> str:
    """Micro-USD as dollars, by integer arithmetic: 1234567 -> '$1.234567'."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}${whole}.{frac:06d}"


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
    left_micro = None if line.usd_micro is None else line.usd_micro - spent_micro
    left_tokens = None if line.tokens is None else line.tokens - spent_tokens
    if left_micro is not None and cost_micro > left_micro:
        what = f"{usd(max(left_micro, 0))} left of {usd(line.usd_micro or 0)}"
        need = f"this call needs up to {usd(cost_micro)}"
    elif left_tokens is not None and tokens > left_tokens:
        what = f"{max(left_tokens, 0):,} tokens left of {line.tokens or 0:,}"
        need = f"this call needs up to {tokens:,} tokens"
    else:
        return None
    reset = window_reset(line, to_utc(now))
    when = f"resets at {reset.isoformat()}" if reset else f"rolling {line.window_seconds}s window"
    return BudgetExhaustedError(
        f"budget {line.id} has {what} (including open reservations); {need}; {when}",
        line_id=line.id,
        left_micro=left_micro,
        left_tokens=left_tokens,
    )


def audit_json(record: Mapping[str, object]) -> str:
    """The record as JSON, refusing any key that would carry prompt or completion text."""
    _check_keys(record, "record")
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _check_keys(value: object, where: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if str(key).lower() in FORBIDDEN_AUDIT_KEYS:
                raise ValueError(
                    f"audit {where} has key {key!r}: the audit trail never stores prompt or "
                    "completion text; record token counts instead"
                )
            _check_keys(inner, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            _check_keys(inner, f"{where}[{i}]")
