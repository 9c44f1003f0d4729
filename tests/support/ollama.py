"""Ollama-protocol servers for the ollama provider's tests.

- PyPI's ollama-proxy-plus (a third-party server we did not write) in front of a real llama.cpp
  server: scripts/setup_ollama_compat.sh installs it and scripts/test.sh exports
  ROLEGATE_OLLAMA_COMPAT (its start script). It speaks /api/chat (NDJSON streaming), /api/tags,
  options.num_predict and format; its prompt_eval_count/eval_count are word counts, not tokens.
- A real Ollama, when OLLAMA_HOST is set (ROLEGATE_OLLAMA_MODEL picks the model, else the first
  one it lists).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.support.llama import ALIAS, LlamaServer
from tests.support.servers import free_port, missing, stop, wait_until_healthy


@dataclass
class OllamaTarget:
    base_url: str
    model: str
    llama: LlamaServer | None = None  # the upstream, when we started it


def require_compat() -> str:
    start = os.environ.get("ROLEGATE_OLLAMA_COMPAT", "")
    if not (start and Path(start).is_file()):
        missing(
            "the Ollama-protocol test server is not set up: run `bash scripts/test.sh` (it "
            "runs scripts/setup_ollama_compat.sh and exports ROLEGATE_OLLAMA_COMPAT)"
        )
    return start


@contextmanager
def ollama_compat(llama: LlamaServer) -> Iterator[OllamaTarget]:
    start = require_compat()
    port = free_port()
    proc = subprocess.Popen(
        [start, llama.v1, str(port), ALIAS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, base, "ollama-proxy-plus", timeout_s=60)
        yield OllamaTarget(base, f"llama/{ALIAS}", llama)
    finally:
        stop(proc)


def real_ollama() -> OllamaTarget:
    """A real Ollama from OLLAMA_HOST, or skip: no Ollama server can be installed in CI."""
    host = os.environ.get("OLLAMA_HOST", "")
    if not host:
        pytest.skip("OLLAMA_HOST is not set: no real Ollama to test against")
    base = host if host.startswith("http") else f"http://{host}"
    model = os.environ.get("ROLEGATE_OLLAMA_MODEL", "")
    if not model:
        tags = httpx2.get(f"{base}/api/tags", timeout=10).json()["models"]
        if not tags:
            pytest.skip(f"the Ollama at {base} has no models; `ollama pull llama3.2:1b`")
        model = tags[0]["name"]
    return OllamaTarget(base, model)
