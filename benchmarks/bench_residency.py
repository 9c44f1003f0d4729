"""What residency costs: time to first token on a resident model versus one loaded on demand,
and route_task's round trip over stdio with residency tracking versus without.

Run: .venv/bin/python benchmarks/bench_residency.py [--rounds 5] [--calls 500]
Needs ROLEGATE_LLAMA_SERVER and ROLEGATE_GGUF (scripts/setup_llama.sh prints them).

  first token  one policy, three llama.cpp servers of the test model that rolegate starts:
               'front' HOT (started first, always resident) and two WARM ones whose memory
               does not fit together, so each call to one loads it and evicts the other.
               Each round runs the HOT role, then each WARM role; time to first token is
               the call's load time (0 when resident) plus the server's own first token.
  route_task   `rolegate serve` over stdio (raw JSON-RPC, as bench_server.py), the same models
               and tasks: with 'residency' and declared servers (every route reads the
               resident set, re-probed at most once a second) and without either.
Target (issue): route_task p50 still < 2 ms over stdio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_server import LEGACY_VERSION, ROLEGATE_TOOLS, Server, round_trip

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.requests import RunRequest
from rolegate.logs import configure_logging
from rolegate.policy import load_policy
from rolegate.topology.servers import Servers, default_state_dir

SERVED = """
version: 1
name: residency-bench
providers:
{providers}
models:
{models}
roles:
  front: {{model: front}}
  warm-a: {{model: warm-a}}
  warm-b: {{model: warm-b}}
{residency}
"""
MODEL = (
    "  {mid}: {{provider: {mid}, name: {mid}, tier: {tier}, memory_gb: 1, context_window: 1024, "
    "reserve_tokens: 128, capabilities: [chat, {cap}], streaming: {{internal: true}}{server}}}"
)
SERVER = ', server: {{gguf: "{gguf}", ctx_size: 1024, threads: 1, parallel: 1}}'
TIERS = {"front": ("hot", "routing"), "warm-a": ("warm", "code"), "warm-b": ("warm", "summarize")}
TASKS = [
    {"task": "hello there", "max_output_tokens": 8},
    {"task": "write a python function", "needs": ["code"], "max_output_tokens": 8},
    {"task": "summarize this", "needs": ["summarize"], "max_output_tokens": 8},
    {"task": "x", "role": "warm-a", "max_output_tokens": 8},
]


def policy_text(ports: dict[str, int], gguf: str, *, residency: bool) -> str:
    providers = "\n".join(
        f'  {m}: {{type: openai, base_url: "http://127.0.0.1:{p}/v1", locality: local}}'
        for m, p in ports.items()
    )
    models = "\n".join(
        MODEL.format(
            mid=m,
            tier=TIERS[m][0],
            cap=TIERS[m][1],
            server=SERVER.format(gguf=gguf) if residency else "",
        )
        for m in ports
    )
    block = "residency: {memory_gb: 2.5, load_timeout_s: 120}" if residency else ""
    return SERVED.format(providers=providers, models=models, residency=block)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def first_tokens(path: Path, rounds: int) -> dict[str, list[float]]:
    engine = build_engine(load_policy(path))
    residency = engine.residency
    assert residency is not None
    figures: dict[str, list[float]] = {"resident": [], "load": [], "on_demand": [], "warm_ttft": []}
    try:
        await residency.up("hot")
        for _ in range(rounds):
            for role in ("front", "warm-a", "warm-b"):
                result = await engine.run_role(
                    RunRequest(role=role, prompt="Say hi.", max_output_tokens=4, channel=None)
                )
                ttft = result.ttft_ms if result.ttft_ms is not None else result.latency_ms
                load = result.load.load_ms if result.load and result.load.load_ms else 0.0
                if role == "front":
                    figures["resident"].append(ttft)
                else:
                    figures["load"].append(load)
                    figures["warm_ttft"].append(ttft)
                    figures["on_demand"].append(load + ttft)
    finally:
        for record in residency.servers.records().values():
            await residency.servers.stop_record(record)
        await engine.aclose()
    return figures


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    gguf = os.environ.get("ROLEGATE_GGUF")
    if not gguf or not os.environ.get("ROLEGATE_LLAMA_SERVER"):
        print(
            "set ROLEGATE_LLAMA_SERVER and ROLEGATE_GGUF (scripts/setup_llama.sh)", file=sys.stderr
        )
        return 2
    configure_logging("WARNING")  # one line per call would bury the figures
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ROLEGATE_STATE_DIR"] = str(Path(tmp) / "state")
        ports = {m: free_port() for m in TIERS}
        served = Path(tmp) / "served.yaml"
        served.write_text(policy_text(ports, gguf, residency=True))
        plain = Path(tmp) / "plain.yaml"
        plain.write_text(policy_text(ports, gguf, residency=False))

        figures = asyncio.run(first_tokens(served, args.rounds))
        print(f"time to first token, test model (gemma-3 270M), {args.rounds} rounds, p50:")
        resident = p50(figures["resident"])
        on_demand = p50(figures["on_demand"])
        print(f"  resident (HOT)             {resident:9.1f} ms")
        print(
            f"  loaded on demand (WARM)    {on_demand:9.1f} ms  = load {p50(figures['load']):.1f}"
            f" ms + first token {p50(figures['warm_ttft']):.1f} ms"
        )
        print(f"  ratio on demand / resident {on_demand / resident:9.1f}x")

        # route_task over stdio: the HOT server up, so the resident set has something in it.
        asyncio.run(_up(served))
        try:
            rows = []
            for label, path in (("with residency", served), ("without", plain)):
                server = Server(
                    label,
                    [
                        sys.executable,
                        "-m",
                        "rolegate",
                        "serve",
                        "--policy",
                        str(path),
                        "--log-level",
                        "WARNING",
                    ],
                    ROLEGATE_TOOLS,
                    "route_task",
                    TASKS,
                )
                with open(Path(tmp) / f"{label}.log", "wb") as log:
                    stats, codes = round_trip(server, LEGACY_VERSION, args.calls, 50, log)
                rows.append((label, stats.median, stats.pct(99), codes))
        finally:
            asyncio.run(_down())
    print(f"route_task over stdio, {args.calls} calls after 50 warm-up, p50 / p99:")
    for label, median, p99, codes in rows:
        print(f"  {label:<16} {median:6.2f} ms / {p99:6.2f} ms   codes {codes}")
    print(
        f"  added by residency tracking: {rows[0][1] - rows[1][1]:+.2f} ms p50 "
        f"({rows[0][1] / rows[1][1]:.2f}x)"
    )
    ok = rows[0][1] < 2.0
    print(f"target route_task p50 < 2 ms with residency: {'MET' if ok else 'MISSED'}")
    return 0


async def _up(path: Path) -> None:
    """Start the HOT server and leave it running (as `rolegate up` does)."""
    engine = build_engine(load_policy(path))
    assert engine.residency is not None
    await engine.residency.up("hot")
    await engine.aclose()


async def _down() -> None:
    servers = Servers(default_state_dir())
    for record in servers.records().values():
        await servers.stop_record(record)


if __name__ == "__main__":
    sys.exit(main())
