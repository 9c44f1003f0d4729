"""LiteLLM Router's added latency over a direct openai call, against one llama.cpp server.

Run by the LiteLLM venv's python (benchmarks/setup_litellm.sh makes it), never by .venv's:
LiteLLM is a benchmark comparison only, never a rolegate dependency.

  $HOME/.cache/rolegate-bench/litellm-venv/bin/python benchmarks/litellm_worker.py \
      --url http://127.0.0.1:PORT [--n 300] [--warmup 30]
      [--serve]   # bench_run_role.py's mode: blocks on request (see below)

Each round makes, back to back and in alternating order, one direct call with the openai client
and one ``await router.acompletion(...)`` through ``litellm.Router`` whose model list holds the
same server as an OpenAI-compatible deployment. Both calls are shaped alike: streamed, usage
requested, max_tokens=1, the same prompt; both clients have their own retries off. A round in
which either call gets no answer from the server (llama.cpp closes the connection after each
streamed answer, unannounced, and a client that reuses it first fails; see bench_run_role.py)
is discarded and its drops counted per side, and the failed side makes unmeasured calls until
one succeeds before the next round, so no figure contains a retry.

Without --serve: prints one JSON object: direct/litellm/diff p50 and p99 (ms), rounds kept,
rounds discarded. With --serve (how bench_run_role.py drives it, so that LiteLLM's blocks can
interleave with rolegate's in one run): warms up, prints {"ready": ...}, then for each line
"ROUNDS WARMUP" on stdin runs WARMUP unmeasured rounds (to re-warm connections that idled
between blocks), then ROUNDS rounds, and prints one JSON line with the raw samples; exits on
EOF. Stdout carries only JSON lines; anything LiteLLM prints goes to stderr.

LiteLLM is kept quiet and offline: the local model cost map (no download), telemetry off, no
debug banner, logging at ERROR.
"""

from __future__ import annotations

import os

# Before litellm is imported: these are read at import time.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("LITELLM_LOG", "ERROR")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")  # no .env loading
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from typing import Any

PROMPT = "Reply with one word: what colour is the sky?"  # the same as bench_run_role.py's
MODEL = "gemma3-270m"  # llama.cpp's alias (tests/support/llama.py)


def quiet_import() -> Any:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # whatever litellm prints on import must not reach our JSON
    try:
        import litellm
    finally:
        sys.stdout = real_stdout
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    litellm.turn_off_message_logging = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx", "openai"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return litellm


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def is_connection_error(exc: BaseException) -> bool:
    """A call that never reached a server answer: dropped keep-alive, refused, reset.

    litellm wraps the openai SDK's APIConnectionError in its own APIConnectionError (or, with
    its aiohttp transport, an aiohttp error); match by name so that no version's class
    layout matters. Anything else (a 4xx/5xx answer, a bug) is a real failure and is raised.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if name in (
            "APIConnectionError",
            "RemoteProtocolError",
            "ConnectError",
            "ReadError",
            "ServerDisconnectedError",
            "ClientConnectionError",
            "ClientOSError",
            "ConnectionResetError",
            "ConnectionRefusedError",
            "BrokenPipeError",
        ):
            return True
        if name == "InternalServerError" and "disconnect" in str(exc).lower():
            return True  # litellm maps some aiohttp disconnects to a 500 of its own
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


class Bench:
    def __init__(self, v1: str) -> None:
        import openai

        litellm = quiet_import()
        self.direct = openai.AsyncOpenAI(base_url=v1, api_key="unused", max_retries=0)
        self.router = litellm.Router(
            model_list=[
                {
                    "model_name": "gemma",
                    "litellm_params": {
                        "model": f"openai/{MODEL}",
                        "api_base": v1,
                        "api_key": "unused",
                        "max_retries": 0,
                        "timeout": 60,
                    },
                }
            ],
            num_retries=0,
            set_verbose=False,
        )

    async def direct_call(self) -> float:
        t0 = time.perf_counter()
        stream = await self.direct.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=1,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
        return (time.perf_counter() - t0) * 1000

    async def litellm_call(self) -> float:
        t0 = time.perf_counter()
        stream = await self.router.acompletion(
            model="gemma",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=1,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _ in stream:
            pass
        return (time.perf_counter() - t0) * 1000

    async def attempt(self, side: str) -> float | None:
        """One measured call; None when it could not reach the server (then reconnect)."""
        call = self.direct_call if side == "direct" else self.litellm_call
        try:
            return await call()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
        for attempt in range(5):  # reconnect, unmeasured; a server that stays away is fatal
            await asyncio.sleep(0.05 * attempt)
            try:
                await call()
            except Exception as exc:
                if not is_connection_error(exc) or attempt == 4:
                    raise
            else:
                return None
        raise AssertionError("unreachable")

    async def rounds(self, n: int, start: int = 0) -> dict[str, Any]:
        """``n`` rounds: the kept rounds' samples (ms) and the drops per side."""
        out: dict[str, Any] = {"direct": [], "litellm": [], "diff": []}
        out |= {"discarded": 0, "dropped_direct": 0, "dropped_litellm": 0}
        for i in range(start, start + n):
            order = ("direct", "litellm") if i % 2 else ("litellm", "direct")
            got = {side: await self.attempt(side) for side in order}
            d, r = got["direct"], got["litellm"]
            if d is None or r is None:
                out["discarded"] += 1
                out["dropped_direct"] += d is None
                out["dropped_litellm"] += r is None
                continue
            out["direct"].append(d)
            out["litellm"].append(r)
            out["diff"].append(r - d)
        return out

    async def close(self) -> None:
        await self.direct.close()


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def summary(data: dict[str, Any], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"litellm_version": version, "rounds": len(data["diff"])}
    for key in ("discarded", "dropped_direct", "dropped_litellm"):
        out[key] = data[key]
    for key in ("direct", "litellm", "diff"):
        if data[key]:
            out[f"{key}_p50"] = statistics.median(data[key])
            out[f"{key}_p99"] = pct(data[key], 99)
    return out


async def run(args: argparse.Namespace) -> None:
    import litellm

    version = getattr(litellm, "__version__", None) or _dist_version()
    bench = Bench(args.url.rstrip("/") + "/v1")
    try:
        await bench.rounds(args.warmup)
        if not args.serve:
            emit(summary(await bench.rounds(args.n), version))
            return
        emit({"ready": True, "litellm_version": version})
        done = 0
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                break
            n, warmup = (int(word) for word in line.split())
            await bench.rounds(warmup, start=done)  # settle after idling since the last block
            emit(await bench.rounds(n, start=done + warmup))
            done += warmup + n
    finally:
        await bench.close()


def _dist_version() -> str:
    from importlib.metadata import version

    return version("litellm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="llama.cpp server, http://HOST:PORT")
    parser.add_argument("--n", type=int, default=300, help="measured rounds (without --serve)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--serve", action="store_true", help="run blocks of rounds on request")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
