"""run_role's added latency over calling the same llama.cpp server directly.

Run: .venv/bin/python benchmarks/bench_run_role.py [--n 300] [--url http://127.0.0.1:PORT]

Without --url it starts llama.cpp's server itself from $ROLEGATE_LLAMA_SERVER and $ROLEGATE_GGUF
(scripts/setup_llama.sh sets both up). Each round makes, back to back and in alternating order,
one direct call with the openai client and one run_role call through an in-memory MCP client,
both with the same prompt and max_tokens=1. The direct call is shaped like rolegate's
(streamed, usage requested), so the difference is what rolegate adds: MCP dispatch, admission,
token estimate, routing checks, ledger reserve/commit (where a ledger is configured), audit and
the structured result. The figures are the p50/p99 of the per-round differences.

Three rolegate set-ups: no ledger; the default SQLite ledger (WAL, synchronous FULL, so each
call pays fsyncs for reserve, commit and audit); and SQLite with a budget that the call touches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import openai
from mcp import Client
from mcp.server.mcpserver import MCPServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rolegate.ledger import open_ledger  # noqa: E402
from rolegate.policy import load_policy  # noqa: E402
from rolegate.server.app import build_server  # noqa: E402
from rolegate.server.bootstrap import build_service  # noqa: E402
from rolegate.server.logs import configure_logging  # noqa: E402

PROMPT = "Reply with one word: what colour is the sky?"
POLICY = """
version: 1
name: bench-run-role
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
models:
  gemma: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
           timeout_s: 60, price: {{input_per_mtok: "0.10", output_per_mtok: "0.40"}}}}
roles:
  writer: {{model: gemma}}
{budgets}
"""
BUDGETS = """budgets:
  - {scope: global, window: day, usd: "1000"}
  - {scope: model, target: gemma, window: month, tokens: 1000000000}
"""


@contextmanager
def llama(url: str | None) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    from tests.support.llama import llama_server  # the same start-up the tests use

    with llama_server(ctx=2048, parallel=1) as server:
        yield server.url


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def direct_call(client: openai.AsyncOpenAI) -> float:
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model="gemma3-270m",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for _ in stream:
        pass
    return (time.perf_counter() - t0) * 1000


async def rolegate_call(client: Client) -> float:
    t0 = time.perf_counter()
    result = await client.call_tool(
        "run_role", {"role": "writer", "prompt": PROMPT, "max_output_tokens": 1}
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if result.is_error:
        raise SystemExit(f"run_role failed: {result.content}")
    return elapsed


async def measure(server: MCPServer, v1: str, n: int, warmup: int) -> dict[str, list[float]]:
    direct = openai.AsyncOpenAI(base_url=v1, api_key="unused", max_retries=0)
    out: dict[str, list[float]] = {"direct": [], "rolegate": [], "diff": []}
    try:
        async with Client(server, mode="legacy") as client:
            for i in range(warmup + n):
                if i % 2:
                    d = await direct_call(direct)
                    r = await rolegate_call(client)
                else:
                    r = await rolegate_call(client)
                    d = await direct_call(direct)
                if i >= warmup:
                    out["direct"].append(d)
                    out["rolegate"].append(r)
                    out["diff"].append(r - d)
    finally:
        await direct.close()
    return out


def build(v1: str, tmp: Path, setup: str) -> MCPServer:
    path = tmp / f"{setup}.yaml"
    path.write_text(POLICY.format(v1=v1, budgets=BUDGETS if setup == "sqlite+budgets" else ""))
    ledger = None if setup == "no ledger" else open_ledger(f"sqlite://{tmp / setup}.sqlite3")
    return build_server(build_service(load_policy(path), env={}, ledger=ledger))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="measured rounds per set-up")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--url", help="a running llama.cpp server (default: start one)")
    args = parser.parse_args()
    configure_logging("WARNING")  # the default INFO line per call goes to stderr; keep it quiet
    rows = []
    with llama(args.url) as url, tempfile.TemporaryDirectory() as tmp:
        v1 = f"{url}/v1"
        for setup in ("no ledger", "sqlite", "sqlite+budgets"):
            print(f"[{setup}] {args.n} rounds ...", file=sys.stderr, flush=True)
            data = anyio.run(measure, build(v1, Path(tmp), setup), v1, args.n, args.warmup)
            rows.append((setup, data))
    print(f"run_role vs direct openai client, llama.cpp on loopback, max_tokens=1, n={args.n}")
    print(
        f"  {'set-up':<18}{'direct p50':>11}{'run_role p50':>13}{'added p50':>10}{'added p99':>10}"
        f"{'ratio p50':>10}"
    )
    for setup, data in rows:
        d50, r50 = statistics.median(data["direct"]), statistics.median(data["rolegate"])
        print(
            f"  {setup:<18}{d50:11.2f}{r50:13.2f}{statistics.median(data['diff']):10.2f}"
            f"{pct(data['diff'], 99):10.2f}{r50 / d50:9.2f}x"
        )
    best = min(statistics.median(data["diff"]) for _, data in rows)
    worst = max(statistics.median(data["diff"]) for _, data in rows)
    verdict = "met" if worst < 2 else ("met without a ledger" if best < 2 else "MISSED")
    print(f"  target: added p50 < 2 ms: {verdict} (ms; added = run_role - direct, per round)")


if __name__ == "__main__":
    main()
