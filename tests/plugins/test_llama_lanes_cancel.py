"""Concurrency lanes and client cancellation, against a real llama.cpp server through MCP.

In-flight requests are counted by a transport wrapped around the real one (transports are
injected), so the test sees exactly what reaches the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.ledger import Ledger, open_ledger
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from tests.support.llama import LlamaServer, llama_server
from tests.support.progress import Progress

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: lanes-test
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
models:
  gemma-a: {{provider: llama, name: gemma3-270m, context_window: 1024, reserve_tokens: 128,
             weight: heavy, timeout_s: 120, streaming: {{internal: true}}}}
  gemma-b: {{provider: llama, name: gemma3-270m, context_window: 1024, reserve_tokens: 128,
             weight: heavy, timeout_s: 120, streaming: {{internal: true}}}}
roles:
  first: {{model: gemma-a}}
  second: {{model: gemma-b}}
lanes: {{heavy: {heavy}}}
channels:
  cli: {{kind: internal, streaming: true}}
defaults: {{channel: cli}}
budgets:
  - {{scope: global, window: day, tokens: 1000000}}
"""


class _Counted(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, done: Any) -> None:
        self._inner, self._done = inner, done

    async def __aiter__(self) -> Any:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._done()


class CountingTransport(httpx2.AsyncBaseTransport):
    """Counts chat requests in flight (request sent, response body not yet closed)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.active = 0
        self.peak = 0
        self.started = 0
        self.closed = 0

    def _done(self) -> None:
        self.active -= 1
        self.closed += 1

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.endswith("/chat/completions"):
            return await self._inner.handle_async_request(request)
        self.active += 1
        self.started += 1
        self.peak = max(self.peak, self.active)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._done()
            raise
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Counted(response.stream, self._done)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def build(
    server: LlamaServer, tmp_path: Path, heavy: int, transport: CountingTransport
) -> tuple[MCPServer, Ledger]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(v1=server.v1, heavy=heavy))
    ledger = open_ledger(f"sqlite://{tmp_path / 'ledger.sqlite3'}")
    service = build_engine(
        load_policy(path), env={}, ledger=ledger, transports={"llama": transport}
    )
    return build_server(service), ledger


@pytest.mark.parametrize("heavy", [1, 2])
async def test_heavy_lane_limits_calls_in_flight(
    llama: LlamaServer, tmp_path: Path, heavy: int
) -> None:
    transport = CountingTransport()
    server, _ = build(llama, tmp_path, heavy, transport)
    results: dict[str, Any] = {}

    async def call(client: Client, role: str) -> None:
        results[role] = await client.call_tool(
            "run_role",
            {"role": role, "prompt": "Describe the sea in two sentences.", "max_output_tokens": 24},
        )

    async with Client(server, mode="legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(call, client, "first")
        tg.start_soon(call, client, "second")
    for role, result in results.items():
        assert not result.is_error, (role, result.content)
        assert result.structured_content["usage"]["output_tokens"] >= 1
    assert transport.started == 2
    assert transport.active == 0
    # The llama fixture runs two slots, so without the lane both calls are in flight at once.
    assert transport.peak == heavy


async def test_client_cancellation_stops_the_upstream_generation(tmp_path: Path) -> None:
    log = tmp_path / "llama.log"
    transport = CountingTransport()
    with llama_server(ctx=2048, parallel=1, log=log, extra_args=("--metrics",)) as llama:
        server, ledger = build(llama, tmp_path, 1, transport)
        async with Client(server, mode="legacy") as client:
            with anyio.CancelScope() as scope:
                progress = Progress(cancel=scope, after=5)
                await client.call_tool(
                    "run_role",
                    {
                        "role": "first",
                        "prompt": "Write a very long story about a lighthouse keeper.",
                        "max_output_tokens": 800,
                    },
                    progress_callback=progress,
                )
            assert scope.cancelled_caught
            # The upstream response is closed once the server handler is cancelled.
            with anyio.fail_after(30):
                while transport.closed < 1:
                    await anyio.sleep(0.05)
                while await llama.busy():
                    await anyio.sleep(0.05)
            budget = await client.call_tool("check_budget", {})
        predicted = llama.metric("llamacpp:tokens_predicted_total")
    assert len(progress.messages) >= 5
    assert "cancel task" in log.read_text(errors="replace")  # llama.cpp's own record
    assert 5 <= predicted < 800
    # Charged for what was produced, and nothing is left reserved.
    (scope_line,) = budget.structured_content["scopes"]
    assert scope_line["reserved_tokens"] == 0
    assert scope_line["spent_tokens"] >= 5
    (record,) = [r for r in ledger.recent_audit(10) if r["kind"] == "call"]
    assert record["code"] == "CANCELLED"
    assert record["role"] == "first"
    assert record["output_tokens"] >= 5
