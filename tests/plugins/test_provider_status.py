"""HTTP errors from a model server map to codes in one table, whatever the error body holds.

Ollama answers a failure with ``{"error": ...}``, and the value may be an object; a server
that is overloaded answers 503. The stand-in below is a real HTTP server on loopback that
answers /api/chat exactly so (a real Ollama cannot be made to fail on demand here).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from rolegate.engine.bootstrap import build_engine
from rolegate.policy import load_policy
from rolegate.server.app import build_server

pytestmark = pytest.mark.anyio


class FailingOllama:
    """Answers every request with ``status`` and an Ollama-style error object."""

    def __init__(self, status: int) -> None:
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests += 1
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = json.dumps({"error": {"message": "model overloaded", "type": "server"}})
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


POLICY = """
version: 1
name: status-test
providers:
  sick: {{type: ollama, base_url: "http://127.0.0.1:{port}", locality: local, max_retries: 2}}
  echo: {{type: echo, base_url: "echo://", locality: local}}
models:
  sick-1: {{provider: sick, name: sick-1, context_window: 4096, reserve_tokens: 512}}
  echo-1: {{provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512}}
roles:
  default_on: {{model: sick-1, fallback: {{models: [echo-1], mode: auto}}}}
  any_error: {{model: sick-1, fallback: {{models: [echo-1], mode: auto, "on": [PROVIDER_ERROR]}}}}
"""


async def _run_both(status: int, tmp_path: Path) -> tuple[Any, Any, int]:
    failing = FailingOllama(status)
    try:
        path = tmp_path / "policy.yaml"
        path.write_text(POLICY.format(port=failing.port))
        server = build_server(build_engine(load_policy(path), env={}))
        async with Client(server, mode="legacy") as client:
            default_on = await client.call_tool("run_role", {"role": "default_on", "prompt": "a"})
            any_error = await client.call_tool("run_role", {"role": "any_error", "prompt": "a"})
    finally:
        failing.close()
    return default_on, any_error, failing.requests


async def test_503_with_an_error_object_is_unavailable_and_the_chain_applies(
    tmp_path: Path,
) -> None:
    default_on, _, requests = await _run_both(503, tmp_path)
    data = default_on.structured_content
    assert data is not None, default_on.content
    assert (data["model"], data["fallback"]["reason"]) == ("echo-1", "PROVIDER_UNAVAILABLE")
    # The server answered each time: never retried (max_retries covers failed connects only).
    assert requests == 2


async def test_500_with_an_error_object_is_a_coded_provider_error(tmp_path: Path) -> None:
    default_on, any_error, requests = await _run_both(500, tmp_path)
    message = default_on.content[0].text
    assert message.startswith("PROVIDER_ERROR: sick-1: server answered HTTP 500: "), message
    assert "model overloaded" in message
    # A chain declared `on: [PROVIDER_ERROR]` falls back on it.
    data = any_error.structured_content
    assert data is not None, any_error.content
    assert (data["model"], data["fallback"]["reason"]) == ("echo-1", "PROVIDER_ERROR")
    assert requests == 2
