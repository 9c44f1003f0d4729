"""Budget windows on the wall clock (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rolegate.policy.compiled import BudgetLine


def window_start(line: BudgetLine, now: datetime) -> datetime:
    """Start of the window ``now`` falls in (for rolling windows: now - length)."""
    if line.window == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if line.window == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert line.window_seconds is not None
    return now - timedelta(seconds=line.window_seconds)


def window_reset(line: BudgetLine, now: datetime) -> datetime | None:
    """When the current window ends; None for rolling windows (they slide)."""
    if line.window == "day":
        return window_start(line, now) + timedelta(days=1)
    if line.window == "month":
        start = window_start(line, now)
        return (start + timedelta(days=32)).replace(day=1)
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)
