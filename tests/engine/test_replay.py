"""`rolegate replay`: recorded decisions decided again under a changed policy.

Decisions are recorded the real way (route_task through a Store on a real ledger), calls as
accounting.settle writes them; the replay must report the moves, the refusals added and
removed, the cost per scope from the real tokens at the new prices (exact micro-USD), the
budget caps the new policy would have hit, and the records it could only approximate.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rolegate.cli.replay import parse_when, render
from rolegate.engine.replay import ReplayReport, load_replay, replay
from rolegate.engine.replay_budget import at_us_of
from rolegate.engine.routing import route_task
from rolegate.engine.store import Store
from rolegate.ledger import Ledger
from rolegate.ledger.quality import EvalResult
from rolegate.policy import Policy, RouteRequest, load_policy_text, route
from tests.ledger.backends import Backend, SqliteBackend, make_postgres

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)

OLD = """
version: 1
name: replay-test
revision: "1"
providers:
  local: {type: openai, base_url: "http://127.0.0.1:9/v1", locality: local}
  cloud: {type: openai, base_url: "https://api.example.com/v1", locality: cloud}
models:
  local-small:
    {provider: local, name: small, context_window: 8192, reserve_tokens: 1024,
     capabilities: [chat, summarize]}
  cloud-coder:
    {provider: cloud, name: coder, context_window: 128000, reserve_tokens: 8000,
     capabilities: [chat, code], price: {input_per_mtok: "3.00", output_per_mtok: "15.00"}}
  cloud-big:
    {provider: cloud, name: big, context_window: 8192, reserve_tokens: 1024,
     capabilities: [chat, code, reasoning],
     price: {input_per_mtok: "10.00", output_per_mtok: "30.00"}}
roles:
  chat: {model: local-small}
  coder: {model: cloud-coder}
  thinker: {model: cloud-big}
intents:
  code: {match: {keywords: [refactor]}, requires: [code]}
  summarize: {match: {keywords: [summarize]}, requires: [summarize], role: chat}
jobs:
  private: {role: chat}
  batch: {role: thinker}
  etl: {script_only: true}
defaults: {role: chat, max_output_tokens: 1000}
"""

# A cheaper coder takes the code intent, `private` becomes local-only, the big model gets a
# larger window, and the batch job gets a daily cap of $0.10.
NEW = (
    OLD.replace('revision: "1"', 'revision: "2"')
    .replace(
        "models:\n",
        "models:\n  cloud-cheap:\n    {provider: cloud, name: cheap, context_window: 128000,"
        " reserve_tokens: 8000, capabilities: [chat, code],"
        ' price: {input_per_mtok: "1.00", output_per_mtok: "2.00"}}\n',
    )
    .replace("name: big, context_window: 8192", "name: big, context_window: 16384")
    .replace(
        "  thinker: {model: cloud-big}\n",
        "  thinker: {model: cloud-big}\n  cheap: {model: cloud-cheap}\n",
    )
    .replace("private: {role: chat}", "private: {role: chat, local_only: true}")
    .replace(
        "batch: {role: thinker}", 'batch: {role: thinker, budgets: [{window: day, usd: "0.10"}]}'
    )
)


def _policy(text: str) -> Policy:
    return load_policy_text(text, "yaml", "<replay-test>")


@dataclass
class Recorder:
    """Records decisions at chosen times with route_task, and calls as settle writes them."""

    policy: Policy
    ledger: Ledger
    now: datetime = T0
    ids: dict[str, str] = field(default_factory=dict)

    def store(self) -> Store:
        return Store(self.policy, ledger=self.ledger, clock=lambda: self.now)

    async def decide(self, name: str, hours: float, request: RouteRequest) -> None:
        self.now = T0 + timedelta(hours=hours)
        result = await route_task(self.policy, self.store(), request)
        self.ids[name] = result.decision_id

    def decide_without_request(self, name: str, hours: float, request: RouteRequest) -> None:
        """A record of an older rolegate: the decision only, no "request" key."""
        decision = route(request, self.policy)
        decision_id = "dec_" + uuid.uuid4().hex
        when = T0 + timedelta(hours=hours)
        self.ledger.put_decision(decision_id, decision.model_dump(mode="json"), now=when)
        self.ids[name] = decision_id

    def call(self, name: str, inp: int, out: int) -> None:
        found = self.ledger.get_decision(self.ids[name])
        assert found is not None
        model = str(found["model"])
        info = self.policy.models[model]
        self.ledger.audit({
            "kind": "call", "request_id": "req_" + uuid.uuid4().hex, "model": model,
            "provider": info.model.provider, "policy_hash": self.policy.hash, "code": "OK",
            "ms": 12.5, "role": found["role"], "job": found["job"],
            "decision_id": self.ids[name], "task_id": None, "stage": None, "attempt": 1,
            "input_tokens": inp, "output_tokens": out,
            "cost_micro": info.worst_case_cost_micro(inp, out),
        })  # fmt: skip


async def record_history(rec: Recorder) -> None:
    """Fourteen decisions over two days under OLD; seven of them were run."""
    ask = RouteRequest
    await rec.decide("code1", 0, ask("refactor the parser", input_tokens=1000))
    await rec.decide("code2", 1, ask("refactor the cache", input_tokens=2000))
    await rec.decide("code3", 2, ask("refactor the tests", input_tokens=500))
    # The caller names the cloud role for a job that becomes local-only.
    private = ask("write the module", job="private", role="coder", input_tokens=1000)
    await rec.decide("private", 3, private)
    await rec.decide("big", 3.5, ask("think about this", role="thinker", input_tokens=8000))
    for name, hours, tokens in (("b1", 4, 1000), ("b2", 5, 3000), ("b3", 6, 1000),
                                ("b4", 7, 1000), ("b5", 25, 1000)):  # fmt: skip
        await rec.decide(name, hours, ask("nightly batch", job="batch", input_tokens=tokens))
    await rec.decide("sum", 8, ask("summarize the logs", input_tokens=500))
    await rec.decide("script", 8.5, ask("export the tables", job="etl"))
    rec.decide_without_request("approx1", 9, ask("refactor legacy code", input_tokens=1500))
    rec.decide_without_request("approx2", 9.5, ask("think hard", role="thinker", input_tokens=1000))
    for name, inp, out in (("code1", 1000, 200), ("code2", 2000, 500), ("private", 1000, 100),
                           ("b1", 1000, 100), ("b2", 3000, 1000), ("b3", 1000, 100),
                           ("sum", 500, 100)):  # fmt: skip
        rec.call(name, inp, out)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: Backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    if request.param == "postgres":
        made = make_postgres()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
async def recorded(backend: Backend) -> tuple[Backend, Recorder]:
    ledger = backend.open()
    rec = Recorder(_policy(OLD), ledger)
    try:
        await record_history(rec)
    finally:
        ledger.close()
    return backend, rec


def _replay(backend: Backend, text: str = NEW) -> ReplayReport:
    ledger = backend.open()
    try:
        return load_replay(_policy(text), ledger, T0 - timedelta(days=1), T0 + timedelta(days=3))
    finally:
        ledger.close()


def _cost(report: ReplayReport, scope: str) -> dict[str, tuple[int, int, int]]:
    return {
        target: (d.old_micro, d.new_micro, d.delta_micro)
        for target, d in report.cost[scope].items()
    }


async def test_replay_reports_moves_refusals_and_caps(recorded: tuple[Backend, Recorder]) -> None:
    backend, rec = recorded
    report = _replay(backend)
    assert (report.total, report.unchanged, report.run) == (14, 6, 7)
    assert (report.approximate, report.estimated, report.skipped) == (2, 6, 0)
    # The cheaper coder takes every code-intent decision (the approximate one included);
    # the caller's role is read back from the old record, so "think hard" stays put.
    assert [m.model_dump() for m in report.moved] == [
        {"from": "cloud-coder", "to": "cloud-cheap", "count": 4}
    ]
    assert report.refusals_added == {"BUDGET_EXHAUSTED": 2, "LOCAL_ONLY_VIOLATION": 1}
    assert report.refusals_removed == {"OVER_BUDGET": 1}
    changed = {c.decision_id: c for c in report.changes}
    names = ("code1", "code2", "code3", "approx1", "private", "big", "b3", "b4")
    assert set(changed) == {rec.ids[n] for n in names}
    assert changed[rec.ids["private"]].new.code == "LOCAL_ONLY_VIOLATION"
    assert changed[rec.ids["big"]].old.code == "OVER_BUDGET"
    assert changed[rec.ids["big"]].new.model == "cloud-big"
    assert changed[rec.ids["approx1"]].approximate
    assert not changed[rec.ids["code1"]].approximate
    # $0.10 a day: b1 (13,000) and b2 (60,000) fit; b3 needs up to 40,000 with 27,000 left,
    # and so does b4; the next day's window starts empty and b5 is routed again.
    assert [c.model_dump() for c in report.caps_hit] == [
        {"line": "job:batch:day", "window": "day", "cap_usd_micro": 100000, "cap_tokens": None,
         "first_at": "2025-03-03T15:00:00+00:00", "refused_after": 2, "diverted": 0}
    ]  # fmt: skip
    assert changed[rec.ids["b3"]].new.code == "BUDGET_EXHAUSTED"
    assert rec.ids["b5"] not in changed


async def test_replay_costs_every_scope_from_the_real_tokens(
    recorded: tuple[Backend, Recorder],
) -> None:
    backend, rec = recorded
    report = _replay(backend)
    costs = {c.decision_id: (c.old_cost_micro, c.new_cost_micro) for c in report.changes}
    # Run: the calls' real tokens at the new prices (code1: 1000 in + 200 out at $1/$2 per
    # Mtok = 1,400 micro-USD; it was 6,000 at $3/$15). Never run: the worst case.
    assert costs[rec.ids["code1"]] == (6000, 1400)
    assert costs[rec.ids["code3"]] == (500 * 3 + 1000 * 15, 500 * 1 + 1000 * 2)
    assert costs[rec.ids["big"]] == (0, 8000 * 10 + 1000 * 30)
    assert _cost(report, "total") == {"all": (266000, 273400, 7400)}
    assert _cost(report, "model") == {
        "cloud-big": (206000, 263000, 57000),
        "cloud-cheap": (0, 10400, 10400),
        "cloud-coder": (60000, 0, -60000),
        "local-small": (0, 0, 0),
    }
    assert _cost(report, "role") == {
        "chat": (0, 0, 0),
        "cheap": (0, 10400, 10400),
        "coder": (60000, 0, -60000),
        "thinker": (206000, 263000, 57000),
    }
    assert _cost(report, "job") == {
        "(none)": (95500, 160400, 64900),
        "batch": (166000, 113000, -53000),
        "private": (4500, 0, -4500),
    }
    assert _cost(report, "provider") == {"cloud": (266000, 273400, 7400), "local": (0, 0, 0)}
    assert _cost(report, "budget") == {"job:batch:day": (166000, 113000, -53000)}


async def test_replay_under_the_same_policy_changes_nothing(
    recorded: tuple[Backend, Recorder],
) -> None:
    backend, _ = recorded
    report = _replay(backend, OLD)
    assert (report.total, report.unchanged, report.changes) == (14, 14, [])
    assert report.moved == []
    assert report.refusals_added == report.refusals_removed == {}
    assert all(d.delta_micro == 0 for targets in report.cost.values() for d in targets.values())


async def test_the_window_selects_decisions_by_time(recorded: tuple[Backend, Recorder]) -> None:
    backend, _ = recorded
    ledger = backend.open()
    try:
        # [T0 + 4h, T0 + 6h): b1 and b2 only.
        report = load_replay(_policy(NEW), ledger, T0 + timedelta(hours=4), T0 + timedelta(hours=6))
    finally:
        ledger.close()
    assert (report.total, report.unchanged, report.run) == (2, 2, 2)
    assert report.window.since == "2025-03-03T13:00:00+00:00"
    assert _cost(report, "budget") == {"job:batch:day": (73000, 73000, 0)}
    assert report.caps_hit == []


async def test_quality_rules_see_the_ledgers_evidence(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    ledger = backend.open()
    try:
        await record_history(Recorder(_policy(OLD), ledger))
        rule = "quality: {suite: code-suite, min_pass_rate: 0.8, min_cases: 2,"
        rule += " without_evidence: refuse}"
        strict = _policy(NEW.replace("requires: [code]}", f"requires: [code], {rule}}}"))
        window = (T0 - timedelta(days=1), T0 + timedelta(days=3))
        unproven = load_replay(strict, ledger, *window)
        ledger.put_eval_results([
            EvalResult(suite="code-suite", case_id=f"c{i}", model="cloud-cheap", source="live",
                       outcome="pass", at_us=at_us_of(T0) + i)
            for i in range(2)
        ])  # fmt: skip
        proven = load_replay(strict, ledger, *window)
    finally:
        ledger.close()
    # No evidence: the four code decisions are refused; two passes qualify cloud-cheap.
    assert unproven.refusals_added["QUALITY_UNPROVEN"] == 4
    assert "QUALITY_UNPROVEN" not in proven.refusals_added
    assert [m.model_dump() for m in proven.moved] == [
        {"from": "cloud-coder", "to": "cloud-cheap", "count": 4}
    ]


# -- pure replays of hand-fed records --------------------------------------------------------


def _record(policy: Policy, request: RouteRequest, *, with_request: bool = True) -> dict[str, Any]:
    record = route(request, policy).model_dump(mode="json")
    if with_request:
        record["request"] = {"job": request.job, "role": request.role, "channel": None,
                             "context_tokens": None, "input_tokens": request.input_tokens,
                             "needs": [], "local_only": False, "risk": None,
                             "max_output_tokens": request.max_output_tokens}  # fmt: skip
    return record


def _call(
    decision_id: str, model: str, inp: int, out: int, cost: int, code: str = "OK"
) -> dict[str, object]:
    return {"kind": "call", "decision_id": decision_id, "model": model, "code": code,
            "input_tokens": inp, "output_tokens": out, "cost_micro": cost}  # fmt: skip


def test_a_rolling_cap_refuses_inside_its_window_and_frees_after_it() -> None:
    old = _policy(OLD)
    new = _policy(
        NEW.replace(
            "defaults:",
            "budgets: [{scope: provider, target: cloud, window: rolling, window_seconds: 3600,"
            ' usd: "0.05"}]\ndefaults:',
        )
    )
    start = at_us_of(T0)
    minute = 60_000_000
    decisions = [
        (
            f"d{i}",
            start + at * minute,
            _record(old, RouteRequest("x", role="thinker", input_tokens=1000)),
        )
        for i, at in enumerate((0, 10, 20, 61))
    ]
    # d0 ran: 1000 in + 1000 out on cloud-big = 40,000 micro-USD; d1 needs up to 40,000 with
    # 10,000 left and is refused, as is d2; at minute 61 d0 has left the hour.
    calls = [_call("d0", "cloud-big", 1000, 1000, 40000)]
    report = replay(new, decisions, calls)
    assert report.refusals_added == {"BUDGET_EXHAUSTED": 2}
    assert [c.decision_id for c in report.changes] == ["d1", "d2"]
    (hit,) = report.caps_hit
    assert (hit.line, hit.window, hit.refused_after) == (
        "provider:cloud:rolling3600s",
        "rolling 3600s",
        2,
    )
    assert hit.first_at == "2025-03-03T09:10:00+00:00"


def test_a_cap_that_only_diverts_is_reported_as_diverting() -> None:
    old = _policy(OLD)
    new = _policy(
        NEW.replace(
            "defaults:",
            'budgets: [{scope: model, target: cloud-cheap, window: day, usd: "0.004"}]\ndefaults:',
        )
    )
    start = at_us_of(T0)
    decisions = [
        (f"d{i}", start + i, _record(old, RouteRequest("refactor it", input_tokens=1000)))
        for i in range(2)
    ]
    # d0 on cloud-cheap costs up to 1000 + 2000 = 3,000 of the 4,000; d1 goes to cloud-coder.
    report = replay(new, decisions, [])
    assert [m.model_dump() for m in report.moved] == [
        {"from": "cloud-coder", "to": "cloud-cheap", "count": 1}
    ]
    assert report.unchanged == 1
    (hit,) = report.caps_hit
    assert (hit.line, hit.refused_after, hit.diverted) == ("model:cloud-cheap:day", 0, 1)
    assert report.estimated == 2


def test_fallback_calls_keep_their_model_and_released_calls_cost_nothing() -> None:
    old = _policy(OLD)
    new = _policy(NEW)
    record = _record(old, RouteRequest("refactor it", input_tokens=1000))
    calls = [
        _call("d", "cloud-coder", 1000, 0, 0, code="PROVIDER_UNAVAILABLE"),  # released
        _call("d", "cloud-big", 1000, 100, 13000),  # a fallback step, still in the new policy
    ]
    report = replay(new, [("d", at_us_of(T0), record)], calls)
    # old: what was charged (0 + 13,000); new: the fallback's tokens at cloud-big's prices.
    assert _cost(report, "total") == {"all": (13000, 13000, 0)}
    assert _cost(report, "model")["cloud-big"] == (13000, 13000, 0)
    assert (report.run, report.estimated) == (1, 0)


def test_the_input_size_is_the_one_the_decision_counted() -> None:
    old = _policy(OLD)
    # The caller gave only context_tokens: the decision counted the task's words on top.
    record = _record(old, RouteRequest("refactor this please", context_tokens=5000))
    record["request"]["context_tokens"] = 5000
    counted = record["tokens"]["input_tokens"]
    assert counted > 5000
    report = replay(_policy(NEW), [("d", 1, record)], [])
    # Never run: cloud-cheap's worst case on the counted input (1 + 2 USD/Mtok, 1000 out).
    (change,) = report.changes
    assert change.new_cost_micro == counted * 1 + 1000 * 2
    assert change.old_cost_micro == counted * 3 + 1000 * 15
    assert report.approximate == 0


def test_a_job_the_new_policy_dropped_is_an_error_and_script_only_stays() -> None:
    old = _policy(OLD)
    decisions = [
        ("d0", 1, _record(old, RouteRequest("export", job="etl"))),
        ("d1", 2, _record(old, RouteRequest("export", job="etl"))),
    ]
    same = replay(_policy(NEW), decisions, [])
    assert (same.unchanged, same.changes) == (2, [])
    dropped = _policy(NEW.replace("  etl: {script_only: true}\n", ""))
    report = replay(dropped, decisions, [])
    assert report.refusals_added == {"UNKNOWN_JOB": 2}
    assert {(c.old.outcome, c.new.outcome) for c in report.changes} == {("script_only", "error")}
    # A job that now runs a role is routed, on a size never counted: approximate.
    scripted = _policy(NEW.replace("etl: {script_only: true}", "etl: {role: chat}"))
    report = replay(scripted, decisions, [])
    assert {(c.new.outcome, c.new.model, c.approximate) for c in report.changes} == {
        ("route", "local-small", True)
    }
    assert report.approximate == 2


def test_a_defaulted_intent_is_not_replayed_as_if_it_had_matched() -> None:
    with_default = OLD.replace("defaults: {role: chat,", "defaults: {intent: code, role: chat,")
    policy = _policy(with_default)
    # No keyword: the default intent applies, unmatched, so the default role chat picks.
    record = _record(policy, RouteRequest("hello there", input_tokens=100))
    assert (record["intent"], record["model"]) == ("code", "local-small")
    report = replay(policy, [("d", 1, record)], [])
    assert (report.unchanged, report.changes) == (1, [])


def test_unreadable_records_are_skipped() -> None:
    report = replay(_policy(NEW), [("d", 1, {"route": "x"})], [])
    assert (report.total, report.skipped) == (0, 1)


# -- the command -----------------------------------------------------------------------------


def test_parse_when() -> None:
    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    assert parse_when("7d", now, "--since") == datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    assert parse_when("12h", now, "--since") == datetime(2025, 3, 10, 0, 0, tzinfo=UTC)
    assert parse_when("30m", now, "--since") == datetime(2025, 3, 10, 11, 30, tzinfo=UTC)
    assert parse_when("2025-03-01", now, "--since") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_when("2025-03-01T08:00:00+02:00", now, "--since") == datetime(
        2025, 3, 1, 6, 0, tzinfo=UTC
    )
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        parse_when("last week", now, "--since")


def _rolegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rolegate", *args], capture_output=True, text=True, cwd=ROOT,
        timeout=120, check=False,
    )  # fmt: skip


def _rows(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        decisions = conn.execute("SELECT COUNT(*) FROM rolegate_decisions").fetchone()[0]
        audit = conn.execute("SELECT COUNT(*) FROM rolegate_audit").fetchone()[0]
    finally:
        conn.close()
    return int(decisions), int(audit)


async def test_the_command_prints_the_report_and_writes_nothing(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    ledger = backend.open()
    try:
        await record_history(Recorder(_policy(OLD), ledger))
    finally:
        ledger.close()
    new_file = tmp_path / "new.yaml"
    new_file.write_text(NEW)
    before = _rows(backend.path)
    window = ("--since", "2025-03-02", "--until", "2025-03-06T00:00:00Z")
    done = _rolegate(
        "replay", "--policy", str(new_file), "--ledger", backend.url, *window, "--json"
    )
    assert done.returncode == 0, done.stderr
    full = json.loads(done.stdout)
    assert full["moved"] == [{"from": "cloud-coder", "to": "cloud-cheap", "count": 4}]
    assert full["caps_hit"][0]["refused_after"] == 2
    assert full["cost"]["total"]["all"] == {
        "old_micro": 266000,
        "new_micro": 273400,
        "delta_micro": 7400,
    }
    assert len(full["changes"]) == 8
    assert full["window"] == {
        "since": "2025-03-02T00:00:00+00:00",
        "until": "2025-03-06T00:00:00+00:00",
    }

    text = _rolegate(
        "replay", "--policy", str(new_file), "--ledger", backend.url, *window, "--show", "3"
    )
    assert text.returncode == 0, text.stderr
    out = text.stdout
    moved = "  from         to           decisions\n  cloud-coder  cloud-cheap          4\n"
    assert "routes moved\n" + moved in out
    assert "  BUDGET_EXHAUSTED          2        0\n" in out
    assert "  OVER_BUDGET               0        1\n" in out
    assert "  total     all            $0.266000  $0.273400  +$0.007400\n" in out
    assert "  job:batch:day  day     2025-03-03T15:00:00+00:00        2         0\n" in out
    assert "changed decisions (first 3 of 8; --json lists all)" in out
    # Every table's rows are as wide as its header (numbers right-aligned, nothing ragged).
    for block in out.split("\n\n")[1:5]:
        rows = block.splitlines()[1:]
        assert len({len(row) for row in rows}) == 1, block
    assert len(out.split("\n\n")[-1].splitlines()) == 1 + 1 + 3  # title, header, 3 rows
    assert _rows(backend.path) == before  # nothing written


def test_the_command_refuses_bad_arguments_with_a_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: broken\n")
    missing = f"sqlite://{tmp_path / 'none.sqlite3'}"
    good = tmp_path / "new.yaml"
    good.write_text(NEW)
    for args, code in (
        (("--policy", str(bad), "--ledger", missing), "POLICY_INVALID"),
        (("--policy", str(tmp_path / "absent.yaml"), "--ledger", missing), "POLICY_LOAD"),
        (("--policy", str(good), "--since", "yesterday", "--ledger", missing), "INVALID_ARGUMENT"),
        (
            ("--policy", str(good), "--since", "1d", "--until", "2d", "--ledger", missing),
            "INVALID_ARGUMENT",
        ),
        (("--policy", str(good), "--ledger", missing), "INVALID_ARGUMENT"),
        (("--policy", str(good), "--ledger", "mysql://x"), "BUDGET_UNAVAILABLE"),
    ):
        done = _rolegate("replay", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(f"{code}: "), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "none.sqlite3").exists()  # replay never creates a ledger


def test_render_without_changes_says_so() -> None:
    report = replay(_policy(NEW), [], [])
    text = render(report)
    assert "routes moved: none" in text
    assert "refusals: no change" in text
    assert "budget caps hit: none" in text
    assert re.search(r"^  total +all +\$0\.000000  \$0\.000000  \$0\.000000$", text, re.M)
