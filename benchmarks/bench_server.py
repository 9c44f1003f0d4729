"""rolegate's MCP server over stdio against the bare SDK baseline (benchmarks/bare_server.py).

Run: python benchmarks/bench_server.py [--runs 15] [--calls 2000] [--era legacy|2026-07-28|both]
                                        [--client] [--imports] [--log-level LEVEL]

What it measures, both servers side by side, each as its own subprocess:
  cold start   wall time from spawning the process to reading the tools/list answer, over
               stdio: legacy era = initialize, wait, notifications/initialized + tools/list;
               2026-07-28 era = a single tools/list carrying the _meta envelope. Runs of the
               two servers alternate so that machine noise hits both alike; one discarded
               warm-up spawn each first (bytecode, page cache).
  round trip   one long-lived session per server; warm-up calls, then N sequential calls
               (route_task on rolegate, ping on the bare server), each timed from writing the
               request to reading its response line.

How: raw JSON-RPC, one JSON object per line, over the subprocess's stdin/stdout pipes
(blocking writes and readline; the client side costs microseconds, so the figures are the
server's time plus pipe latency). --client adds the same two measurements through the SDK's
``mcp.Client`` (StdioServerParameters), which is what a Python agent sees; its extra cost is
client-side (anyio streams, result validation), not the server's.
--imports adds where the cold-start difference comes from: both servers run under
``python -X importtime`` with stdin at EOF (they start, then exit), and the import self-time is
summed per top-level package; the table lists what rolegate pays beyond the bare SDK.

The servers' stderr goes to a temporary file (a real host logs it somewhere too); rolegate
runs with its default log level (INFO: one JSON line per tool call) unless --log-level is given.
Targets (issue): cold start <= 1.25x bare; route_task p50 < 2 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

HERE = Path(__file__).resolve().parent
BARE_SERVER = HERE / "bare_server.py"
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "bench_server", "version": "0"}
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
    "io.modelcontextprotocol/clientCapabilities": {},
}
ROLEGATE_TOOLS = {"route_task", "run_role", "check_budget", "escalate"}
TASKS: list[dict[str, Any]] = [
    {"task": "implement the parser fix in the rust crate"},
    {"task": "plan the architecture for the new spec", "context_tokens": 12_000},
    {"task": "research sweep over these documents", "context_tokens": 90_000},
    {"task": "hello there", "local_only": True},
    {"task": "explain why does borrowck complain"},
    {"task": "x", "needs": ["tools"]},
]
ReadyCheck = Callable[[dict[str, Any]], None]


@dataclass
class Server:
    label: str
    command: list[str]
    tools: set[str]
    call_name: str
    call_args: list[dict[str, Any]]


@dataclass
class Stats:
    samples_ms: list[float] = field(default_factory=list)

    def pct(self, p: float) -> float:
        """Nearest-rank percentile."""
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)


class BenchError(RuntimeError):
    pass


class RawSession:
    """A server subprocess spoken to with newline-delimited JSON-RPC on its pipes."""

    def __init__(self, server: Server, era: str, stderr: IO[bytes]) -> None:
        self.server = server
        self.era = era
        self.next_id = 0
        self.proc = subprocess.Popen(
            server.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout

    def _send(self, message: dict[str, Any]) -> None:
        self.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def request(self, method: str, params: dict[str, Any], *, notify_first: bool = False) -> Any:
        self.next_id += 1
        if self.era == MODERN_VERSION:
            params = {**params, "_meta": ENVELOPE}
        if notify_first:
            self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        self.stdin.flush()
        while True:
            line = self.stdout.readline()
            if not line:
                raise BenchError(f"{self.server.label}: server closed stdout during {method}")
            message = json.loads(line)
            if message.get("id") != self.next_id:
                continue  # a notification (log, progress) or something else: not ours
            if "error" in message:
                raise BenchError(f"{self.server.label}: {method} failed: {message['error']}")
            return message["result"]

    def open(self) -> list[str]:
        """Handshake (legacy) then tools/list; returns the tool names."""
        notify = False
        if self.era != MODERN_VERSION:
            self.request(
                "initialize",
                {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
            )
            notify = True
        result = self.request("tools/list", {}, notify_first=notify)
        return [tool["name"] for tool in result["tools"]]

    def close(self) -> None:
        self.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()


def check_tools(server: Server, names: Sequence[str]) -> None:
    if set(names) != server.tools:
        raise BenchError(f"{server.label}: tools/list gave {sorted(names)}, not {server.tools}")


def cpu_ms(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc (Linux); else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def cold_start_once(server: Server, era: str, stderr: IO[bytes]) -> tuple[float, float | None]:
    """Wall ms from spawn to the tools/list answer, and the server's CPU ms up to then."""
    t0 = time.perf_counter()
    session = RawSession(server, era, stderr)
    try:
        names = session.open()
        elapsed = (time.perf_counter() - t0) * 1000
        cpu = cpu_ms(session.proc.pid)
    finally:
        session.close()
    check_tools(server, names)
    return elapsed, cpu


def check_call(server: Server, result: dict[str, Any], codes: dict[str, int]) -> None:
    if result.get("isError"):
        text = result["content"][0]["text"] if result.get("content") else result
        raise BenchError(f"{server.label}: {server.call_name} returned a tool error: {text}")
    code = (result.get("structuredContent") or {}).get("code", "OK")
    codes[code] = codes.get(code, 0) + 1


def round_trip(
    server: Server, era: str, calls: int, warmup: int, stderr: IO[bytes]
) -> tuple[Stats, dict[str, int]]:
    session = RawSession(server, era, stderr)
    stats = Stats()
    codes: dict[str, int] = {}
    try:
        check_tools(server, session.open())
        args = server.call_args
        for i in range(warmup + calls):
            params = {"name": server.call_name, "arguments": args[i % len(args)]}
            if i < warmup:
                session.request("tools/call", params)
                continue
            t0 = time.perf_counter_ns()
            result = session.request("tools/call", params)
            stats.samples_ms.append((time.perf_counter_ns() - t0) / 1e6)
            check_call(server, result, codes)
    finally:
        session.close()
    return stats, codes


async def client_measure(
    server: Server, era: str, calls: int, warmup: int, stderr: TextIO
) -> tuple[float, Stats]:
    """Cold start (spawn -> list_tools answered) and call round trip through mcp.Client."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=server.command[0], args=server.command[1:], env=dict(os.environ)
    )
    mode = "legacy" if era != MODERN_VERSION else MODERN_VERSION
    t0 = time.perf_counter()
    async with Client(stdio_client(params, errlog=stderr), mode=mode, cache=None) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        cold = (time.perf_counter() - t0) * 1000
        check_tools(server, names)
        args = server.call_args
        for i in range(warmup):
            await client.call_tool(server.call_name, args[i % len(args)])
        stats = Stats()
        for i in range(calls):
            t1 = time.perf_counter_ns()
            result = await client.call_tool(server.call_name, args[i % len(args)])
            stats.samples_ms.append((time.perf_counter_ns() - t1) / 1e6)
            if result.is_error:
                raise BenchError(f"{server.label}: {server.call_name} failed: {result.content}")
    return cold, stats


def import_self_ms(command: Sequence[str], runs: int) -> dict[str, float]:
    """Median over ``runs`` of import self-time (ms) per top-level package while serving."""
    per_run: list[dict[str, float]] = []
    for _ in range(runs):
        proc = subprocess.run(
            [command[0], "-X", "importtime", *command[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
        totals: dict[str, float] = {}
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            self_us, _, name = (part.strip() for part in line[12:].split("|"))
            if self_us.isdigit():
                top = name.split(".")[0]
                totals[top] = totals.get(top, 0.0) + int(self_us) / 1000
        per_run.append(totals)
    names = set().union(*per_run)
    return {n: statistics.median(r.get(n, 0.0) for r in per_run) for n in names}


def import_report(rolegate: Server, bare: Server, runs: int) -> list[str]:
    print(f"[imports] -X importtime x{runs} each ...", file=sys.stderr, flush=True)
    r = import_self_ms(rolegate.command, runs)
    b = import_self_ms(bare.command, runs)
    extra = sorted(((r[n] - b.get(n, 0.0), n) for n in r), reverse=True)
    out = [
        f"import self-time while serving, median of {runs} (ms; -X importtime inflates it)",
        f"  {'package':<34}{'rolegate':>9}{'bare':>9}{'extra':>9}",
    ]
    for delta, name in extra[:12]:
        out.append(f"  {name:<34}{r[name]:9.1f}{b.get(name, 0.0):9.1f}{delta:+9.1f}")
    rest = sum(d for d, _ in extra[12:])
    out.append(f"  {'(all other packages)':<34}{'':>9}{'':>9}{rest:+9.1f}")
    out.append(f"  {'total':<34}{sum(r.values()):9.1f}{sum(b.values()):9.1f}")
    return out


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def interpreter_start(runs: int) -> Stats:
    """Reference: spawning the same interpreter with no imports at all."""
    stats = Stats()
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        stats.samples_ms.append((time.perf_counter() - t0) * 1000)
    return stats


def bench_era(
    rolegate: Server, bare: Server, era: str, args: argparse.Namespace, stderr: IO[bytes]
) -> list[str]:
    out: list[str] = []
    print(f"[{era}] cold start x{args.runs} each ...", file=sys.stderr, flush=True)
    for server in (rolegate, bare):  # discarded warm-up spawns
        cold_start_once(server, era, stderr)
    cold = {rolegate.label: Stats(), bare.label: Stats()}
    cpu = {rolegate.label: Stats(), bare.label: Stats()}
    for _ in range(args.runs):
        for server in (rolegate, bare):
            wall, used = cold_start_once(server, era, stderr)
            cold[server.label].samples_ms.append(wall)
            if used is not None:
                cpu[server.label].samples_ms.append(used)
    r, b = cold[rolegate.label], cold[bare.label]
    have_cpu = all(len(c.samples_ms) == args.runs for c in cpu.values())
    out.append(f"cold start, spawn -> tools/list answer, era {era}, {args.runs} runs (ms)")
    out.append(
        f"  {'server':<34}{'median':>9}{'p90':>9}{'min':>9}{'max':>9}"
        + (f"{'cpu med':>9}" if have_cpu else "")
    )
    for label, s in cold.items():
        out.append(
            f"  {label:<34}{s.median:9.1f}{s.pct(90):9.1f}"
            f"{min(s.samples_ms):9.1f}{max(s.samples_ms):9.1f}"
            + (f"{cpu[label].median:9.0f}" if have_cpu else "")
        )
    out.append(
        f"  {'ratio rolegate/bare':<34}{ratio(r.median, b.median):>9}"
        f"{ratio(r.pct(90), b.pct(90)):>9}{'':>18}"
        + (f"{ratio(cpu[rolegate.label].median, cpu[bare.label].median):>9}" if have_cpu else "")
    )
    out.append(
        f"  target: median <= 1.25x bare: {verdict(r.median <= 1.25 * b.median)}"
        + (
            "   (cpu = server user+sys CPU until the answer, /proc; robust to load)"
            if have_cpu
            else ""
        )
    )

    print(f"[{era}] round trip x{args.calls} each ...", file=sys.stderr, flush=True)
    rt_r, codes = round_trip(rolegate, era, args.calls, args.warmup, stderr)
    rt_b, _ = round_trip(bare, era, args.calls, args.warmup, stderr)
    out.append("")
    out.append(
        f"round trip over stdio, era {era}, one session, {args.calls} calls after "
        f"{args.warmup} warm-up (ms)"
    )
    out.append(f"  {'call':<34}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for label, s in ((f"{rolegate.label} route_task", rt_r), (f"{bare.label} ping", rt_b)):
        out.append(
            f"  {label:<34}{s.pct(50):9.3f}{s.pct(90):9.3f}{s.pct(99):9.3f}{max(s.samples_ms):9.3f}"
        )
    out.append(
        f"  {'ratio route_task/ping':<34}{ratio(rt_r.pct(50), rt_b.pct(50)):>9}"
        f"{ratio(rt_r.pct(90), rt_b.pct(90)):>9}{ratio(rt_r.pct(99), rt_b.pct(99)):>9}"
    )
    out.append(
        f"  route_task p50 < 2 ms: {verdict(rt_r.pct(50) < 2.0)}; "
        f"calls/s (sequential) {1000 / statistics.fmean(rt_r.samples_ms):,.0f}; "
        f"decision codes {dict(sorted(codes.items()))}"
    )

    if args.client:
        import anyio

        print(f"[{era}] through mcp.Client ...", file=sys.stderr, flush=True)
        text_err = open(os.devnull, "w")  # noqa: SIM115 - closed below
        try:
            results = {
                s.label: anyio.run(client_measure, s, era, args.client_calls, args.warmup, text_err)
                for s in (rolegate, bare)
            }
        finally:
            text_err.close()
        (cr, sr), (cb, sb) = results[rolegate.label], results[bare.label]
        out.append("")
        out.append(
            f"through mcp.Client (StdioServerParameters), era {era}: one cold start each, "
            f"{args.client_calls} calls (ms)"
        )
        out.append(f"  {'server':<34}{'cold':>9}{'call p50':>10}{'call p99':>10}")
        out.append(f"  {rolegate.label:<34}{cr:9.1f}{sr.pct(50):10.3f}{sr.pct(99):10.3f}")
        out.append(f"  {bare.label:<34}{cb:9.1f}{sb.pct(50):10.3f}{sb.pct(99):10.3f}")
        out.append(
            f"  {'ratio rolegate/bare':<34}{ratio(cr, cb):>9}"
            f"{ratio(sr.pct(50), sb.pct(50)):>10}{ratio(sr.pct(99), sb.pct(99)):>10}"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="cold starts per server")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per server")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls first")
    parser.add_argument("--era", choices=["legacy", MODERN_VERSION, "both"], default="legacy")
    parser.add_argument("--client", action="store_true", help="also measure through mcp.Client")
    parser.add_argument("--client-calls", type=int, default=500)
    parser.add_argument("--imports", action="store_true", help="explain cold start by import")
    parser.add_argument("--log-level", help="pass --log-level to rolegate serve")
    args = parser.parse_args()

    # A throw-away ledger: the benchmark's audit records stay out of the user's own ledger.
    ledger_dir = tempfile.TemporaryDirectory(prefix="bench_server_ledger")
    serve = [sys.executable, "-m", "rolegate", "serve"]
    serve += ["--ledger", f"sqlite://{ledger_dir.name}/ledger.sqlite3"]
    if args.log_level:
        serve += ["--log-level", args.log_level]
    rolegate = Server("rolegate (embedded policy)", serve, ROLEGATE_TOOLS, "route_task", TASKS)
    bare = Server(
        "bare MCPServer",
        [sys.executable, str(BARE_SERVER)],
        {"ping"},
        "ping",
        [{"msg": str(i)} for i in range(len(TASKS))],
    )
    eras = ["legacy", MODERN_VERSION] if args.era == "both" else [args.era]

    lines = [
        f"python {sys.version.split()[0]} ({sys.executable}), {os.cpu_count()} CPUs",
        "method: raw JSON-RPC (newline-delimited) over the subprocess's stdin/stdout pipes"
        + (" + mcp.Client" if args.client else ""),
        f"rolegate: {' '.join(Path(a).name if i == 0 else a for i, a in enumerate(serve))}"
        f"   bare: python benchmarks/{BARE_SERVER.name}",
    ]
    interp = interpreter_start(max(5, args.runs // 3))
    lines.append(f"reference: `python -c pass` spawn median {interp.median:.1f} ms")
    with tempfile.TemporaryFile(prefix="bench_server_stderr") as stderr:
        try:
            for era in eras:
                lines.append("")
                lines.extend(bench_era(rolegate, bare, era, args, stderr))
            if args.imports:
                lines.append("")
                lines.extend(import_report(rolegate, bare, 3))
        except BenchError as exc:
            stderr.seek(0)
            tail = stderr.read()[-2000:].decode(errors="replace")
            print(f"bench_server: {exc}\n--- server stderr (tail) ---\n{tail}", file=sys.stderr)
            return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
