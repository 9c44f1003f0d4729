"""run_role's added latency over a direct openai call, against LiteLLM's Router in the same run.

From a fresh clone (the first two steps are cached and quick after their first run):

  bash scripts/test.sh            # .venv with rolegate (or: python3 -m venv .venv &&
                                  #   .venv/bin/pip install -e '.[dev]'), then the suite
  eval "$(bash scripts/setup_llama.sh .venv ~/.cache/rolegate-ci | grep -E '^(LLAMA_SERVER|GGUF)=')"
  export ROLEGATE_LLAMA_SERVER="$LLAMA_SERVER" ROLEGATE_GGUF="$GGUF"
  bash benchmarks/setup_litellm.sh    # LiteLLM, pinned, in its own venv (or pass --setup-litellm)
  .venv/bin/python benchmarks/bench_run_role.py [--n 300] [--blocks 5] [--url http://HOST:PORT]

Options: --n measured rounds per row (split over --blocks interleaved blocks); --warmup
unmeasured rounds per row before the first block; --block-warmup unmeasured rounds at the start
of every block; --url a running llama.cpp server (default: start one from
$ROLEGATE_LLAMA_SERVER/$ROLEGATE_GGUF, as the tests do); --no-litellm; --setup-litellm;
--litellm-python PATH (default $ROLEGATE_LITELLM_VENV/bin/python, else
~/.cache/rolegate-bench/litellm-venv/bin/python); --no-stdio; --log-level (rolegate's, in process
and in the stdio server alike; default WARNING).

What a round is: back to back and in alternating order, one direct call with the openai client
and one call through the path measured, both with the same prompt and max_tokens=1, both
streamed with usage requested (that is how rolegate calls the server), so the difference is what
the path adds. The figures are the p50/p99 of the per-round differences. Rows:

  rolegate in process  run_role through an in-memory MCP client (mcp.Client(server)), three
                       set-ups: no ledger; the default SQLite ledger (WAL, synchronous=FULL, so a
                       call pays fsyncs for reserve, commit and audit); SQLite with budgets that
                       the call touches.
  rolegate stdio       `python -m rolegate serve --policy P --ledger sqlite://...` spawned and
                       driven by the SDK's stdio client: the default SQLite ledger, plus the
                       pipe hops and JSON-RPC framing a real MCP host pays.
  LiteLLM Router       benchmarks/litellm_worker.py in LiteLLM's own venv (never a rolegate
                       dependency): ``await litellm.Router(...).acompletion(..., stream=True)``
                       against the same server, with its own direct-call baseline. It persists
                       nothing, so it is the bar for the in-process default-ledger row (issue:
                       "below LiteLLM's Router, measured in the same run").

Interleaving: all rows stay open for the whole run (the LiteLLM worker waits on its stdin
between blocks) and the run is --blocks rounds of blocks, each row taking n/blocks rounds per
block, the rows' order rotating from block to block, so machine drift and llama.cpp's state hit
every row alike.

Dropped connections. This llama.cpp build (scripts/setup_llama.sh) closes the connection after
every streamed completion, right after the last chunk and without announcing it (no "Connection:
close"; non-streamed answers keep it alive). A client that reuses the connection before the
close reaches it sends its next request on a dead socket and fails with "Server disconnected
without sending a response": openai.APIConnectionError on the direct side, PROVIDER_UNAVAILABLE
from run_role, a connection error inside LiteLLM. Back to back that hits a few calls in a
hundred; here, with the other call of the round in between, less, but more on a busy machine.
Every call that succeeds has therefore opened a fresh TCP connection, on every side alike.

Choice: keep the clients as they are and discard the round. A call that fails this way got no
answer (so it can be neither measured nor compared); the failed side then makes unmeasured calls
until one succeeds (giving up after 5), the round is dropped whole, and the drops are counted
per side and printed. Every block also starts with --block-warmup unmeasured rounds, to settle
after the switch of rows. Why not turn connection reuse off on every side instead: it would
not change what is measured (the server already makes each streamed call a new connection),
it is not how the clients run in production, and LiteLLM's Router owns its HTTP client, so
"off alike" could not be guaranteed without patching it. A drop is the server's doing, not the
path's, and costs the round both of its calls, so the differences stay unbiased. The policy
keeps rolegate's provider retries at 0 (rolegate's default is 1, which would retry such a call
inside run_role), as LiteLLM's are, so that a drop surfaces instead of hiding a reconnect
inside a measured call.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import openai
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.server.mcpserver import MCPServer

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from rolegate.engine.bootstrap import build_engine  # noqa: E402
from rolegate.ledger import open_ledger  # noqa: E402
from rolegate.logs import configure_logging  # noqa: E402
from rolegate.policy import load_policy  # noqa: E402
from rolegate.server.app import build_server  # noqa: E402

PROMPT = "Reply with one word: what colour is the sky?"  # litellm_worker.py uses the same
MODEL = "gemma3-270m"
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
LITELLM_VENV = Path(
    os.environ.get("ROLEGATE_LITELLM_VENV")
    or Path.home() / ".cache" / "rolegate-bench" / "litellm-venv"
)
SETUP_LITELLM = "bash benchmarks/setup_litellm.sh"
RECONNECT_TRIES = 5
DEFAULT_LEDGER_ROW = "in process, SQLite ledger (default)"


class BenchError(Exception):
    pass


class Dropped(Exception):
    """The call got no answer: the server had closed the connection (see the docstring)."""


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


@dataclass
class Row:
    label: str
    direct: list[float] = field(default_factory=list)
    path: list[float] = field(default_factory=list)
    diff: list[float] = field(default_factory=list)
    block_p50: list[float] = field(default_factory=list)
    discarded: int = 0  # rounds
    dropped_direct: int = 0  # calls
    dropped_path: int = 0

    def add(self, block: Block) -> None:
        diffs = [p - d for p, d in zip(block.path, block.direct, strict=True)]
        self.direct += block.direct
        self.path += block.path
        self.diff += diffs
        self.discarded += block.discarded
        self.dropped_direct += block.dropped_direct
        self.dropped_path += block.dropped_path
        if diffs:
            self.block_p50.append(statistics.median(diffs))


@dataclass
class Block:
    direct: list[float] = field(default_factory=list)  # ms, kept rounds only
    path: list[float] = field(default_factory=list)
    discarded: int = 0
    dropped_direct: int = 0
    dropped_path: int = 0


# ---- the direct side and rolegate's sides ----------------------------------------------------


async def direct_call(client: openai.AsyncOpenAI) -> float:
    t0 = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=1,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
    except openai.APITimeoutError:
        raise
    except openai.APIConnectionError as exc:
        raise Dropped(str(exc)) from exc
    return (time.perf_counter() - t0) * 1000


async def run_role_call(client: Client) -> float:
    t0 = time.perf_counter()
    result = await client.call_tool(
        "run_role", {"role": "writer", "prompt": PROMPT, "max_output_tokens": 1}
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        if text.startswith("PROVIDER_UNAVAILABLE"):
            raise Dropped(text)
        raise BenchError(f"run_role failed: {text}")
    return elapsed


async def attempt(call: Callable[[], Awaitable[float]]) -> float | None:
    """One measured call, or None when it was dropped (then reconnect, unmeasured)."""
    try:
        return await call()
    except Dropped:
        pass
    for n in range(RECONNECT_TRIES):
        await anyio.sleep(0.05 * n)
        try:
            await call()
        except Dropped as exc:
            if n == RECONNECT_TRIES - 1:
                raise BenchError(f"the server stays unreachable: {exc}") from exc
        else:
            return None
    raise AssertionError("unreachable")


async def rolegate_block(
    direct: openai.AsyncOpenAI, client: Client, n: int, warmup: int, start: int
) -> Block:
    """``warmup`` unmeasured rounds, then ``n`` rounds."""
    out = Block()
    calls = {"d": lambda: direct_call(direct), "r": lambda: run_role_call(client)}
    for i in range(start, start + warmup + n):
        got = {k: await attempt(calls[k]) for k in (("d", "r") if i % 2 else ("r", "d"))}
        if i < start + warmup:
            continue
        d, r = got["d"], got["r"]
        if d is None or r is None:
            out.discarded += 1
            out.dropped_direct += d is None
            out.dropped_path += r is None
            continue
        out.direct.append(d)
        out.path.append(r)
    return out


def write_policy(v1: str, tmp: Path, name: str, budgets: bool) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(POLICY.format(v1=v1, budgets=BUDGETS if budgets else ""))
    return path


@dataclass
class RolegateSide:
    row: Row
    client: Client


async def open_in_process(
    stack: AsyncExitStack, v1: str, tmp: Path, setup: str, label: str
) -> RolegateSide:
    policy = write_policy(v1, tmp, setup, budgets=setup == "sqlite+budgets")
    ledger = None if setup == "none" else open_ledger(f"sqlite://{tmp / setup}.sqlite3")
    if ledger is not None:
        stack.callback(ledger.close)
    server: MCPServer = build_server(build_engine(load_policy(policy), env={}, ledger=ledger))
    client = await stack.enter_async_context(Client(server, mode="legacy"))
    return RolegateSide(Row(label), client)


async def open_stdio(
    stack: AsyncExitStack, v1: str, tmp: Path, log_level: str, errlog: IO[str]
) -> RolegateSide:
    policy = write_policy(v1, tmp, "stdio", budgets=False)
    ledger = f"sqlite://{tmp / 'stdio'}.sqlite3"
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "rolegate", "serve", "--policy", str(policy), "--ledger", ledger),
            *("--log-level", log_level),
        ],
        env=dict(os.environ),
    )
    client = await stack.enter_async_context(
        Client(stdio_client(params, errlog=errlog), mode="legacy")
    )
    return RolegateSide(Row("stdio, SQLite ledger (default)"), client)


# ---- LiteLLM, in its own venv -------------------------------------------------------------


def litellm_ready(python: Path) -> bool:
    return python.exists() and (python.parent.parent / ".rolegate-litellm").exists()


def setup_litellm(venv: Path) -> None:
    print(f"[setup] {SETUP_LITELLM} {venv}", file=sys.stderr, flush=True)
    script = [str(HERE / "setup_litellm.sh"), str(venv)]
    subprocess.run(["bash", *script], check=True, cwd=ROOT, stdout=sys.stderr)


class LiteLLMWorker:
    """benchmarks/litellm_worker.py --serve: one JSON line per block of rounds asked for."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.version = "?"

    async def line(self) -> dict[str, Any]:
        try:
            raw = await self.stdout.receive_until(b"\n", 64 * 1024 * 1024)
        except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
            raise BenchError(
                "the LiteLLM worker exited (its stderr is printed above the table)"
            ) from exc
        data: dict[str, Any] = json.loads(raw)
        return data

    async def ready(self) -> None:
        hello = await self.line()
        self.version = str(hello.get("litellm_version", "?"))

    async def block(self, n: int, warmup: int) -> Block:
        assert self.process.stdin is not None
        await self.process.stdin.send(f"{n} {warmup}\n".encode())
        data = await self.line()
        return Block(
            data["direct"],
            data["litellm"],
            data["discarded"],
            data["dropped_direct"],
            data["dropped_litellm"],
        )


@asynccontextmanager
async def litellm_worker(
    python: Path, url: str, warmup: int, errlog: IO[str]
) -> AsyncIterator[LiteLLMWorker]:
    command = [str(python), str(HERE / "litellm_worker.py"), "--url", url, "--serve"]
    process = await anyio.open_process(
        [*command, "--warmup", str(warmup)], stderr=errlog, env=dict(os.environ)
    )
    try:
        yield LiteLLMWorker(process)
    finally:
        assert process.stdin is not None
        await process.stdin.aclose()  # EOF: the worker closes its clients and exits
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    rolegate: list[Row]
    litellm: Row | None
    n: int
    blocks: int


async def measure(args: argparse.Namespace, url: str, tmp: Path, errlog: IO[str]) -> Result:
    v1 = f"{url}/v1"
    per_block = math.ceil(args.n / args.blocks)
    direct = openai.AsyncOpenAI(base_url=v1, api_key="unused", max_retries=0)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(direct.close)
        worker: LiteLLMWorker | None = None
        if args.litellm_python is not None:
            # Started first: importing litellm takes seconds, overlapping rolegate's warm-up.
            worker = await stack.enter_async_context(
                litellm_worker(args.litellm_python, url, args.warmup, errlog)
            )
        sides = [
            await open_in_process(stack, v1, tmp, "none", "in process, no ledger"),
            await open_in_process(stack, v1, tmp, "sqlite", DEFAULT_LEDGER_ROW),
            await open_in_process(stack, v1, tmp, "sqlite+budgets", "in process, SQLite + budgets"),
        ]
        if not args.no_stdio:
            sides.append(await open_stdio(stack, v1, tmp, args.log_level, errlog))
        for side in sides:
            print(f"[warm-up] rolegate {side.row.label}", file=sys.stderr, flush=True)
            await rolegate_block(direct, side.client, 0, args.warmup, 0)
        litellm_row = None
        if worker is not None:
            print("[warm-up] LiteLLM Router (waiting for the worker)", file=sys.stderr, flush=True)
            await worker.ready()
            litellm_row = Row(f"LiteLLM Router {worker.version}, in process")
        slots: list[RolegateSide | None] = [*sides, None] if worker else [*sides]
        blocks = 0
        for b in range(args.blocks):
            n = min(per_block, args.n - b * per_block)
            if n <= 0:
                break
            blocks += 1
            order = slots[b % len(slots) :] + slots[: b % len(slots)]
            print(f"[block {b + 1}/{args.blocks}] {n} rounds per row", file=sys.stderr, flush=True)
            for slot in order:
                if slot is None:
                    assert worker is not None
                    assert litellm_row is not None
                    litellm_row.add(await worker.block(n, args.block_warmup))
                    continue
                start = args.warmup + b * (args.block_warmup + per_block)
                slot.row.add(await rolegate_block(direct, slot.client, n, args.block_warmup, start))
        return Result([s.row for s in sides], litellm_row, args.n, blocks)


def report(result: Result, litellm_note: str | None) -> None:
    rows = [*result.rolegate, *([result.litellm] if result.litellm else [])]
    names = [r.label if r is result.litellm else f"rolegate {r.label}" for r in rows]
    width = max(len(name) for name in names) + 2
    print(
        "added latency over a direct openai call (streamed, max_tokens=1), llama.cpp on loopback;"
        f" n={result.n} rounds per row in {result.blocks} interleaved blocks"
    )
    print(
        f"  {'path':<{width}}{'direct p50':>11}{'p50':>8}{'added p50':>10}{'added p99':>10}"
        f"{'kept':>6}{'dropped d/p':>12}"
    )
    for name, row in zip(names, rows, strict=True):
        dropped = f"{row.dropped_direct}/{row.dropped_path}"
        if not row.diff:
            print(f"  {name:<{width}}{'(no rounds kept)':>45}{dropped:>12}")
            continue
        print(
            f"  {name:<{width}}{statistics.median(row.direct):11.2f}"
            f"{statistics.median(row.path):8.2f}{statistics.median(row.diff):10.2f}"
            f"{pct(row.diff, 99):10.2f}{len(row.diff):6d}{dropped:>12}"
        )
    discarded = sum(r.discarded for r in rows)
    print(
        "  ms; added = path - direct, per round; direct p50 is each row's own baseline (LiteLLM's "
        "from its worker)."
    )
    print(
        f"  {discarded} round(s) discarded in all: a call on a connection llama.cpp had just closed"
        " (d/p = calls dropped on the direct side / on the path's; see the docstring)."
    )
    ours = next(r for r in result.rolegate if r.label == DEFAULT_LEDGER_ROW)
    theirs = result.litellm
    target = "target: rolegate default-ledger in-process added p50 below LiteLLM Router's"
    if theirs is None or not theirs.diff or not ours.diff:
        print(f"  LiteLLM Router: not measured. {litellm_note or ''}".rstrip())
        print(f"  {target}: unknown (not measured)")
        return
    ours50, theirs50 = statistics.median(ours.diff), statistics.median(theirs.diff)
    pairs = list(zip(ours.block_p50, theirs.block_p50, strict=False))
    below = sum(a < b for a, b in pairs)
    print(
        f"  ratio rolegate/LiteLLM, added p50 (default SQLite ledger, in process): "
        f"{ours50 / theirs50:.2f}x ({ours50:.2f} vs {theirs50:.2f} ms; block by block, rolegate "
        f"below in {below} of {len(pairs)})"
    )
    print(f"  {target}: {'met' if ours50 < theirs50 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="measured rounds per row")
    parser.add_argument("--blocks", type=int, default=5, help="interleaved blocks per row")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured rounds per row")
    parser.add_argument("--block-warmup", type=int, default=3, help="unmeasured, every block")
    parser.add_argument("--url", help="a running llama.cpp server (default: start one)")
    parser.add_argument("--no-stdio", action="store_true", help="skip the stdio row")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM row")
    parser.add_argument("--setup-litellm", action="store_true", help=f"run {SETUP_LITELLM} first")
    parser.add_argument("--litellm-python", type=Path, default=LITELLM_VENV / "bin" / "python")
    parser.add_argument("--log-level", default="WARNING", help="rolegate's log level")
    args = parser.parse_args()
    if args.n < 1 or args.blocks < 1 or args.warmup < 0 or args.block_warmup < 0:
        parser.error("--n and --blocks must be at least 1, the warm-ups at least 0")
    configure_logging(args.log_level)  # INFO would print a line per call to stderr
    note = None
    if args.no_litellm:
        args.litellm_python, note = None, "(--no-litellm)"
    else:
        if args.setup_litellm:
            setup_litellm(args.litellm_python.parent.parent)
        if not litellm_ready(args.litellm_python):
            venv = args.litellm_python.parent.parent
            command = SETUP_LITELLM if venv == LITELLM_VENV else f"{SETUP_LITELLM} {venv}"
            note = (
                f"Its venv is not set up ({venv}); set it up with `{command}` "
                "(or run this with --setup-litellm)."
            )
            print(f"[litellm] {note}", file=sys.stderr, flush=True)
            args.litellm_python = None
    with (
        llama(args.url) as url,
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryFile("w+") as errlog,
    ):
        try:
            result = anyio.run(measure, args, url, Path(tmp), errlog)
        except BaseException as exc:
            errlog.seek(0)
            sys.stderr.write(errlog.read()[-8000:])  # the stdio server's and the worker's
            problem = bench_error(exc)
            if problem is None:
                raise
            raise SystemExit(f"bench_run_role: {problem}") from None
    report(result, note)


def bench_error(exc: BaseException) -> BenchError | None:
    """The BenchError inside ``exc`` (task groups wrap it in exception groups), if any."""
    if isinstance(exc, BenchError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = bench_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    main()
