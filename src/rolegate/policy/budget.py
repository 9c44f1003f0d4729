"""Budget arithmetic, in one place: windows, what a line has left, whether a call fits, money.

Money is integer micro-USD everywhere (1 USD = 1,000,000); it is shown as dollars by integer
arithmetic, never through floats. "Left" is always cap - spent - reserved: open reservations
count against a line until they are committed or released. The router, the ledger and the
budget reports all use these functions, so a refusal, a report and a reservation agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import ScopeUsage

MICRO_PER_USD = 1_000_000
_MICROSECOND = timedelta(microseconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _first_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The first instant whose local wall time in ``tz`` is ``wall`` or later.

    Where the clock went back over ``wall``, the earlier of its two instants; where it jumped
    forward over it, the instant of the jump (a day starts when its first hour does). The
    result carries the fixed UTC offset in force at that instant (``+01:00``), so that it
    prints with its offset and compares and subtracts as the instant it is (Python compares
    two datetimes of one ``ZoneInfo`` by their wall clocks).
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) != wall:
        # Skipped: read with the offset after the jump (fold=1), ``wall`` is an instant
        # before it; with the offset before (fold=0), one after. Find the jump between them.
        lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        while first - lo > _MICROSECOND:
            mid = lo + (first - lo) // 2
            if mid.astimezone(tz).replace(tzinfo=None) >= wall:
                first = mid
            else:
                lo = mid
    offset = first.astimezone(tz).utcoffset()
    return first if not offset else first.astimezone(timezone(offset))


def _local_midnight(line: BudgetLine, now: datetime) -> datetime:
    """Midnight starting the local day (or, for month windows, month) ``now`` falls in."""
    local = now.astimezone(line.tz)
    day = 1 if line.window == "month" else local.day
    return local.replace(day=day, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def window_start(line: BudgetLine, now: datetime) -> datetime:
    """Start of the window ``now`` falls in (for rolling windows: now - length).

    Day and month windows start at local midnight (the first of the month) in the line's
    zone (the policy's ``timezone``, UTC by default), shown with that zone's offset; a day
    is 23 or 25 hours long when the clocks change.
    """
    if line.window in ("day", "month"):
        return _first_instant(_local_midnight(line, now), line.tz)
    assert line.window_seconds is not None
    return now.astimezone(UTC) - timedelta(seconds=line.window_seconds)


def window_reset(line: BudgetLine, now: datetime) -> datetime | None:
    """When the current window ends, in the line's zone; None for rolling windows (they
    slide)."""
    if line.window == "day":
        return _first_instant(_local_midnight(line, now) + timedelta(days=1), line.tz)
    if line.window == "month":
        start = _local_midnight(line, now)
        return _first_instant((start + timedelta(days=32)).replace(day=1), line.tz)
    return None


def window_label(line: BudgetLine) -> str:
    return line.window if line.window != "rolling" else f"rolling {line.window_seconds}s"


def usd(micro: int) -> str:
    """Micro-USD as dollars, by integer arithmetic: 1234567 -> '$1.234567'."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    return f"{sign}${whole:,}.{frac:06d}"


def left_micro(line: BudgetLine, used: ScopeUsage) -> int | None:
    """Money left on the line (cap - spent - reserved); None when it has no money cap."""
    if line.usd_micro is None:
        return None
    return line.usd_micro - used.spent_micro - used.reserved_micro


def left_tokens(line: BudgetLine, used: ScopeUsage) -> int | None:
    """Tokens left on the line (cap - spent - reserved); None when it has no token cap."""
    if line.tokens is None:
        return None
    return line.tokens - used.spent_tokens - used.reserved_tokens


@dataclass(frozen=True, slots=True)
class Overrun:
    """Which cap of a line a call would break, as a sentence fragment and the amounts."""

    line_id: str
    what: str  # "$0.10 left of $1.00", "1,000 tokens left of 5,000"
    need: str  # "this call needs up to $0.20"
    left_micro: int | None
    left_tokens: int | None


def overrun(line: BudgetLine, used: ScopeUsage, *, cost_micro: int, tokens: int) -> Overrun | None:
    """The first cap of ``line`` a call of this worst case would break, or None if it fits."""
    money, count = left_micro(line, used), left_tokens(line, used)
    if money is not None and cost_micro > money:
        what = f"{usd(max(money, 0))} left of {usd(line.usd_micro or 0)}"
        need = f"this call needs up to {usd(cost_micro)}"
    elif count is not None and tokens > count:
        what = f"{max(count, 0):,} tokens left of {line.tokens or 0:,}"
        need = f"this call needs up to {tokens:,} tokens"
    else:
        return None
    return Overrun(line.id, what, need, money, count)
