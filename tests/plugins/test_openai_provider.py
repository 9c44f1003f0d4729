"""The openai provider against a real llama.cpp server, through MCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.plugins.base import ChatRequest, Message
from rolegate.plugins.builtin.openai_client import OpenAIClient
from rolegate.policy import Policy, load_policy
from rolegate.policy.schema import Provider, TokenEstimate
from rolegate.policy.tokens import estimate_tokens
from rolegate.server.app import build_server
from tests.support.llama import LlamaServer, llama_server
from tests.support.progress import Progress

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: llama-test
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
models:
  gemma: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
           timeout_s: 120, streaming: {{internal: true}}}}
  gemma-hasty: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
                 timeout_s: 0.05}}
roles:
  writer: {{model: gemma}}
  hasty: {{model: gemma-hasty}}
channels:
  cli: {{kind: internal, streaming: true}}
defaults: {{channel: cli}}
"""


def policy_for(server: LlamaServer, tmp_path: Path) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(v1=server.v1))
    return load_policy(path)


@pytest.fixture
def mcp_server(llama: LlamaServer, tmp_path: Path) -> MCPServer:
    return build_server(build_engine(policy_for(llama, tmp_path), env={}))


async def test_run_role_gets_real_tokens_usage_and_streaming(
    mcp_server: MCPServer, llama: LlamaServer
) -> None:
    progress = Progress()

    async with Client(mcp_server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role",
            {"role": "writer", "prompt": "Say hello.", "max_output_tokens": 8},
            progress_callback=progress,
        )
    data = result.structured_content
    assert not result.is_error, result.content
    assert data["provider_model"] == "gemma3-270m"
    assert data["usage"]["output_tokens"] <= 8
    assert data["usage"]["output_tokens"] >= 1
    assert data["usage"]["input_exact"] is True  # usage reported by the server
    assert data["streamed"] is True
    assert data["ttft_ms"] is not None
    assert data["ttft_ms"] <= data["latency_ms"]
    assert progress.text == data["output"]
    # The server's own count of the same messages matches the usage it reported.
    direct = httpx2.post(
        f"{llama.v1}/chat/completions",
        json={"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 1},
        timeout=120,
    ).json()
    assert data["usage"]["input_tokens"] == direct["usage"]["prompt_tokens"]


async def test_exact_count_matches_server_usage(llama: LlamaServer) -> None:
    config = Provider(type="openai", base_url=llama.v1, locality="local")
    client = OpenAIClient(config, None)
    messages = [Message("system", "You are terse."), Message("user", "Count these tokens, please.")]
    try:
        counted = await client.count_tokens("gemma3-270m", messages)
        result = await client.chat(
            ChatRequest(
                model="gemma3-270m",
                messages=messages,
                max_output_tokens=1,
                timeout_s=120,
                stream=False,
            )
        )
    finally:
        await client.aclose()
    assert counted is not None
    assert counted.exact is True
    assert counted.tokens == result.input_tokens


CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 10,
    '{"id": 12345, "values": [1.5, 2.25, -3e10], "ok": true, "name": "x_y-z"}' * 10,
    "Größenordnung, naïve café, Ünïcödé résumé — „quotes“ «guillemets» " * 10,
    "数据库连接失败，请检查网络设置并重试。東京の天気は晴れです。서울은 맑습니다. " * 10,
    "🙂🚀🔥 emoji mix ✅❌ ⚠️ 👩‍💻 " * 20,
    "0123456789 3.14159265358979 2026-11-23T10:00:00Z 0xDEADBEEF " * 20,
    "SELECT u.id, COUNT(*) FROM users u JOIN orders o ON o.uid = u.id GROUP BY u.id;\n" * 10,
]


async def test_conservative_estimate_is_never_below_the_real_count(llama: LlamaServer) -> None:
    config = Provider(type="openai", base_url=llama.v1, locality="local")
    client = OpenAIClient(config, None)
    settings = TokenEstimate()
    try:
        for text in CORPUS:
            exact = await client.count_tokens("gemma3-270m", [Message("user", text)])
            assert exact is not None
            estimate = estimate_tokens(text, settings)
            assert estimate >= exact.tokens, (text[:40], estimate, exact.tokens)
    finally:
        await client.aclose()


async def test_timeout_from_the_policy(mcp_server: MCPServer) -> None:
    async with Client(mcp_server, mode="legacy") as client:
        result = await client.call_tool(
            "run_role", {"role": "hasty", "prompt": "Write a long story.", "max_output_tokens": 500}
        )
    assert result.is_error
    assert result.content[0].text.startswith("PROVIDER_TIMEOUT: gemma3-270m did not finish within")


async def test_server_killed_mid_stream_is_a_provider_error(tmp_path: Path) -> None:
    with llama_server(ctx=2048, parallel=1) as doomed:
        server = build_server(build_engine(policy_for(doomed, tmp_path), env={}))
        seen: list[Any] = []

        async def kill_on_first_token(done: float, total: float | None, msg: str | None) -> None:
            seen.append(msg)
            if len(seen) == 1:
                doomed.kill()

        async with Client(server, mode="legacy") as client:
            result = await client.call_tool(
                "run_role",
                {
                    "role": "writer",
                    "prompt": "Write a very long story about ships.",
                    "max_output_tokens": 1500,
                },
                progress_callback=kill_on_first_token,
            )
    assert seen
    assert result.is_error
    text = result.content[0].text
    assert text.startswith("PROVIDER_ERROR: gemma3-270m: the stream broke after"), text


async def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with llama_server(ctx=2048, parallel=1) as gone:
        policy = policy_for(gone, tmp_path)
    server = build_server(build_engine(policy, env={}))
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool("run_role", {"role": "writer", "prompt": "hi"})
    assert result.content[0].text.startswith("PROVIDER_UNAVAILABLE: gemma3-270m: cannot reach")
    await anyio.sleep(0)
