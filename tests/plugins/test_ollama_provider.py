"""The ollama provider through MCP, against Ollama-protocol servers we did not write.

`compat` is PyPI's ollama-proxy-plus in front of a real llama.cpp server (always, in CI);
`real` is a real Ollama when OLLAMA_HOST is set. llama.cpp's /metrics shows what the upstream
really generated, so num_predict and cancellation are checked where the tokens are made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.ledger import Ledger, open_ledger
from rolegate.plugins.builtin.ollama_client import OllamaClient
from rolegate.policy import load_policy
from rolegate.policy.schema import Provider
from rolegate.server.app import build_server
from tests.support.llama import LlamaServer, llama_server
from tests.support.ollama import OllamaTarget, ollama_compat, real_ollama
from tests.support.progress import Progress
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: ollama-test
providers:
  ollama: {{type: ollama, base_url: "{base}", locality: local, max_retries: {retries}}}
models:
  small: {{provider: ollama, name: "{model}", context_window: 2048, reserve_tokens: 256,
           timeout_s: 120, keep_alive: 10m, streaming: {{internal: true, external: false}}}}
  # Claims more context than the upstream has: the server's own refusal must surface.
  boastful: {{provider: ollama, name: "{model}", context_window: 32768, reserve_tokens: 256,
              timeout_s: 120}}
roles:
  writer: {{model: small}}
  architect: {{model: small, output_contract: plan, temperature: 0}}
  boaster: {{model: boastful}}
contracts:
  plan: {{required: [plan, confidence], types: {{plan: string}}, confidence_field: confidence,
          enforce: true}}
channels:
  cli: {{kind: internal, streaming: true}}
  email: {{kind: external, streaming: false}}
budgets:
  - {{scope: global, window: day, tokens: 10000000}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[LlamaServer]:
    with llama_server(ctx=4096, parallel=2, extra_args=("--metrics",)) as server:
        yield server


@pytest.fixture(scope="module")
def compat(upstream: LlamaServer) -> Iterator[OllamaTarget]:
    with ollama_compat(upstream) as target:
        yield target


@pytest.fixture(params=["compat", "real"])
def target(request: pytest.FixtureRequest) -> OllamaTarget:
    if request.param == "real":
        return real_ollama()
    found: OllamaTarget = request.getfixturevalue("compat")
    return found


def build(
    target: OllamaTarget, tmp_path: Path, retries: int = 0, transport: Any = None
) -> tuple[MCPServer, Ledger]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(base=target.base_url, model=target.model, retries=retries))
    ledger = open_ledger(f"sqlite://{tmp_path / 'ledger.sqlite3'}")
    transports = {"ollama": transport} if transport is not None else None
    service = build_engine(load_policy(path), env={}, ledger=ledger, transports=transports)
    return build_server(service), ledger


PREDICTED = "llamacpp:tokens_predicted_total"


async def test_run_role_streams_through_the_ollama_protocol(
    target: OllamaTarget, tmp_path: Path
) -> None:
    server, ledger = build(target, tmp_path)
    progress = Progress()

    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role",
            {"role": "writer", "prompt": "Say hello.", "max_output_tokens": 12, "channel": "cli"},
            progress_callback=progress,
        )
    assert not result.is_error, result.content
    data = result.structured_content
    assert (data["provider"], data["provider_model"]) == ("ollama", target.model)
    assert data["streamed"] is True
    assert data["output"]
    assert progress.text == data["output"]
    assert data["ttft_ms"] is not None
    # Usage comes from the final chunk's prompt_eval_count / eval_count.
    assert data["usage"]["input_tokens"] >= 1
    assert data["usage"]["output_tokens"] >= 1
    (record,) = [r for r in ledger.recent_audit(5) if r["kind"] == "call"]
    assert (record["code"], record["output_tokens"]) == ("OK", data["usage"]["output_tokens"])


async def test_a_channel_without_streaming_gets_one_answer(
    target: OllamaTarget, tmp_path: Path
) -> None:
    server, _ = build(target, tmp_path)
    progress = Progress()

    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role",
            {"role": "writer", "prompt": "Say hi.", "max_output_tokens": 8, "channel": "email"},
            progress_callback=progress,
        )
    assert not result.is_error, result.content
    assert result.structured_content["output"]
    assert progress.messages == []  # nothing streamed to an external channel


async def test_contract_is_enforced_with_the_format_field(
    target: OllamaTarget, tmp_path: Path
) -> None:
    server, _ = build(target, tmp_path)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role",
            {
                "role": "architect",
                "system": "Reply with one JSON object with the keys plan and confidence.",
                "prompt": "Plan how to split the parser module. Report confidence 0.3.",
                "max_output_tokens": 120,
            },
        )
    assert not result.is_error, result.content
    data = result.structured_content
    assert data["contract"]["valid"] is True, data["output"]
    assert isinstance(data["structured"]["plan"], str)
    assert 0 <= data["structured"]["confidence"] <= 1


async def test_model_listing(target: OllamaTarget) -> None:
    client = OllamaClient(Provider(type="ollama", base_url=target.base_url, locality="local"), None)
    try:
        models = await client.list_models()
    finally:
        await client.aclose()
    assert target.model in models


async def test_num_predict_bounds_what_the_upstream_generates(
    compat: OllamaTarget, tmp_path: Path
) -> None:
    assert compat.llama is not None
    server, _ = build(compat, tmp_path)
    before = compat.llama.metric(PREDICTED)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role",
            {"role": "writer", "prompt": "Write a long story about ships.", "max_output_tokens": 5},
        )
    assert not result.is_error, result.content
    assert 1 <= compat.llama.metric(PREDICTED) - before <= 5


async def test_cancellation_stops_the_upstream_generation(
    compat: OllamaTarget, tmp_path: Path
) -> None:
    llama = compat.llama
    assert llama is not None
    server, ledger = build(compat, tmp_path)
    before = llama.metric(PREDICTED)
    async with Client(server, mode="legacy") as client:
        with anyio.CancelScope() as scope:
            progress = Progress(cancel=scope, after=3)
            await client.call_tool(
                "run_role",
                {
                    "role": "writer",
                    "prompt": "Write a very long story about a lighthouse keeper.",
                    "max_output_tokens": 800,
                    "channel": "cli",
                },
                progress_callback=progress,
            )
        assert scope.cancelled_caught
        with anyio.fail_after(30):
            while not [r for r in ledger.recent_audit(5) if r["kind"] == "call"]:
                await anyio.sleep(0.05)
            while await llama.busy():
                await anyio.sleep(0.05)
    generated = llama.metric(PREDICTED) - before
    assert 3 <= generated < 800
    (record,) = [r for r in ledger.recent_audit(5) if r["kind"] == "call"]
    assert record["code"] == "CANCELLED"
    assert record["output_tokens"] >= 3  # charged for what was produced


async def test_upstream_refusal_is_a_provider_error(compat: OllamaTarget, tmp_path: Path) -> None:
    server, _ = build(compat, tmp_path)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role", {"role": "boaster", "prompt": "word " * 3000, "max_output_tokens": 4}
        )
    assert result.is_error
    text = result.content[0].text
    assert text.startswith(f"PROVIDER_ERROR: {compat.model}: server answered HTTP"), text
    assert "exceeds the available context size" in text


class RefuseFirstChat(httpx.AsyncBaseTransport):
    """The real transport, but the first /api/chat request fails to connect (``refuse``);
    every chat request body is kept."""

    def __init__(self, refuse: bool = True) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.refuse = refuse
        self.bodies: list[dict[str, Any]] = []

    @property
    def chats(self) -> int:
        return len(self.bodies)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/chat":
            self.bodies.append(json.loads(await request.aread()))
            if self.refuse and self.chats == 1:
                raise httpx.ConnectError("connection refused (injected)", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_refused_connection_is_retried_before_any_byte(
    compat: OllamaTarget, tmp_path: Path
) -> None:
    transport = RefuseFirstChat()
    server, _ = build(compat, tmp_path, retries=1, transport=transport)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role", {"role": "writer", "prompt": "Say hi.", "max_output_tokens": 4}
        )
    assert not result.is_error, result.content
    assert transport.chats == 2


async def test_keep_alive_and_options_reach_the_server(
    compat: OllamaTarget, tmp_path: Path
) -> None:
    transport = RefuseFirstChat(refuse=False)
    server, _ = build(compat, tmp_path, transport=transport)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role",
            {"role": "architect", "prompt": "Plan a rename.", "max_output_tokens": 60},
        )
    assert not result.is_error, result.content
    (body,) = transport.bodies
    assert body["keep_alive"] == "10m"
    assert body["options"] == {"num_predict": 60, "temperature": 0}
    assert body["format"]["required"] == ["plan", "confidence"]
    assert body["stream"] is True


async def test_unreachable_ollama_is_unavailable(tmp_path: Path) -> None:
    gone = OllamaTarget(f"http://127.0.0.1:{free_port()}", "nothing:1b")
    server, _ = build(gone, tmp_path)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool("run_role", {"role": "writer", "prompt": "hi"})
    assert result.content[0].text.startswith("PROVIDER_UNAVAILABLE: nothing:1b: cannot reach")
