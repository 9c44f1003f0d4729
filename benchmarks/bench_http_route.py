"""route_task over Streamable HTTP at 1, 16 and 64 concurrent clients, durable and not.

Run: .venv/bin/python benchmarks/bench_http_route.py [--duration 10] [--clients 1,16,64]
        [--modes ledger,no-ledger] [--policy FILE] [--era legacy|modern] [--warmup 2]
        [--loadgen-procs N] [--log-level LEVEL]

What it measures, per mode, each with its own `rolegate serve --transport http` subprocess:
  ledger      the default SQLite ledger (WAL, synchronous=FULL) in a temporary directory:
              every decision is committed and fsynced, with its audit record, before the
              answer is sent.
  no-ledger   the same server with no durable ledger (decisions kept in memory, as
              `serve` does without one): the HTTP stack's and the engine's own ceiling.
              `serve` has no flag for it, so this script starts the server itself with
              ``rolegate.ledger.open_ledger`` replaced by an in-memory stand-in.
For each client count: a warm-up (not reported), then every client calls route_task back to
back for --duration seconds; decisions/s (successful answers), p50/p99/max latency, and the
CPU the server and the load generator used (CPU-seconds per second; 1.00 = one core busy).

How the load is made: each client is one MCP session (the initialize handshake, then
notifications/initialized, as the SDK's client does it: protocol 2025-11-25, the
Mcp-Session-Id the server hands out, the Accept/Content-Type headers it requires) on its own
keep-alive connection; after that each call is one pre-serialized JSON-RPC POST written to an
asyncio stream, and its SSE answer is parsed by hand. The SDK's own client (anyio streams,
pydantic models for every message) would take the CPU the server needs on a small box; this
does not. ``--era modern`` speaks the stateless 2026-07-28 revision instead (no handshake;
each POST carries the ``_meta`` envelope and the Mcp-Method/Mcp-Name headers). The load
generator runs in its own process(es) (--loadgen-procs), never in the server's; check its
CPU column: near 1.00 per process means it, not the server, was the limit.

Durability check (ledger mode): after the last level the server is killed with SIGKILL
(no clean shutdown to help), then the ledger file is opened: every decision_id answered
must be in it, with its audit record, and nothing else (decisions in the file == answers,
warm-up included). That shows each decision was committed before its answer; that the
commit was also fsynced (power-loss safe) is synchronous=FULL's part, not observable here.

Targets (issue): with the ledger, >= 1,000 decisions/s at 64 clients with p99 < 100 ms, and
64 clients not slower than 16 (ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import runpy
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

CTX = multiprocessing.get_context("spawn")
PROTOCOL = "2025-11-25"  # the newest handshake-era revision (what the SDK client speaks)
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "bench_http_route", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
TARGET_RATE = 1_000.0
TARGET_P99_MS = 100.0
TASKS = (
    "implement the parser fix in the rust crate",
    "plan the architecture for the new spec",
    "explain why does borrowck complain",
    "summarize these notes",
)
NO_LEDGER_FLAG = "--serve-without-ledger"


# -- the load generator (runs in its own process) ------------------------------------------


class HttpError(RuntimeError):
    pass


class Session:
    """One MCP session on one keep-alive HTTP/1.1 connection, spoken to by hand.

    Era ``legacy``: the initialize handshake, then requests in that session. Era
    ``modern`` (2026-07-28): no handshake and no session; every request carries the
    ``_meta`` envelope and the Mcp-Method/Mcp-Name routing headers instead.
    """

    def __init__(self, port: int, era: str) -> None:
        self.port = port
        self.era = era
        self.extra = b""  # headers every call carries
        self.next_id = 0
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        if self.era == "modern":
            self.extra = b"\r\n".join(
                [b"Mcp-Protocol-Version: " + MODERN.encode(), b"Mcp-Method: tools/call",
                 b"Mcp-Name: route_task"]
            )  # fmt: skip
            return
        init = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "bench_http_route", "version": "0"},
        }
        status, headers, body = await self.post(_rpc(0, "initialize", init))
        session_id = headers.get(b"mcp-session-id", b"")
        if status != 200 or not session_id or b'"result"' not in body:
            raise HttpError(f"initialize: HTTP {status} {body[:200]!r}")
        # Every later request of the session names it and the negotiated version.
        self.extra = b"Mcp-Session-Id: %s\r\nMcp-Protocol-Version: %s" % (
            session_id,
            PROTOCOL.encode(),
        )
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
        status, _, body = await self.post(note)
        if status != 202:
            raise HttpError(f"notifications/initialized: HTTP {status} {body[:200]!r}")

    async def close(self) -> None:
        if self.era == "modern":
            self.writer.close()
            return
        # End the session (DELETE), as a well-behaved client does.
        with contextlib.suppress(OSError, HttpError, asyncio.IncompleteReadError):
            await self.request(b"DELETE", b"")
        self.writer.close()

    async def post(self, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        return await self.request(b"POST", body)

    async def request(self, method: bytes, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        head = [
            method + b" /mcp HTTP/1.1",
            b"Host: 127.0.0.1:%d" % self.port,
            b"Accept: application/json, text/event-stream",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        ]
        if self.extra:
            head.append(self.extra)
        self.writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        return await self._response()

    async def _response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            raise HttpError(f"HTTP {status} with neither a length nor chunks")
        chunks: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()  # the empty trailer
                return status, headers, b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def route(self, body_prefix: bytes, body_suffix: bytes) -> str:
        """One route_task call; its decision_id, or raise."""
        self.next_id += 1
        status, _, body = await self.post(body_prefix + b"%d" % self.next_id + body_suffix)
        if status != 200:
            raise HttpError(f"HTTP {status}: {body[:200]!r}")
        if body.startswith(b"{"):  # a JSON answer (the modern era's when nothing streamed)
            return _decision_id(json.loads(body))
        for line in body.split(b"\n"):
            if line.startswith(b"data:"):  # an SSE answer: event: message / data: {...}
                return _decision_id(json.loads(line[5:]))
        raise HttpError(f"no answer in {body[:200]!r}")


def _decision_id(message: dict[str, Any]) -> str:
    result = message.get("result") or {}
    if "error" in message or result.get("isError"):
        raise HttpError(f"tool error: {json.dumps(message)[:300]}")
    return str(result["structuredContent"]["decision_id"])


def _rpc(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    ).encode()


def _call_template(index: int, era: str) -> tuple[bytes, bytes]:
    """A pre-serialized tools/call of route_task, split where the request id goes."""
    params: dict[str, Any] = {
        "name": "route_task",
        "arguments": {"task": TASKS[index % len(TASKS)]},
    }
    if era == "modern":
        params["_meta"] = ENVELOPE
    tail = json.dumps({"method": "tools/call", "params": params}, separators=(",", ":"))
    return b'{"jsonrpc":"2.0","id":', b"," + tail[1:].encode()


@dataclass
class ClientStats:
    latencies_ms: list[float] = field(default_factory=list)
    decision_ids: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


async def _drive(port: int, clients: int, first: int, era: str, pipe: Connection) -> ClientStats:
    sessions = [Session(port, era) for _ in range(clients)]
    await asyncio.gather(*(s.open() for s in sessions))
    pipe.send("ready")
    start_at, end_at = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stats = ClientStats()

    async def one(session: Session, index: int) -> None:
        prefix, suffix = _call_template(index, era)
        while time.time() < end_at:
            started = time.perf_counter()
            try:
                decision_id = await session.route(prefix, suffix)
            except (HttpError, OSError, asyncio.IncompleteReadError, KeyError) as exc:
                kind = type(exc).__name__
                stats.errors[kind] = stats.errors.get(kind, 0) + 1
                if not isinstance(exc, HttpError):
                    return  # the connection is gone
                continue
            stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            stats.decision_ids.append(decision_id)

    await asyncio.gather(*(one(s, first + i) for i, s in enumerate(sessions)))
    await asyncio.gather(*(s.close() for s in sessions))
    return stats


def loadgen(port: int, clients: int, first: int, era: str, pipe: Connection) -> None:
    """A load-generator process: ``clients`` sessions, started and stopped by the parent."""
    cpu = time.process_time()
    stats = asyncio.run(_drive(port, clients, first, era, pipe))
    pipe.send((stats, time.process_time() - cpu))
    pipe.close()


# -- the server --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, mode: str, workdir: Path, policy: str | None, log_level: str) -> None:
        self.mode = mode
        self.port = _free_port()
        self.ledger_file = workdir / "ledger.sqlite3"
        args = ["serve", "--transport", "http", "--port", str(self.port), "--log-level", log_level]
        args += ["--ledger", f"sqlite://{self.ledger_file}"]
        if policy:
            args += ["--policy", policy]
        if mode == "ledger":
            command = [sys.executable, "-m", "rolegate", *args]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), NO_LEDGER_FLAG, *args]
        env = {**os.environ, "XDG_DATA_HOME": str(workdir / "data")}  # spool dirs stay here
        self.log = (workdir / f"server-{mode}.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=self.log, env=env)
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.proc.returncode}); see {self.log.name}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.1)
            else:
                return
        raise RuntimeError("the server did not listen within 60 s")

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


@dataclass
class Level:
    clients: int
    seconds: float
    latencies_ms: list[float]
    errors: dict[str, int]
    server_cpu: float
    loadgen_cpu: float
    procs: int

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan


def run_level(
    server: Server, clients: int, duration: float, procs: int, era: str = "legacy"
) -> tuple[Level, list[str]]:
    procs = max(1, min(procs, clients))
    pipes, workers = [], []
    for k in range(procs):
        share = clients // procs + (1 if k < clients % procs else 0)
        parent, child = CTX.Pipe()
        first = sum(clients // procs + (1 if j < clients % procs else 0) for j in range(k))
        worker = CTX.Process(target=loadgen, args=(server.port, share, first, era, child))
        worker.start()
        pipes.append(parent)
        workers.append(worker)
    for pipe in pipes:
        if pipe.recv() != "ready":
            raise RuntimeError("a load generator failed to start")
    start_at = time.time() + 0.2
    for pipe in pipes:
        pipe.send((start_at, start_at + duration))
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = server.cpu()
    time.sleep(duration)
    server_cpu = (server.cpu() - cpu0) / duration
    latencies: list[float] = []
    ids: list[str] = []
    errors: dict[str, int] = {}
    loadgen_cpu = 0.0
    for pipe in pipes:
        stats, cpu = pipe.recv()
        latencies += stats.latencies_ms
        ids += stats.decision_ids
        for kind, n in stats.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        loadgen_cpu += cpu
    for worker in workers:
        worker.join(timeout=30)
    level = Level(clients, duration, latencies, errors, server_cpu, loadgen_cpu / duration, procs)
    return level, ids


def verify_durable(ledger_file: Path, answered: Sequence[str]) -> tuple[bool, str]:
    """Every answered decision (and its audit record) is in the file, and nothing else."""
    conn = sqlite3.connect(f"file:{ledger_file}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in conn.execute("SELECT decision_id FROM rolegate_decisions")}
        audited = conn.execute(
            'SELECT COUNT(*) FROM rolegate_audit WHERE record LIKE \'%"kind":"decision"%\''
        ).fetchone()[0]
    finally:
        conn.close()
    wanted = set(answered)
    missing, extra = len(wanted - stored), len(stored - wanted)
    ok = not missing and not extra and len(wanted) == len(answered) and audited == len(stored)
    text = (
        f"{len(answered)} answers, {len(stored)} decisions and {audited} decision audit records "
        f"in the ledger; {missing} answered but missing, {extra} stored but never answered"
    )
    return ok, text


# -- the report --------------------------------------------------------------------------


def _fmt(level: Level) -> str:
    errors = sum(level.errors.values())
    return (
        f"  {level.clients:>3} clients  {level.rate:>8.0f}/s  p50 {level.pct(50):>7.2f} ms"
        f"  p99 {level.pct(99):>7.2f} ms  max {max(level.latencies_ms, default=math.nan):>7.1f} ms"
        f"  errors {errors:>3}  server cpu {level.server_cpu:4.2f}"
        f"  loadgen cpu {level.loadgen_cpu:4.2f} ({level.procs} proc)"
    )


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> tuple[list[Level], str]:
    server = Server(mode, workdir, args.policy, args.log_level)
    answered: list[str] = []
    levels: list[Level] = []
    try:
        _, ids = run_level(server, 16, args.warmup, args.loadgen_procs, args.era)  # warm-up
        answered += ids
        for clients in args.clients:
            level, ids = run_level(server, clients, args.duration, args.loadgen_procs, args.era)
            answered += ids
            levels.append(level)
            print(f"[{mode}]" + _fmt(level), flush=True)
            if level.errors:
                print(f"    errors: {level.errors}", flush=True)
    finally:
        server.kill()
    verdict = ""
    if mode == "ledger":
        ok, text = verify_durable(server.ledger_file, answered)
        verdict = f"durability after SIGKILL: {'OK' if ok else 'FAILED'}: {text}"
        print(verdict, flush=True)
    return levels, verdict


def summary(results: dict[str, list[Level]]) -> None:
    print("\nsummary (decisions/s, p50 / p99 ms)")
    for mode, levels in results.items():
        cells = "  ".join(
            f"{lv.clients:>2}c {lv.rate:>6.0f}/s {lv.pct(50):5.1f}/{lv.pct(99):6.1f}"
            for lv in levels
        )
        print(f"  {mode:<10} {cells}")
    for mode, levels in results.items():
        by = {lv.clients: lv for lv in levels}
        if 16 in by and 64 in by:
            print(f"  {mode:<10} ratio 64 vs 16 clients: {by[64].rate / by[16].rate:.2f}")
    durable = {lv.clients: lv for lv in results.get("ledger", [])}
    if 64 in durable:
        top = durable[64]
        rate_ok, p99_ok = top.rate >= TARGET_RATE, top.pct(99) < TARGET_P99_MS
        print(
            f"targets (ledger, 64 clients): >= {TARGET_RATE:,.0f}/s: {top.rate:,.0f} "
            f"{'met' if rate_ok else 'MISSED'}; p99 < {TARGET_P99_MS:.0f} ms: "
            f"{top.pct(99):.1f} {'met' if p99_ok else 'MISSED'}"
        )
        if 16 in durable:
            ratio = top.rate / durable[16].rate
            verdict = "met" if ratio >= 1 else "MISSED"
            print(f"         64 vs 16 not falling (>= 1.0): {ratio:.2f} {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per client count")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--clients", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--modes", default="ledger,no-ledger", help="ledger and/or no-ledger")
    parser.add_argument("--policy", help="policy file (default: the embedded policy)")
    parser.add_argument("--loadgen-procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--log-level", default="INFO", help="the server's log level")
    parser.add_argument(
        "--era",
        choices=["legacy", "modern"],
        default="legacy",
        help="legacy: initialize handshake + session (2025-11-25, the default); modern: "
        "stateless 2026-07-28 requests",
    )
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    print(
        f"route_task over Streamable HTTP: {args.duration:g} s per level, clients {args.clients}, "
        f"policy {args.policy or '(embedded default)'}, {os.cpu_count()} CPUs, "
        f"load generator in {args.loadgen_procs} process(es), protocol era {args.era}",
        flush=True,
    )
    results: dict[str, list[Level]] = {}
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_http_route.") as tmp:
        for mode in args.modes.split(","):
            workdir = Path(tmp) / mode
            workdir.mkdir()
            results[mode], verdict = run_mode(mode, args, workdir)
            verdicts += [verdict] if verdict else []
    summary(results)
    return 0 if all(": OK:" in v for v in verdicts) else 1


# -- the no-ledger server (this file, run as the server subprocess) -----------------------


def serve_without_ledger(argv: list[str]) -> int:
    """`rolegate serve` with the ledger replaced by an in-memory stand-in (nothing durable)."""
    from datetime import datetime

    import rolegate.ledger
    from rolegate.ledger import MemoryWork
    from rolegate.policy.decision import BudgetSnapshot

    class NoLedger(MemoryWork):
        description = "none (benchmark: nothing durable)"

        def snapshot(self, policy: object, now: datetime) -> BudgetSnapshot:
            return BudgetSnapshot()

        def reserve(self, **kwargs: object) -> None:
            return None

        def commit(self, request_id: str, **kwargs: object) -> None:
            return None

        def release(self, request_id: str, now: datetime, **kwargs: object) -> None:
            return None

        def sweep(self, now: datetime) -> int:
            return 0

        def audit(self, record: object) -> None:
            return None

        def recent_audit(self, limit: int) -> list[dict[str, object]]:
            return []

        def close(self) -> None:
            return None

    # Before the server's modules import it (they bind the name when imported).
    rolegate.ledger.open_ledger = lambda _url: NoLedger()  # type: ignore[assignment]
    sys.argv = ["rolegate", *argv]
    try:
        runpy.run_module("rolegate", run_name="__main__")  # what `python -m rolegate` runs
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == NO_LEDGER_FLAG:
        sys.exit(serve_without_ledger(sys.argv[2:]))
    sys.exit(main())
