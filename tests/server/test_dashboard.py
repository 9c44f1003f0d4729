"""The dashboard (`GET /dashboard`, `/dashboard.json`, `rolegate dashboard`) over a real SQLite
ledger seeded the real way: decisions through route_task, calls reserved and committed with
their audit records as accounting.settle writes them, escalations through the work store;
each at a chosen time over three weeks. The page is loaded in headless Chromium (Debian's
package, see scripts/setup_chromium.sh): its DOM must hold every section and one chart per
figure with bars matching the ledger, and its screenshot must show them."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx2
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette

from rolegate.engine.core import PolicyEngine
from rolegate.engine.routing import route_task
from rolegate.engine.store import Store
from rolegate.ledger import Ledger, _budget_sql, open_ledger
from rolegate.ledger.records import to_us
from rolegate.policy import Policy, RouteRequest, load_policy, load_policy_text
from rolegate.server.dashboard import dashboard_data, dashboard_routes
from rolegate.server.dashboard_svg import Bar, compact_usd, day_chart, hbar_chart, tokens
from rolegate.server.http import BearerAuth, transport_security
from tests.support.servers import free_port, missing, stop, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
MARKER = "QUOKKA-7319 please keep this prompt secret"
# The dashboard's "now": its last 14 days are 2025-02-20 .. 2025-03-05 (UTC).
NOW = datetime(2025, 3, 5, 15, 0, tzinfo=UTC)
DAYS = [(NOW.date() - timedelta(days=13 - i)).isoformat() for i in range(14)]

POLICY = """
version: 1
name: dashboard-test
revision: "7"
providers:
  local: {type: ollama, base_url: "http://127.0.0.1:9", locality: local}
  cloud: {type: openai, base_url: "https://api.example.com/v1", locality: cloud}
models:
  local-small:
    {provider: local, name: "small:1b", memory_gb: 1, context_window: 8192,
     reserve_tokens: 1024, capabilities: [chat, summarize]}
  cloud-coder:
    {provider: cloud, name: coder, context_window: 128000, reserve_tokens: 8000,
     capabilities: [chat, code], price: {input_per_mtok: "3.00", output_per_mtok: "15.00"}}
  cloud-big:
    {provider: cloud, name: big, context_window: 128000, reserve_tokens: 8000,
     capabilities: [chat, code, reasoning],
     price: {input_per_mtok: "10.00", output_per_mtok: "30.00"}}
roles:
  chat: {model: local-small}
  coder: {model: cloud-coder, fallback: {models: [cloud-big], mode: auto},
          escalation: {ladder: [cloud-big]}}
  thinker: {model: cloud-big}
intents:
  code: {match: {keywords: [refactor]}, requires: [code]}
jobs:
  etl: {script_only: true}
defaults: {role: chat, max_output_tokens: 1000}
residency: {memory_gb: 4}
budgets:
  - {scope: global, window: day, usd: "0.20"}
  - {scope: model, target: cloud-big, window: month, usd: "0.30"}
  - {scope: role, target: coder, window: rolling, window_seconds: 3600, tokens: 200000}
"""


def at(day: str, hour: float) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(hours=hour)


@dataclass
class Seeder:
    """Writes as the engine does, at ``now`` (the ledger's audit times follow it: see the
    ``seeded`` fixture)."""

    policy: Policy
    ledger: Ledger
    now: datetime = NOW

    async def decide(self, when: datetime, request: RouteRequest) -> str:
        self.now = when
        store = Store(self.policy, ledger=self.ledger, clock=lambda: when)
        return (await route_task(self.policy, store, request)).decision_id

    def call(self, when: datetime, role: str, model: str, inp: int, out: int, **extra: Any) -> str:
        """A call as accounting.settle records it: reserved, then committed (or released
        when it produced nothing) with its audit record in the same transaction."""
        self.now = when
        info = self.policy.models[model]
        code = extra.pop("code", "OK")
        worst = info.worst_case_cost_micro(inp, out)
        request_id = "req_" + uuid.uuid4().hex
        lines = self.policy.budgets_touching(
            job=None, role=role, model=model, provider=info.model.provider
        )
        self.ledger.reserve(request_id=request_id, owner="test", lines=lines, cost_micro=worst,
                            tokens=inp + out, now=when, lease_s=60)  # fmt: skip
        record = {
            "role": role, "job": None, "decision_id": None, "task_id": extra.pop("task", None),
            "stage": None, "attempt": 1, **extra, "kind": "call", "request_id": request_id,
            "model": model, "provider": info.model.provider, "policy_hash": self.policy.hash,
            "code": code, "ms": 120.5, "input_tokens": inp,
        }  # fmt: skip
        if code == "OK":
            record.update(output_tokens=out, cost_micro=worst)
            self.ledger.commit(request_id, cost_micro=worst, tokens=inp + out, now=when,
                               audit=record)  # fmt: skip
        else:
            record.update(output_tokens=0, cost_micro=0)
            self.ledger.release(request_id, when, audit=record)
        return request_id

    def escalate(self, when: datetime, task: str, moved: bool) -> str:
        """An escalation evaluation as escalation.run_escalation records it."""
        self.now = when
        provenance = "esc_" + uuid.uuid4().hex
        record = {
            "kind": "escalation", "request_id": provenance, "task_id": task, "role": "coder",
            "model": "cloud-coder", "to_model": "cloud-big" if moved else None,
            "code": "ESCALATE" if moved else "NO_ESCALATION", "policy_hash": self.policy.hash,
            "consent": None, "fired": "contract_failures" if moved else "",
        }  # fmt: skip
        if moved:
            assert self.ledger.record_escalation(
                task_id=task, role="coder", step=0, provenance_id=provenance,
                from_model="cloud-coder", to_model="cloud-big", fired=["contract_failures"],
                policy_hash=self.policy.hash, consent=None, now=when, audit=record,
            )  # fmt: skip
        else:
            self.ledger.audit(record)
        return provenance


@dataclass
class Seeded:
    policy: Policy
    path: Path
    ledger: Ledger
    fallback_id: str
    escalation_id: str

    def engine(self, resident: frozenset[str] = frozenset({"local-small"})) -> PolicyEngine:
        """An engine at NOW over the seeded ledger; its residency probe says ``resident``."""
        store = Store(self.policy, ledger=self.ledger, clock=lambda: NOW)

        async def snapshot() -> frozenset[str]:
            return resident

        probe = SimpleNamespace(snapshot=snapshot)
        return PolicyEngine(self.policy, store, residency=cast(Any, probe))


async def seed(s: Seeder) -> tuple[str, str]:
    """Three weeks, in time order: (the fallback call's id, the escalation's id)."""
    ask = RouteRequest
    code = ask("refactor the parser", input_tokens=900)
    s.call(at("2025-02-10", 10), "thinker", "cloud-big", 10000, 2000)  # before the window
    await s.decide(at("2025-02-20", 8), code)
    s.call(at("2025-02-20", 9), "coder", "cloud-coder", 1000, 200)
    await s.decide(at("2025-02-25", 8), code)
    s.call(at("2025-02-25", 12), "thinker", "cloud-big", 5000, 1000)
    s.call(at("2025-02-25", 13), "coder", "cloud-coder", 2000, 500)
    await s.decide(at("2025-03-01", 9), ask("hello", role="chat", input_tokens=100000))
    fallback = s.call(at("2025-03-02", 11), "coder", "cloud-big", 3000, 1000,
                      fallback_from="cloud-coder", task="task-fb")  # fmt: skip
    await s.decide(at("2025-03-03", 9), ask("export the tables", job="etl"))
    # The marker's text must reach neither the ledger nor the page.
    await s.decide(at("2025-03-04", 9), ask(MARKER, role="chat", input_tokens=50))
    escalation = s.escalate(at("2025-03-04", 16), "task-esc", moved=True)
    s.escalate(at("2025-03-04", 17), "task-calm", moved=False)  # nothing moved: not listed
    await s.decide(at("2025-03-05", 8), code)
    s.call(at("2025-03-05", 10), "coder", "cloud-coder", 4000, 1000)
    s.call(at("2025-03-05", 14), "chat", "local-small", 500, 100)
    s.call(at("2025-03-05", 14.5), "coder", "cloud-coder", 1000, 0, code="PROVIDER_TIMEOUT")
    return fallback, escalation


@pytest.fixture
async def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Seeded]:
    policy = load_policy_text(POLICY, "yaml", "<dashboard-test>")
    path = tmp_path / "ledger.sqlite3"
    ledger = open_ledger(f"sqlite://{path}")
    seeder = Seeder(policy, ledger)
    # The ledger stamps each audit record with the wall clock; here, with the seeder's.
    clock = SimpleNamespace(time_ns=lambda: to_us(seeder.now) * 1000)
    with monkeypatch.context() as patch:
        patch.setattr(_budget_sql, "time", clock)
        fallback, escalation = await seed(seeder)
    try:
        yield Seeded(policy, path, ledger, fallback, escalation)
    finally:
        ledger.close()


# -- the figures ------------------------------------------------------------------------------

GLOBAL = {"2025-02-20": 6000, "2025-02-25": 93500, "2025-03-02": 60000, "2025-03-05": 27000}
BIG_MONTH = {"2025-02-25": 80000, "2025-03-02": 60000}
CODER_TOKENS = {"2025-02-20": 1200, "2025-02-25": 2500, "2025-03-02": 4000, "2025-03-05": 5000}


def per_day(figures: dict[str, int]) -> list[int]:
    return [figures.get(day, 0) for day in DAYS]


async def test_the_json_has_the_seeded_figures(seeded: Seeded) -> None:
    data = json.loads((await get(seeded.engine(), "/dashboard.json")).text)
    assert data["window"] == {"days": DAYS, "since": "2025-02-20T00:00:00+00:00",
                              "timezone": "UTC"}  # fmt: skip
    lines = {line["id"]: line for line in data["budgets"]}
    assert list(lines) == ["global:*:day", "model:cloud-big:month", "role:coder:rolling3600s"]
    day, month, rolling = lines.values()
    assert [d["usd_micro"] for d in day["daily"]] == per_day(GLOBAL)
    assert (day["cap_usd_micro"], day["spent_usd_micro"], day["left_usd_micro"]) == (
        200000, 27000, 173000)  # fmt: skip
    # Month to date: February's first call (before the window) counts until March starts.
    assert [d["usd_micro"] for d in month["daily"]] == per_day(BIG_MONTH)
    assert month["daily"][0]["before_usd_micro"] == 160000
    assert month["running"] == [160000] * 5 + [240000] * 4 + [0] + [60000] * 4
    assert (month["spent_usd_micro"], month["measure"]) == (60000, "usd")
    # A token cap: tokens charged per day; the call that timed out was released, not charged.
    assert rolling["measure"] == "tokens"
    assert [d["tokens"] for d in rolling["daily"]] == per_day(CODER_TOKENS)
    assert rolling["running"] is None

    assert data["decisions"] == [
        {"outcome": "route", "code": "ROUTED", "count": 4},
        {"outcome": "script_only", "code": "SCRIPT_ONLY", "count": 1},
        {"outcome": "refuse", "code": "OVER_BUDGET", "count": 1},
    ]
    models = {m["model"]: m for m in data["models"]}
    assert list(models) == ["cloud-coder", "cloud-big", "local-small"]
    assert {k: models["cloud-coder"][k] for k in ("calls", "spend_micro", "input_tokens",
            "output_tokens", "refusals", "decisions")} == {
        "calls": 4, "spend_micro": 46500, "input_tokens": 8000, "output_tokens": 1700,
        "refusals": 1, "decisions": 3}  # fmt: skip
    assert (models["cloud-big"]["calls"], models["cloud-big"]["spend_micro"]) == (2, 140000)
    assert models["cloud-big"]["fallbacks"] == 1
    assert (models["local-small"]["calls"], models["local-small"]["spend_micro"]) == (1, 0)
    totals = data["totals"]
    assert {k: totals[k] for k in ("spend_micro", "calls", "decisions", "refusals", "fallbacks",
                                   "escalations")} == {
        "spend_micro": 186500, "calls": 7, "decisions": 6, "refusals": 2, "fallbacks": 1,
        "escalations": 1}  # fmt: skip

    events = [(e["kind"], e["id"], e["from"], e["to"], e["code"], e["at"]) for e in data["events"]]
    assert events == [
        ("escalation", seeded.escalation_id, "cloud-coder", "cloud-big", "ESCALATE",
         "2025-03-04T16:00:00+00:00"),
        ("fallback", seeded.fallback_id, "cloud-coder", "cloud-big", "OK",
         "2025-03-02T11:00:00+00:00"),
    ]  # fmt: skip
    policy = data["policy"]
    assert (policy["name"], policy["revision"], policy["hash"]) == (
        "dashboard-test", "7", seeded.policy.hash)  # fmt: skip
    assert {r["role"]: r["model"] for r in policy["roles"]} == {
        "chat": "local-small", "coder": "cloud-coder", "thinker": "cloud-big"}  # fmt: skip
    assert policy["residency"] == {"tracked": ["local-small"], "resident": ["local-small"]}
    assert {m["model"]: m["resident"] for m in policy["models"]} == {
        "cloud-big": None, "cloud-coder": None, "local-small": True}  # fmt: skip


async def test_fewer_days_and_bad_days(seeded: Seeded) -> None:
    data = json.loads((await get(seeded.engine(), "/dashboard.json?days=3")).text)
    assert data["window"]["days"] == DAYS[-3:]
    assert data["totals"]["spend_micro"] == 27000  # 2025-03-03 .. 03-05
    for bad in ("0", "93", "x", "-1", "\u00b2", "9" * 5000):
        assert (await get(seeded.engine(), f"/dashboard?days={bad}")).status_code == 400


async def test_without_a_ledger_the_page_says_so() -> None:
    policy = load_policy_text(POLICY, "yaml", "<dashboard-test>")
    engine = PolicyEngine(policy, Store(policy, clock=lambda: NOW))
    page = await get(engine, "/dashboard")
    assert page.status_code == 200
    assert "ledger none: spend is not counted" in page.text
    data = await dashboard_data(engine)
    assert data["totals"]["calls"] == 0
    assert data["policy"]["residency"] == {"tracked": ["local-small"], "resident": None}


async def get(engine: PolicyEngine, path: str, app: Any = None, **headers: str) -> httpx2.Response:
    app = app or Starlette(routes=dashboard_routes(engine))
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8766") as http:
        return await http.get(path, headers=headers)


async def test_the_bearer_token_and_host_checks_apply(seeded: Seeded) -> None:
    engine = seeded.engine()
    security = transport_security("127.0.0.1", 8766)
    app = BearerAuth(Starlette(routes=dashboard_routes(engine, security=lambda: security)), "tok")
    for path in ("/dashboard", "/dashboard.json"):
        assert (await get(engine, path, app)).status_code == 401
        assert (await get(engine, path, app, authorization="Bearer nope")).status_code == 401
        page = await get(engine, path, app, authorization="Bearer tok")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        wrong = await get(engine, path, app, authorization="Bearer tok", host="evil.example")
        assert wrong.status_code == 421


async def test_no_prompt_text_anywhere(seeded: Seeded) -> None:
    engine = seeded.engine()
    texts = [(await get(engine, path)).text for path in ("/dashboard", "/dashboard.json")]
    word = MARKER.split()[0]
    assert all(word not in text for text in texts)
    assert word.encode() not in seeded.path.read_bytes()
    # The other tasks' texts neither.
    assert all("refactor the parser" not in text for text in texts)


def test_charts_draw_what_they_are_given() -> None:
    assert [compact_usd(m) for m in (0, 42, 9_999, 10_000, 1_234_567, -5_000_000)] == [
        "$0", "$0.0000", "$0.0100", "$0.01", "$1.23", "-$5.00"]  # fmt: skip
    days = ["2025-03-01", "2025-03-02"]
    # A cap within reach is a line on the scale; one far above is named in the corner.
    near = day_chart("budget", "t", days, [100, 0], compact_usd, cap=300)
    assert 'class="cap"' in near
    assert near.count('class="bar') == 1
    far = day_chart("budget", "t", days, [100, 50], compact_usd, cap=100_000)
    assert 'class="cap"' not in far
    assert "above the chart" in far
    empty = hbar_chart("decisions", "<t>", [], tokens)
    assert "nothing recorded" in empty
    assert "<t>" not in empty  # every text is escaped
    named = hbar_chart("x", "t", [Bar("<script>", 3)], tokens)
    assert "<script>" not in named
    assert 'data-value="3"' in named


# -- in a real browser ---------------------------------------------------------------------------


def chromium() -> str:
    given = (os.environ.get("ROLEGATE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium")
    found = next((path for path in given if path and os.access(path, os.X_OK)), None)
    if found is None:
        missing("no Chromium: run `bash scripts/setup_chromium.sh` (Debian's chromium package)")
    return found


@pytest.fixture
def served(seeded: Seeded) -> Iterator[str]:
    """The dashboard over the seeded ledger on a loopback port, in a thread."""
    port = free_port()
    security = transport_security("127.0.0.1", port)
    app = Starlette(routes=dashboard_routes(seeded.engine(), security=lambda: security))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                            lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server stopped"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/dashboard"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-dev-shm-usage", "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1600", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done


class Dom(HTMLParser):
    """The sections, and each chart's bars, lines and kind, from the browser's DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.charts: list[dict[str, Any]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        classes = found.get("class", "").split()
        if tag == "section":
            self.sections.append(found.get("id", ""))
        elif tag == "svg":
            self.charts.append({"kind": classes[1], "bars": [], "cap": None, "running": None})
        elif tag == "rect" and "bar" in classes:
            self.charts[-1]["bars"].append(
                (found["data-label"], int(found["data-value"]), float(found["height"]))
            )
        elif tag == "line" and "cap" in classes:
            self.charts[-1]["cap"] = int(found["data-value"])
        elif tag == "polyline":
            self.charts[-1]["running"] = found["points"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def bars(chart: dict[str, Any]) -> dict[str, int]:
    return {label: value for label, value, _ in chart["bars"]}


def test_the_page_in_headless_chromium(served: str, seeded: Seeded, tmp_path: Path) -> None:
    dom = Dom()
    dom.feed(run_chromium(tmp_path, "--dump-dom", served).stdout.decode())
    assert dom.sections == ["summary", "budgets", "decisions", "models", "events", "policy"]
    kinds = [c["kind"] for c in dom.charts]
    assert kinds == ["budget"] * 3 + ["decisions", "model-calls", "model-spend"]
    day, month, rolling, decisions, calls, spend = dom.charts
    assert bars(day) == GLOBAL
    assert day["cap"] == 200000
    # Bar heights are proportional to the values they stand for (one scale per chart).
    scale = max(height / value for _, value, height in day["bars"])
    for _, value, height in day["bars"]:
        assert height == pytest.approx(value * scale, abs=0.01)
    assert bars(month) == BIG_MONTH
    assert month["cap"] == 300000
    assert month["running"] is not None
    assert len(month["running"].split()) == 14
    assert bars(rolling) == CODER_TOKENS
    assert rolling["cap"] is None  # a rolling window's cap is no daily line
    assert bars(decisions) == {"route · ROUTED": 4, "script_only · SCRIPT_ONLY": 1,
                               "refuse · OVER_BUDGET": 1}  # fmt: skip
    assert bars(calls) == {"cloud-coder": 4, "cloud-big": 2, "local-small": 1}
    assert bars(spend) == {"cloud-coder": 46500, "cloud-big": 140000}  # no bar for $0
    text = " ".join(dom.text)
    for expected in (seeded.policy.hash, seeded.escalation_id, seeded.fallback_id, "resident"):
        assert expected in text
    assert MARKER.split()[0] not in text

    shot = tmp_path / "dashboard.png"
    run_chromium(tmp_path, f"--screenshot={shot}", served)
    if os.environ.get("ROLEGATE_DASHBOARD_SCREENSHOT"):
        shutil.copy(shot, os.environ["ROLEGATE_DASHBOARD_SCREENSHOT"])
    check_screenshot(read_png(shot.read_bytes()), SCHEMES["light"])
    dark = tmp_path / "dashboard-dark.png"
    dark_mode = ("--force-dark-mode", "--blink-settings=preferredColorScheme=0")
    run_chromium(tmp_path, *dark_mode, f"--screenshot={dark}", served)
    check_screenshot(read_png(dark.read_bytes()), SCHEMES["dark"])


# Each scheme's colours (dashboard_svg._CSS): the page and card backgrounds; the bars, the
# routed decisions, the spend bars and month-to-date line, and the caps and refusals.
Rgb = tuple[int, int, int]
SCHEMES: dict[str, tuple[tuple[Rgb, Rgb], dict[str, Rgb]]] = {
    "light": (((0xF6, 0xF7, 0xF9), (0xFF, 0xFF, 0xFF)),
              {"accent": (0x3B, 0x6F, 0xD8), "ok": (0x2F, 0x9E, 0x5B),
               "spend": (0xD9, 0x8A, 0x1C), "bad": (0xD6, 0x45, 0x3D)}),
    "dark": (((0x12, 0x16, 0x1C), (0x1B, 0x21, 0x29)),
             {"accent": (0x6D, 0x9B, 0xFF), "ok": (0x4C, 0xC2, 0x7C),
              "spend": (0xF0, 0xA4, 0x3A), "bad": (0xFF, 0x6B, 0x61)}),
}  # fmt: skip


def near(pixels: np.ndarray, rgb: Rgb) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=2) <= 4).sum())


def check_screenshot(pixels: np.ndarray, scheme: tuple[tuple[Rgb, Rgb], dict[str, Rgb]]) -> None:
    """The expected size; the scheme's backgrounds cover most of it (the styles applied);
    every chart colour is there; and the charts (in the top 1000 rows) are not slivers."""
    backgrounds, palette = scheme
    assert pixels.shape == (1600, 1280, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, "a blank or one-colour page"
    assert sum(near(pixels, rgb) for rgb in backgrounds) > pixels.shape[0] * pixels.shape[1] // 2
    for name, rgb in palette.items():
        assert near(pixels, rgb) > 300, f"no {name} pixels: a chart is missing"
    assert near(pixels[:1000], palette["accent"]) > 3000


def read_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA PNG (what Chromium writes) as an (height, width, 3) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, idat = 8, {}, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            idat += body
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, interlace) == (8, 0), (depth, interlace)
    assert colour in (2, 6), colour
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            line = row
        elif kind == 1:  # Sub: a running sum per channel
            line = np.cumsum(row.reshape(width, channels), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            line = (row + prior) % 256
        else:  # Average, Paeth: each byte depends on the one before it
            line = _unfilter_slow(int(kind), row.tolist(), prior.tolist(), channels)
        out[y] = line
        prior = np.asarray(line, dtype=np.int32)
    return out.reshape(height, width, channels)[:, :, :3]


def _unfilter_slow(kind: int, row: list[int], prior: list[int], bpp: int) -> np.ndarray:
    line = [0] * len(row)
    for i, value in enumerate(row):
        left = line[i - bpp] if i >= bpp else 0
        up = prior[i]
        if kind == 3:
            line[i] = (value + (left + up) // 2) % 256
        else:
            corner = prior[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (value + best) % 256
    return np.asarray(line, dtype=np.int32)


# -- rolegate dashboard -----------------------------------------------------------------------


def dashboard_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rolegate", "dashboard", *args]


def test_the_command_serves_a_local_ledger_on_loopback(seeded: Seeded, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    ledger = f"sqlite://{seeded.path}"
    command = dashboard_command("--policy", str(policy), "--ledger", ledger, "--port", str(port))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/dashboard"
        wait_until_healthy(proc, url + ".json", "rolegate dashboard", timeout_s=60)
        data = httpx2.get(url + ".json", timeout=10).json()
        assert data["policy"]["hash"] == seeded.policy.hash
        assert data["ledger"].endswith("ledger.sqlite3")
        # Nothing is loaded: the local Ollama does not answer.
        assert data["policy"]["residency"]["resident"] == []
        home = httpx2.get(f"http://127.0.0.1:{port}/", timeout=10, follow_redirects=True)
        assert home.status_code == 200
        assert "<svg" in home.text
        refused = httpx2.get(url, headers={"Host": "evil.example"}, timeout=10)
        assert refused.status_code == 421
    finally:
        stop(proc)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert f"http://127.0.0.1:{port}/dashboard" in out


def test_the_command_listens_on_loopback_only(tmp_path: Path) -> None:
    done = subprocess.run(dashboard_command("--host", "0.0.0.0"), capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)  # fmt: skip
    assert done.returncode == 2
    assert "loopback only" in done.stderr
    empty = tmp_path / "none.sqlite3"
    command = dashboard_command("--ledger", f"sqlite://{empty}", "--port", "1")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert done.returncode != 0
    assert not empty.exists()  # a dashboard never creates a ledger


def test_the_parser(tmp_path: Path) -> None:
    from rolegate.cli import parse_args

    args = parse_args(["dashboard"])
    assert (args.host, args.port, args.open, args.policy, args.ledger) == (
        "127.0.0.1", 8766, False, None, None)  # fmt: skip


def test_serve_over_http_serves_the_dashboard_behind_its_token(tmp_path: Path) -> None:
    """The wiring: `rolegate serve --transport http` answers /dashboard and /dashboard.json
    only with the bearer token, and with the Host check, like /mcp and /metrics."""
    from tests.server.test_metrics import POLICY as ECHO_POLICY
    from tests.server.test_transports import serving_http

    policy = tmp_path / "policy.yaml"
    policy.write_text(ECHO_POLICY)
    with serving_http("--policy", str(policy)) as (url, token):
        base = url.removesuffix("/mcp")
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx2.get(base + "/dashboard").status_code == 401
        assert (
            httpx2.get(base + "/dashboard", headers={**auth, "Host": "evil:1"}).status_code == 421
        )
        page = httpx2.get(base + "/dashboard", headers=auth)
        data = httpx2.get(base + "/dashboard.json", headers=auth)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text
    assert data.status_code == 200
    assert data.json()["policy"]["hash"] == load_policy(policy).hash
