"""What quality evidence costs: eval throughput on the test model against the same prompts
sent straight to the server, and route_task's round trip over stdio with quality rules
(read from a ledger of stored eval results) versus without.

Run: .venv/bin/python benchmarks/bench_eval.py [--rounds 2] [--calls 1000] [--suite PATH]
                                              [--route-rounds 3] [--skip-eval]
Needs ROLEGATE_LLAMA_SERVER and ROLEGATE_GGUF (scripts/setup_llama.sh prints them) for the
eval part; --skip-eval measures route_task alone.

  eval         one llama.cpp server of the test model (gemma-3 270M, -t 1, --parallel 1) that
               this script starts. Each round runs the suite (examples/evals/math.yaml) with
               `run_suite` on one model at temperature 0 through a policy with a SQLite
               ledger (every case: admission, budget reservation, streamed call, settlement,
               audit, check, result stored), then sends the same messages to the same server
               with the openai SDK's AsyncOpenAI (streamed with usage, same max_tokens,
               temperature 0, sequential, a new connection per request: see direct_round)
               and judges them with the same checkers. One discarded pass each first; then
               rounds alternate which goes first; figures are medians over rounds. A case's
               time is wall clock, from the previous case's end (rolegate: its result
               stored) to its own.
  route_task   `rolegate serve` over stdio (raw JSON-RPC, as bench_server.py) on one SQLite
               ledger seeded with ~2,000 eval results (3 models, 2 suites, each case run
               twice) and a few live ones; two policies alike but for the quality rules
               (two intents and a role). Tasks alternate between ones those rules decide
               and ones they do not; the models each policy picks are printed (* = chosen
               by evidence). --route-rounds sessions per server, alternating; medians.
               The evidence query's own time (ledger.evidence, called directly) is shown
               too: the engine pays it at most once a second per process, off the loop.
Target (issue): route_task p50 still < 2 ms over stdio with quality evidence.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench_server import LEGACY_VERSION, ROLEGATE_TOOLS, Server, Stats, round_trip

from rolegate.engine.bootstrap import build_engine
from rolegate.evals.runner import run_suite
from rolegate.evals.suites import Suite, load_suite, validate_suite
from rolegate.ledger import EvalResult, SqliteLedger
from rolegate.ledger.quality import EvalRun
from rolegate.logs import configure_logging
from rolegate.plugins.base import CheckContext, Checker
from rolegate.plugins.manager import build_registry
from rolegate.policy import RouteRequest, load_policy

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "evals" / "math.yaml"
ALIAS = "gemma3-270m"

EVAL_POLICY = """
version: 1
name: eval-bench
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
models:
  gemma: {{provider: llama, name: {alias}, context_window: 4096, reserve_tokens: 256,
           price: {{input_per_mtok: "1", output_per_mtok: "1"}}, timeout_s: 120}}
roles:
  solver: {{model: gemma, temperature: 0}}
"""

ROUTE_POLICY = """
version: 1
name: quality-route-bench
providers:
  local: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", locality: local}}
models:
  small: {{provider: local, name: small, context_window: 8192, reserve_tokens: 512,
           capabilities: [chat, reasoning, code], price: {{input_per_mtok: "0.1",
           output_per_mtok: "0.1"}}}}
  medium: {{provider: local, name: medium, context_window: 16384, reserve_tokens: 512,
            capabilities: [chat, reasoning, code], price: {{input_per_mtok: "1",
            output_per_mtok: "1"}}}}
  large: {{provider: local, name: large, context_window: 32768, reserve_tokens: 1024,
           capabilities: [chat, reasoning, code], price: {{input_per_mtok: "3",
           output_per_mtok: "15"}}}}
roles:
  general: {{model: small}}
  reviewer: {{model: medium}}
  solver:
    model: large
{solver}
intents:
  math:
    match: {{keywords: [integral, equation]}}
    requires: [reasoning]
{math}
  coding:
    match: {{keywords: [python, function]}}
    requires: [code]
{coding}
"""
QUALITY = {
    "solver": "    candidates: [small, medium]\n"
    "    quality: {suite: code, min_pass_rate: 0.7, min_cases: 10}",
    "math": "    quality: {suite: math, min_pass_rate: 0.8, min_cases: 10}",
    "coding": "    quality: {suite: code, min_pass_rate: 0.7, min_cases: 10}",
}
# Pass rates seeded per (suite, model): small qualifies on math, only medium and large on code.
RATES = {
    ("math", "small"): 0.85,
    ("math", "medium"): 0.9,
    ("math", "large"): 0.97,
    ("code", "small"): 0.4,
    ("code", "medium"): 0.75,
    ("code", "large"): 0.9,
}
CASES_PER_SUITE = 167  # x 3 models x 2 runs x 2 suites = 2,004 eval rows
LIVE_ROWS = 12
TASKS: list[dict[str, Any]] = [
    {"task": "solve this integral of x squared"},  # math intent: quality rule
    {"task": "hello there"},  # no intent
    {"task": "write a python function that parses dates"},  # coding intent: quality rule
    {"task": "summarize the meeting notes", "context_tokens": 2_000},  # no intent
    {"task": "x", "role": "solver"},  # the role's quality rule
    {"task": "x", "role": "general"},  # a role without one
]


# -- the eval part ------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_llama(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """llama.cpp's server of the test model, as tests/support/llama.py starts it."""
    port = free_port()
    with open(log, "wb") as out:
        # -t 1: with two threads the server spin-waits and slows 10-100x when a core is busy.
        proc = subprocess.Popen(
            [os.environ["ROLEGATE_LLAMA_SERVER"], "-m", os.environ["ROLEGATE_GGUF"],
             "--host", "127.0.0.1", "--port", str(port), "-c", "4096", "-t", "1",
             "--parallel", "1", "--no-webui", "-a", ALIAS],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("llama-server did not answer /health in 120 s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Round:
    """One pass over the suite: per-case wall times (ms), the whole pass, what passed."""

    def __init__(self) -> None:
        self.case_ms: list[float] = []
        self.wall_s = 0.0
        self.passed = 0
        self.output_tokens = 0
        self.call_ms: list[float] = []  # rolegate only: the provider call as it reports it

    @property
    def per_s(self) -> float:
        return len(self.case_ms) / self.wall_s


async def rolegate_round(engine: Any, ledger: SqliteLedger, suite: Suite, checkers: Any) -> Round:
    out = Round()
    last = time.perf_counter()

    def progress(*_: object) -> None:
        nonlocal last
        now = time.perf_counter()
        out.case_ms.append((now - last) * 1000)
        last = now

    t0 = time.perf_counter()
    outcome = await run_suite(engine, ledger, suite, checkers, role="solver", models=["gemma"],
                              progress=progress)  # fmt: skip
    out.wall_s = time.perf_counter() - t0
    for judged in outcome.results:
        row = judged.row
        if row.outcome not in ("pass", "fail"):
            raise RuntimeError(f"case {row.case_id}: {row.outcome} {row.code}: {judged.reason}")
        out.passed += row.outcome == "pass"
        out.output_tokens += row.output_tokens or 0
        out.call_ms.append(row.latency_ms or 0.0)
    return out


async def direct_round(client: Any, suite: Suite, checkers: dict[str, Checker]) -> Round:
    """The suite's messages straight to the server. ``client`` keeps no connection alive:
    llama-server closes one after each streamed response (while it announces keep-alive),
    so reusing it fails the next request ("Server disconnected without sending a
    response") whenever the client is faster than the server's FIN."""
    out = Round()
    t0 = time.perf_counter()
    for case in suite.cases:
        started = time.perf_counter()
        messages = []
        system = case.system or suite.system
        if system:
            messages.append({"role": "system", "content": system})
        prompt, chat = case.chat()
        messages.extend(chat or [{"role": "user", "content": prompt or ""}])
        stream = await client.chat.completions.create(
            model=ALIAS,
            messages=messages,
            max_tokens=case.max_output_tokens or suite.max_output_tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts: list[str] = []
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    out.output_tokens += chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
        context = CheckContext(case_id=case.id, model="gemma", contracts={})
        verdict = await checkers[case.check_type].check("".join(parts), case.check_spec(), context)
        out.passed += verdict.passed
        out.case_ms.append((time.perf_counter() - started) * 1000)
    out.wall_s = time.perf_counter() - t0
    return out


async def eval_rounds(
    policy_path: Path, ledger_path: Path, suite: Suite, rounds: int, v1: str
) -> tuple[list[Round], list[Round]]:
    import httpx2
    import openai

    checkers = dict(build_registry().checkers)
    policy = load_policy(policy_path)
    validate_suite(suite, checkers, policy.doc.contracts)
    ledger = SqliteLedger(ledger_path)
    engine = build_engine(policy, ledger=ledger)
    # No keep-alive: see direct_round.
    http = httpx2.AsyncClient(limits=httpx2.Limits(max_keepalive_connections=0), timeout=120)
    client = openai.AsyncOpenAI(base_url=v1, api_key="unused", max_retries=0, http_client=http)
    mine: list[Round] = []
    direct: list[Round] = []
    try:
        # One discarded pass each: connections, the server's prompt cache, lazy imports.
        await rolegate_round(engine, ledger, suite, checkers)
        await direct_round(client, suite, checkers)
        for i in range(rounds):
            first_direct = i % 2 == 1  # alternate which goes first
            if first_direct:
                direct.append(await direct_round(client, suite, checkers))
            mine.append(await rolegate_round(engine, ledger, suite, checkers))
            if not first_direct:
                direct.append(await direct_round(client, suite, checkers))
    finally:
        await client.close()
        await http.aclose()
        await engine.aclose()
        ledger.close()
    return mine, direct


def eval_part(args: argparse.Namespace, tmp: Path) -> list[str]:
    suite = load_suite(args.suite)
    print(f"[eval] starting llama-server, {args.rounds} rounds x 2 ...", file=sys.stderr)
    proc, port = start_llama(tmp / "llama.log")
    try:
        v1 = f"http://127.0.0.1:{port}/v1"
        path = tmp / "eval.yaml"
        path.write_text(EVAL_POLICY.format(v1=v1, alias=ALIAS))
        mine, direct = asyncio.run(eval_rounds(path, tmp / "eval.db", suite, args.rounds, v1))
    finally:
        stop(proc)

    def med(rounds: list[Round], f: Any) -> float:
        return statistics.median(f(r) for r in rounds)

    n = len(suite.cases)
    rows = []
    for label, rs in (("rolegate run_suite", mine), ("direct AsyncOpenAI", direct)):
        rows.append((
            label,
            med(rs, lambda r: r.per_s),
            med(rs, lambda r: statistics.median(r.case_ms)),
            med(rs, lambda r: r.wall_s * 1000 / n),
            med(rs, lambda r: r.passed),
            med(rs, lambda r: r.output_tokens),
        ))  # fmt: skip
    out = [
        f"eval throughput, suite {suite.name!r} ({n} cases) from {Path(args.suite).name}, "
        f"test model (gemma-3 270M, llama.cpp -t 1), temperature 0, sequential, "
        f"median of {args.rounds} rounds",
        f"  {'path':<22}{'cases/s':>9}{'p50 ms':>9}{'mean ms':>9}{'passed':>8}{'out tok':>9}",
    ]
    for label, per_s, p50, mean, passed, tokens in rows:
        out.append(
            f"  {label:<22}{per_s:9.2f}{p50:9.1f}{mean:9.1f}{passed:>5.0f}/{n:<2}{tokens:9.0f}"
        )
    (_, _, p50_r, mean_r, *_), (_, _, p50_d, mean_d, *_) = rows
    own = [[w - c for w, c in zip(r.case_ms, r.call_ms, strict=True)] for r in mine]
    own_p50 = statistics.median(statistics.median(o) for o in own)
    own_max = statistics.median(max(o) for o in own)
    out.append(
        f"  rolegate eval overhead per case: {p50_r - p50_d:+.1f} ms p50 "
        f"({p50_r / p50_d:.2f}x), {mean_r - mean_d:+.1f} ms mean ({mean_r / mean_d:.2f}x)"
        " (generation time varies more than this from round to round)"
    )
    out.append(
        f"  rolegate's own work per case, wall minus its provider call (latency_ms), same "
        f"case: {own_p50:.2f} ms p50, {own_max:.2f} ms max ({own_p50 / p50_r:.2%} of a case)"
    )
    if any(r.output_tokens != direct[0].output_tokens for r in (*mine, *direct)):
        out.append("  note: output tokens differ between paths or rounds (not the same answers)")
    return out


# -- the route_task part ------------------------------------------------------------------


def route_policy(port: int, *, quality: bool) -> str:
    blocks = QUALITY if quality else dict.fromkeys(QUALITY, "")
    text = ROUTE_POLICY.format(port=port, **blocks)
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def seed(ledger: SqliteLedger) -> int:
    """~2,000 eval results (each case run twice, the second run's verdict counts) + live."""
    now = int(time.time() * 1_000_000)
    rows: list[EvalResult] = []
    for suite in ("math", "code"):
        for run in range(2):
            run_id = f"seed-{suite}-{run}"
            models = ("small", "medium", "large")
            ledger.put_eval_run(EvalRun(run_id=run_id, suite=suite, suite_hash="sha256:0",
                                        policy_hash="sha256:0", role="solver", job=None,
                                        models=models, cases=CASES_PER_SUITE,
                                        started_us=now - 3_600_000_000 + run,
                                        finished_us=now - 60_000_000 + run))  # fmt: skip
            for model in models:
                rate = RATES[(suite, model)]
                for i in range(CASES_PER_SUITE):
                    # A deterministic spread of passes at the given rate; every 50th an error.
                    outcome = "pass" if (i * 37 + run) % 100 < rate * 100 else "fail"
                    if i % 50 == 49:
                        outcome = "error"
                    rows.append(EvalResult(suite=suite, case_id=f"c{i:04d}", model=model,
                                           source="eval", outcome=outcome,  # type: ignore[arg-type]
                                           at_us=now - 3_000_000_000 + len(rows), run_id=run_id,
                                           score=1.0 if outcome == "pass" else 0.0,
                                           latency_ms=120.0, ttft_ms=20.0, input_tokens=40,
                                           output_tokens=12, cost_micro=3))  # fmt: skip
    for i in range(LIVE_ROWS):
        rows.append(EvalResult(suite="code", case_id=f"req_live{i}", model="medium",
                               source="live", outcome="pass" if i % 4 else "fail",
                               at_us=now - 1_000_000 + i))  # fmt: skip
    ledger.put_eval_results(rows)
    return len(rows)


async def decisions(path: Path, db: Path) -> list[str]:
    """Each task's model (and whether evidence chose it), in process, as a check that the
    quality rules are in force: the timed servers answer the same."""
    ledger = SqliteLedger(db)
    engine = build_engine(load_policy(path), ledger=ledger)
    picks = []
    try:
        for task in TASKS:
            d = await engine.route_task(RouteRequest(**task))
            mark = "" if d.quality is None else ("*" if d.quality.qualified else "?")
            picks.append(f"{d.model}{mark}")
    finally:
        await engine.aclose()
        ledger.close()
    return picks


def route_part(args: argparse.Namespace, tmp: Path) -> list[str]:
    db = tmp / "route.db"
    ledger = SqliteLedger(db)
    try:
        stored = seed(ledger)
        for suite in ("math", "code"):  # warm the page cache and the statement cache
            ledger.evidence(suite)
        query = Stats()
        for i in range(args.evidence_calls):
            t0 = time.perf_counter_ns()
            ledger.evidence(("math", "code")[i % 2])
            query.samples_ms.append((time.perf_counter_ns() - t0) / 1e6)
        found = {(e.suite, e.model): (e.passed, e.cases) for s in ("math", "code")
                 for e in ledger.evidence(s)}  # fmt: skip
    finally:
        ledger.close()

    port = free_port()  # nothing listens: route_task never calls a model
    servers: dict[str, Server] = {}
    chosen: dict[str, list[str]] = {}
    for label, quality in (("with quality", True), ("without", False)):
        path = tmp / f"{label.replace(' ', '-')}.yaml"
        path.write_text(route_policy(port, quality=quality))
        chosen[label] = asyncio.run(decisions(path, db))  # and a policy error shows here
        servers[label] = Server(
            label,
            [sys.executable, "-m", "rolegate", "serve", "--policy", str(path),
             "--ledger", f"sqlite:///{db}", "--log-level", "WARNING"],
            ROLEGATE_TOOLS,
            "route_task",
            TASKS,
        )  # fmt: skip
    p50s: dict[str, list[float]] = {label: [] for label in servers}
    p99s: dict[str, list[float]] = {label: [] for label in servers}
    codes: dict[str, dict[str, int]] = {}
    print(f"[route_task] {args.route_rounds} rounds x 2 x {args.calls} calls ...", file=sys.stderr)
    with open(tmp / "serve.log", "wb") as log:
        for i in range(args.route_rounds):  # alternating which server goes first
            order = list(servers.values()) if i % 2 == 0 else list(servers.values())[::-1]
            for server in order:
                stats, codes[server.label] = round_trip(
                    server, LEGACY_VERSION, args.calls, args.warmup, log
                )
                p50s[server.label].append(stats.pct(50))
                p99s[server.label].append(stats.pct(99))
    rows = [
        (label, statistics.median(p50s[label]), statistics.median(p99s[label]), codes[label])
        for label in servers
    ]

    out = [
        f"evidence query, ledger.evidence(suite) on SQLite with {stored:,} results, "
        f"{args.evidence_calls} calls: p50 {query.pct(50):.3f} ms, p99 {query.pct(99):.3f} ms"
        " (paid at most once a second per process, off the event loop)",
        "  evidence: " + ", ".join(f"{s}/{m} {p}/{c}" for (s, m), (p, c) in sorted(found.items())),
        "",
        f"route_task over stdio, {args.calls} calls after {args.warmup} warm-up, same ledger, "
        f"median of {args.route_rounds} sessions each, p50 / p99:",
    ]
    for label, median, p99, codes in rows:
        out.append(f"  {label:<14} {median:6.3f} ms / {p99:6.3f} ms   codes {codes}")
    for label, picks in chosen.items():
        out.append(f"  {label:<14} routes: {', '.join(picks)}")
    (_, with_q, with_p99, _), (_, without, without_p99, _) = rows
    out.append(
        f"  added by quality evidence: {with_q - without:+.3f} ms p50 ({with_q / without:.2f}x),"
        f" {with_p99 - without_p99:+.3f} ms p99 ({with_p99 / without_p99:.2f}x)"
    )
    out.append(
        f"target route_task p50 < 2 ms with quality evidence: {'MET' if with_q < 2.0 else 'MISSED'}"
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="eval passes per path")
    parser.add_argument("--suite", default=str(SUITE), help="the eval suite to run")
    parser.add_argument("--calls", type=int, default=1000, help="timed route_task calls")
    parser.add_argument("--warmup", type=int, default=50, help="untimed route_task calls")
    parser.add_argument("--route-rounds", type=int, default=3, help="sessions per server")
    parser.add_argument("--evidence-calls", type=int, default=200)
    parser.add_argument("--skip-eval", action="store_true", help="route_task only")
    args = parser.parse_args()
    if not args.skip_eval and not all(
        os.environ.get(v) for v in ("ROLEGATE_LLAMA_SERVER", "ROLEGATE_GGUF")
    ):
        print(
            "set ROLEGATE_LLAMA_SERVER and ROLEGATE_GGUF (scripts/setup_llama.sh), "
            "or pass --skip-eval",
            file=sys.stderr,
        )
        return 2
    configure_logging("WARNING")  # one line per call would bury the figures
    lines = [f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"]
    with tempfile.TemporaryDirectory(prefix="bench_eval") as name:
        tmp = Path(name)
        os.environ["ROLEGATE_STATE_DIR"] = str(tmp / "state")
        if not args.skip_eval:
            lines += ["", *eval_part(args, tmp)]
        lines += ["", *route_part(args, tmp)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
