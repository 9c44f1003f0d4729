"""Faults between rolegate and a real llama.cpp server, injected in the HTTP transport (the
providers take it as a parameter): retries happen only before any byte arrived, a stream
that breaks is charged for what it produced, and a response without usage is charged the
worst case.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from rolegate.engine.bootstrap import build_engine
from rolegate.ledger import Ledger, open_ledger
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from tests.support.llama import LlamaServer

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: faults-test
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: {retries}}}
models:
  gemma: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
           timeout_s: 120, price: {{input_per_mtok: "1", output_per_mtok: "1"}}}}
roles:
  writer: {{model: gemma}}
budgets:
  - {{scope: global, window: day, usd: "100"}}
"""


class FaultyTransport(httpx2.AsyncBaseTransport):
    """The real transport, except: the first ``refuse`` chat requests fail to connect; a chat
    stream is cut after ``cut_after`` chunks; ``strip_usage`` drops usage from the stream."""

    def __init__(self, *, refuse: int = 0, cut_after: int | None = None, strip_usage: bool = False):
        self._inner = httpx2.AsyncHTTPTransport()
        self.refuse, self.cut_after, self.strip_usage = refuse, cut_after, strip_usage
        self.chat_requests = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.endswith("/chat/completions"):
            return await self._inner.handle_async_request(request)
        self.chat_requests += 1
        if self.chat_requests <= self.refuse:
            raise httpx2.ConnectError("connection refused (injected)", request=request)
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Rewritten(response.stream, self.cut_after, self.strip_usage, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Rewritten(httpx2.AsyncByteStream):
    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        cut_after: int | None,
        strip_usage: bool,
        request: httpx2.Request,
    ) -> None:
        self._inner, self._cut, self._strip, self._request = inner, cut_after, strip_usage, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffer = b""
        events = 0
        async for chunk in self._inner:
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                events += 1
                if self._cut is not None and events > self._cut:
                    raise httpx2.ReadError("connection reset (injected)", request=self._request)
                yield self._rewrite(event) + b"\n\n"
        if buffer:
            yield buffer

    def _rewrite(self, event: bytes) -> bytes:
        if not self._strip or not event.startswith(b"data: {"):
            return event
        data = json.loads(event[len(b"data: ") :])
        data.pop("usage", None)
        return b"data: " + json.dumps(data).encode()

    async def aclose(self) -> None:
        await self._inner.aclose()


def build(
    llama: LlamaServer, tmp_path: Path, transport: FaultyTransport, retries: int
) -> tuple[Any, Ledger]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(v1=llama.v1, retries=retries))
    ledger = open_ledger(f"sqlite://{tmp_path / 'ledger.sqlite3'}")
    service = build_engine(
        load_policy(path), env={}, ledger=ledger, transports={"llama": transport}
    )
    return build_server(service), ledger


async def run(server: Any, prompt: str, max_output: int) -> Any:
    async with Client(server, mode="legacy") as client:
        return await client.call_tool(
            "run_role", {"role": "writer", "prompt": prompt, "max_output_tokens": max_output}
        )


@pytest.mark.parametrize(("retries", "ok"), [(1, True), (0, False)])
async def test_a_refused_connection_is_retried_within_the_policy_bound(
    llama: LlamaServer, tmp_path: Path, retries: int, ok: bool
) -> None:
    transport = FaultyTransport(refuse=1)
    server, ledger = build(llama, tmp_path, transport, retries)
    result = await run(server, "Say hello.", 4)
    if ok:
        assert not result.is_error, result.content
        assert transport.chat_requests == 2
    else:
        assert result.content[0].text.startswith("PROVIDER_UNAVAILABLE: gemma3-270m: cannot reach")
        assert transport.chat_requests == 1
        (record,) = [r for r in ledger.recent_audit(10) if r["kind"] == "call"]
        assert (record["code"], record["cost_micro"]) == ("PROVIDER_UNAVAILABLE", 0)


async def test_a_stream_cut_midway_is_never_retried_and_is_charged_what_it_produced(
    llama: LlamaServer, tmp_path: Path
) -> None:
    transport = FaultyTransport(cut_after=4)
    server, ledger = build(llama, tmp_path, transport, retries=2)
    result = await run(server, "Write a long story about ships.", 200)
    assert result.is_error
    assert result.content[0].text.startswith("PROVIDER_ERROR: gemma3-270m: the stream broke after")
    assert transport.chat_requests == 1  # bytes had arrived: no retry
    (record,) = [r for r in ledger.recent_audit(10) if r["kind"] == "call"]
    assert record["code"] == "PROVIDER_ERROR"
    assert 1 <= int(str(record["output_tokens"])) <= 4
    async with Client(server, mode="legacy") as client:
        budget = await client.call_tool("check_budget", {})
    (scope,) = budget.structured_content["scopes"]
    assert scope["reserved_usd_micro"] == 0
    assert scope["spent_usd_micro"] == record["cost_micro"] > 0


async def test_a_response_without_usage_is_charged_the_worst_case(
    llama: LlamaServer, tmp_path: Path
) -> None:
    transport = FaultyTransport(strip_usage=True)
    server, ledger = build(llama, tmp_path, transport, retries=0)
    result = await run(server, "Say hello.", 50)
    assert not result.is_error, result.content
    data = result.structured_content
    assert data["usage"]["charged_at_worst_case"] is True
    assert data["usage"]["output_tokens"] == 50
    (record,) = [r for r in ledger.recent_audit(10) if r["kind"] == "call"]
    # One micro-dollar per token: the input estimate plus all 50 allowed output tokens.
    assert record["cost_micro"] == data["usage"]["input_tokens"] + 50 == data["cost_micro"]
