"""Budget windows by local day: the policy's ``timezone`` moves where day and month windows
start (local midnight, the local first of the month, DST-correct); UTC stays the default.

The pure window arithmetic first, then the policy field, then the same windows end to end:
spend committed on a real ledger just before local midnight counts in that day's window and
not the next one's, as check_budget, a reservation's refusal and replay all see it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rolegate.engine.budgets import budget_report, check_budget
from rolegate.engine.replay_budget import BudgetSim, Charge, at_us_of
from rolegate.engine.requests import BudgetQuery
from rolegate.engine.store import Store
from rolegate.errors import PolicyInvalidError
from rolegate.ledger import BudgetExhaustedError, Ledger
from rolegate.policy import Policy, load_policy_text
from rolegate.policy.budget import window_reset, window_start
from rolegate.policy.compiled import BudgetLine
from tests.ledger.backends import Backend, SqliteBackend, make_postgres

BERLIN = ZoneInfo("Europe/Berlin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
SECOND = timedelta(seconds=1)


def line(window: str = "day", tz: ZoneInfo | None = None, seconds: int | None = None) -> BudgetLine:
    if tz is None:  # the default: what every policy without `timezone` gets
        return BudgetLine(f"global:*:{window}", "global", None, window, seconds, 1_000, None)
    return BudgetLine(f"global:*:{window}", "global", None, window, seconds, 1_000, None, tz)


def local(tz: ZoneInfo, *when: int, fold: int = 0) -> datetime:
    """A local wall time in ``tz`` (year, month, day[, hour, minute, second]), as the UTC
    instant a clock would report."""
    year, month, day, hour, minute, second = (*when, 0, 0, 0)[:6]
    wall = datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=fold)
    return wall.astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# -- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "date", "offset"),
    [(BERLIN, (2026, 11, 24), "+01:00"), (LOS_ANGELES, (2026, 7, 14), "-07:00")],
    ids=["berlin", "los-angeles"],
)
def test_a_day_window_turns_over_at_local_midnight(
    tz: ZoneInfo, date: tuple[int, int, int], offset: str
) -> None:
    day = line("day", tz)
    last = local(tz, *date, 23, 59, 59)
    first = local(tz, *date, 23, 59, 59) + SECOND  # local midnight, as a UTC clock says it
    assert first.astimezone(tz).hour == 0
    y, m, d = date
    assert iso(window_start(day, last)) == f"{y}-{m:02d}-{d:02d}T00:00:00{offset}"
    assert iso(window_reset(day, last)) == f"{y}-{m:02d}-{d + 1:02d}T00:00:00{offset}"
    assert window_reset(day, last) == first
    # One second later it is the next local day: its window starts exactly then.
    assert window_start(day, first) == first
    assert iso(window_start(day, first)) == f"{y}-{m:02d}-{d + 1:02d}T00:00:00{offset}"
    assert iso(window_reset(day, first)) == f"{y}-{m:02d}-{d + 2:02d}T00:00:00{offset}"
    # The UTC day is another window: the zone, not UTC, decided.
    assert window_start(line("day"), last) != window_start(day, last)


def test_the_berlin_example_of_the_issue() -> None:
    at = local(BERLIN, 2026, 11, 24, 18, 0, 0)
    assert iso(window_reset(line("day", BERLIN), at)) == "2026-11-25T00:00:00+01:00"


@pytest.mark.parametrize(
    ("tz", "date", "before", "after", "hours"),
    [
        # Spring forward: 02:00 becomes 03:00 (Berlin), 02:00 becomes 03:00 (Los Angeles).
        (BERLIN, (2026, 3, 29), "+01:00", "+02:00", 23),
        (LOS_ANGELES, (2026, 3, 8), "-08:00", "-07:00", 23),
        # Fall back: 03:00 becomes 02:00 (Berlin), 02:00 becomes 01:00 (Los Angeles).
        (BERLIN, (2026, 10, 25), "+02:00", "+01:00", 25),
        (LOS_ANGELES, (2026, 11, 1), "-07:00", "-08:00", 25),
    ],
    ids=["berlin-spring", "los-angeles-spring", "berlin-fall", "los-angeles-fall"],
)
def test_a_day_on_which_the_clocks_change_is_23_or_25_hours(
    tz: ZoneInfo, date: tuple[int, int, int], before: str, after: str, hours: int
) -> None:
    day = line("day", tz)
    y, m, d = date
    noon = local(tz, *date, 12)
    start, reset = window_start(day, noon), window_reset(day, noon)
    assert reset is not None
    assert iso(start) == f"{y}-{m:02d}-{d:02d}T00:00:00{before}"
    assert iso(reset) == f"{y}-{m:02d}-{d + 1:02d}T00:00:00{after}"
    assert reset - start == timedelta(hours=hours)  # real elapsed time, not wall clock
    # Every instant of that local day, on both sides of the change, is in this one window.
    for moment in (start, local(tz, *date, 1, 59, 59), local(tz, *date, 3), reset - SECOND):
        assert window_start(day, moment) == start
        assert window_reset(day, moment) == reset
    # Both readings of a repeated hour belong to the same day.
    if hours == 25:
        repeated = 2 if tz is BERLIN else 1
        for fold in (0, 1):
            assert window_start(day, local(tz, *date, repeated, 30, fold=fold)) == start
    # The next day is a plain 24 hours again and starts where this one ended.
    assert window_start(day, reset) == reset
    next_reset = window_reset(day, reset)
    assert next_reset is not None
    assert next_reset - reset == timedelta(hours=24)


def test_a_day_whose_midnight_was_skipped_starts_when_its_first_hour_does() -> None:
    # Havana springs forward at midnight: 2026-03-08 has no 00:00, its first instant is 01:00.
    havana = ZoneInfo("America/Havana")
    day = line("day", havana)
    start = window_start(day, local(havana, 2026, 3, 8, 12))
    assert iso(start) == "2026-03-08T01:00:00-04:00"
    assert iso(window_reset(day, local(havana, 2026, 3, 7, 23, 59, 59))) == iso(start)
    assert window_start(day, start - timedelta(microseconds=1)) < start
    # Samoa skipped 2011-12-30 entirely: the day after the 29th is the 31st.
    apia = ZoneInfo("Pacific/Apia")
    reset = window_reset(line("day", apia), local(apia, 2011, 12, 29, 12))
    assert iso(reset) == "2011-12-31T00:00:00+14:00"


def test_a_month_window_turns_over_on_the_local_first() -> None:
    month = line("month", BERLIN)
    last = local(BERLIN, 2026, 1, 31, 23, 59, 59)
    first = last + SECOND
    assert first == datetime(2026, 1, 31, 23, 0, tzinfo=UTC)  # still January in UTC
    assert iso(window_start(month, last)) == "2026-01-01T00:00:00+01:00"
    assert iso(window_reset(month, last)) == "2026-02-01T00:00:00+01:00"
    assert iso(window_start(month, first)) == "2026-02-01T00:00:00+01:00"
    assert iso(window_reset(month, first)) == "2026-03-01T00:00:00+01:00"
    assert iso(window_start(line("month"), first)) == "2026-01-01T00:00:00+00:00"
    # A month across the spring change is an hour short; across a year end it rolls over.
    march = local(BERLIN, 2026, 3, 15)
    start, reset = window_start(month, march), window_reset(month, march)
    assert (iso(start), iso(reset)) == ("2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00")
    assert reset is not None
    assert reset - start == timedelta(days=31, hours=-1)
    december = line("month", LOS_ANGELES)
    eve = local(LOS_ANGELES, 2026, 12, 31, 23, 59, 59)
    assert iso(window_reset(december, eve)) == "2027-01-01T00:00:00-08:00"
    assert iso(window_start(december, eve + SECOND)) == "2027-01-01T00:00:00-08:00"


def test_utc_stays_the_default() -> None:
    day, month = line("day"), line("month")
    for at, start, reset in (
        (datetime(2026, 3, 29, 23, 59, 59, tzinfo=UTC), "2026-03-29", "2026-03-30"),
        (datetime(2026, 3, 30, 0, 0, 0, tzinfo=UTC), "2026-03-30", "2026-03-31"),
    ):
        assert iso(window_start(day, at)) == f"{start}T00:00:00+00:00"
        assert iso(window_reset(day, at)) == f"{reset}T00:00:00+00:00"
        assert window_start(day, at).tzinfo is UTC
    at = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert iso(window_start(month, at)) == "2026-12-01T00:00:00+00:00"
    assert iso(window_reset(month, at)) == "2027-01-01T00:00:00+00:00"
    # A clock that reports another offset is the same instant: the window is the UTC day.
    same = at.astimezone(timezone(timedelta(hours=5)))
    assert window_start(day, same) == window_start(day, at)
    assert window_start(line("day", ZoneInfo("UTC")), at) == window_start(day, at)


def test_rolling_windows_ignore_the_zone() -> None:
    at = local(BERLIN, 2026, 3, 29, 3, 30)  # half an hour after the clocks jumped
    for tz in (None, BERLIN):
        rolling = line("rolling", tz, seconds=3600)
        assert window_start(rolling, at) == at - timedelta(hours=1)
        assert window_reset(rolling, at) is None


# -- the policy field -------------------------------------------------------------------------

POLICY = """
version: 1
name: tz-test
providers:
  cloud: {type: openai, base_url: "https://api.example.com/v1", locality: cloud}
models:
  m:
    {provider: cloud, name: m, context_window: 8192, reserve_tokens: 1024,
     capabilities: [chat], price: {input_per_mtok: "1.00", output_per_mtok: "1.00"}}
roles:
  chat: {model: m}
defaults: {role: chat, max_output_tokens: 100}
budgets:
  - {scope: global, window: day, usd: "0.001"}
  - {scope: global, window: month, tokens: 100000}
"""


def policy(zone: str | None) -> Policy:
    text = POLICY if zone is None else f"timezone: {zone}\n{POLICY}"
    return load_policy_text(text, "yaml", "<tz-test>")


def test_the_policy_zone_reaches_every_budget_line_and_its_hash() -> None:
    plain, berlin = policy(None), policy("Europe/Berlin")
    assert plain.doc.timezone is None
    assert all(b.tz is UTC for b in plain.budgets)
    assert "timezone" not in json.loads(plain.canonical_json)  # unset: old hashes stay
    assert all(b.tz == BERLIN for b in berlin.budgets)
    assert '"timezone":"Europe/Berlin"' in berlin.canonical_json
    assert berlin.hash != plain.hash
    assert [b.id for b in berlin.budgets] == [b.id for b in plain.budgets]


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "europe/berlin", "CET+1", "'../../etc/passwd'", "''", "'/etc'"]
)
def test_an_unknown_zone_is_a_policy_error_that_says_what_to_write(zone: str) -> None:
    with pytest.raises(PolicyInvalidError) as info:
        policy(zone)
    [problem] = info.value.problems
    assert problem.location == "timezone"
    assert "unknown time zone" in problem.message
    assert "'Europe/Berlin'" in problem.message
    assert zone.strip("'") not in problem.message or not zone.strip("'")


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory"])
def test_a_zone_that_names_no_place_is_refused(zone: str) -> None:
    # tzdata has these files, but 'localtime' is whatever the machine is set to: one policy
    # (one hash) would start its budget days at different hours on different machines.
    with pytest.raises(PolicyInvalidError) as info:
        policy(zone)
    [problem] = info.value.problems
    assert problem.location == "timezone"
    assert "means whatever the machine is set to" in problem.message
    assert "'Europe/Berlin'" in problem.message


# -- end to end on a real ledger --------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    made: Backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    if request.param == "postgres":
        made = make_postgres()
    try:
        opened = made.open()
        try:
            yield opened
        finally:
            opened.close()
    finally:
        made.destroy()


def spend(ledger: Ledger, pol: Policy, request_id: str, at: datetime, micro: int) -> None:
    lines = list(pol.budgets)
    ledger.reserve(
        request_id=request_id,
        owner="test",
        lines=lines,
        cost_micro=micro,
        tokens=100,
        now=at,
        lease_s=60,
    )
    ledger.commit(request_id, cost_micro=micro, tokens=100, now=at + SECOND)


async def test_spend_before_local_midnight_counts_in_yesterdays_window(ledger: Ledger) -> None:
    berlin = policy("Europe/Berlin")
    evening = local(BERLIN, 2026, 11, 24, 23, 59, 59)  # 22:59:59 UTC
    midnight = evening + SECOND  # 2026-11-25 00:00 in Berlin, still the 24th in UTC
    spend(ledger, berlin, "req_evening", evening - timedelta(minutes=5), 1_000)

    clock = [evening]
    store = Store(berlin, ledger=ledger, clock=lambda: clock[0])
    report = await check_budget(berlin, store, BudgetQuery(input_tokens=100))
    day = {s.window: s for s in report.scopes}["day"]
    assert (day.spent_usd_micro, day.left_usd_micro) == (1_000, 0)
    assert day.resets_at == "2026-11-25T00:00:00+01:00"
    assert report.check is not None
    assert not report.check.fits_budget
    # A reservation just before midnight is refused, and says when the window resets.
    with pytest.raises(BudgetExhaustedError, match=r"resets at 2026-11-25T00:00:00\+01:00"):
        spend(ledger, berlin, "req_late", evening, 200)

    clock[0] = midnight  # the next local day: yesterday's spend no longer counts against it
    report = await check_budget(berlin, store, BudgetQuery(input_tokens=100))
    day = {s.window: s for s in report.scopes}["day"]
    assert (day.spent_usd_micro, day.left_usd_micro) == (0, 1_000)
    assert day.resets_at == "2026-11-26T00:00:00+01:00"
    assert report.check is not None
    assert report.check.fits_budget
    month = {s.window: s for s in report.scopes}["month"]
    assert month.spent_tokens == 100
    assert month.resets_at == "2026-12-01T00:00:00+01:00"
    spend(ledger, berlin, "req_morning", midnight, 200)  # admitted in the new window
    assert ledger.snapshot(berlin, midnight).get(berlin.budgets[0].id).spent_micro == 200

    # Under the UTC default the same ledger's day has an hour to go at that instant.
    plain = policy(None)
    utc_day = budget_report(
        plain, Store(plain, ledger=ledger, clock=lambda: midnight), BudgetQuery()
    )
    day = {s.window: s for s in utc_day.scopes}["day"]
    assert day.spent_usd_micro == 1_200
    assert day.resets_at == "2026-11-25T00:00:00+00:00"


def test_replay_counts_by_the_same_local_windows() -> None:
    berlin = policy("Europe/Berlin")
    sim = BudgetSim(berlin)
    evening = local(BERLIN, 2026, 11, 24, 23, 59, 59)
    sim.charge(at_us_of(evening), Charge(None, "chat", "m", "cloud", 1_000, 100))
    day_id = berlin.budgets[0].id
    assert sim.snapshot(at_us_of(evening)).get(day_id).spent_micro == 1_000
    assert sim.snapshot(at_us_of(evening + SECOND)).get(day_id).spent_micro == 0
