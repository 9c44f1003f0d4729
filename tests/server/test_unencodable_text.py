"""Text no UTF-8 transport can carry (a lone surrogate in a model's output) never crashes the
server or loses paid output: it reaches the client as U+FFFD.

The model is a loopback server that streams an OpenAI chat completion whose JSON holds the
escape of a lone surrogate, as a broken model server can (a real one cannot be made to).
"""

from __future__ import annotations

import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

pytestmark = pytest.mark.anyio

CHUNKS = [
    '{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
    '"delta":{"content":"bad \\ud800 text"},"finish_reason":null}]}',
    '{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,'
    '"delta":{"content":" and {\\"verdict\\": \\"\\udc00\\"}"},"finish_reason":"stop"}]}',
    '{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
    '"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}',
]


class BrokenModel:
    """Streams the chunks above for every chat completion."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                body = "".join(f"data: {c}\n\n" for c in CHUNKS) + "data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def model() -> Iterator[BrokenModel]:
    server = BrokenModel()
    yield server
    server.close()


POLICY = """
version: 1
name: surrogate-test
providers:
  broken: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", locality: local}}
models:
  m: {{provider: broken, name: m, context_window: 4096, reserve_tokens: 512,
      streaming: {{internal: true}}}}
roles:
  parrot: {{model: m}}
channels:
  cli: {{kind: internal, streaming: true}}
"""


async def test_a_lone_surrogate_from_the_model_never_kills_the_stdio_server(
    tmp_path: Path, model: BrokenModel
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=model.port))
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "rolegate", "serve", "--policy", str(policy)),
            *("--ledger", f"sqlite://{tmp_path / 'ledger.sqlite3'}"),
        ],
    )
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    # A server that died would leave the call waiting: bound it, so that is a failure.
    with tempfile.TemporaryFile("w+") as errlog, anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            run = await client.call_tool(
                "run_role",
                {"role": "parrot", "prompt": "hi", "channel": "cli"},
                progress_callback=progress,
            )
            alive = await client.call_tool("route_task", {"task": "hello"})
    assert not run.is_error, run.content
    assert run.structured_content["output"] == 'bad \ufffd text and {"verdict": "\ufffd"}'
    assert seen == ["bad \ufffd text", ' and {"verdict": "\ufffd"}']
    assert alive.structured_content["code"] == "ROUTED"
