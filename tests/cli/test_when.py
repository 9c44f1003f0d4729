"""--since/--until: spans and ISO times, and a span too long for a date is a coded error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rolegate.cli.replay import parse_when
from rolegate.errors import Code, RequestError

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_spans_and_times() -> None:
    assert parse_when("7d", NOW, "--since") == NOW - timedelta(days=7)
    assert parse_when("2025-03-01", NOW, "--since") == datetime(2025, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["99999999999d", "9999999999999999999999h", "999999d"])
def test_a_span_past_year_one_is_refused_with_a_code(text: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_when(text, NOW, "--since")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "shorter span" in caught.value.message
