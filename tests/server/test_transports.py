"""The real `rolegate serve` process: stdio in both eras, Streamable HTTP, fail-closed start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import example_path
from tests.server.conftest import ERAS
from tests.server.test_logging import CANARY
from tests.support.llama import LlamaServer
from tests.support.progress import Progress
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio


def serve_args(*extra: str) -> list[str]:
    return ["-m", "rolegate", "serve", *extra]


@pytest.mark.parametrize("era", ERAS)
async def test_stdio_serves_every_tool_and_logs_only_to_stderr(era: str) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=serve_args("--policy", str(example_path("003")))
    )
    with tempfile.TemporaryFile("w+") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=era) as client:
            assert client.protocol_version == ("2025-11-25" if era == "legacy" else era)
            tools = await client.list_tools()
            routed = await client.call_tool("route_task", {"task": f"hi {CANARY}"})
            budget = await client.call_tool("check_budget", {"role": "chat", "text": CANARY})
            esc = await client.call_tool("escalate", {"role": "chat", "reason": CANARY})
            run = await client.call_tool("run_role", {"role": "chat", "prompt": CANARY})
            bad = await client.call_tool("route_task", {"task": CANARY, "job": "nope"})
        errlog.seek(0)
        stderr = errlog.read()
    assert len(tools.tools) == 4
    assert routed.structured_content["model"] == "llama3.1-32k"
    assert budget.structured_content["check"]["admitted"] is True
    assert esc.structured_content["code"] == "NO_ESCALATION"
    assert run.is_error
    # Ollama is down and chat's fallback is ask-first: no client here can consent.
    assert run.content[0].text.startswith("NEEDS_CONSENT: llama3.1-32k failed")
    assert "switching to kimi" in run.content[0].text
    assert bad.is_error
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("tool_call") == 5
    assert CANARY not in stderr


def test_invalid_policy_stops_start_up_with_check_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nproviders: {}\nmodels: {}\nroles:\n  r: {model: x}\n")
    serve = subprocess.run(
        [sys.executable, *serve_args("--policy", str(bad))],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    check = subprocess.run(
        [sys.executable, "-m", "rolegate", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert serve.returncode == 1
    assert serve.stdout == ""
    assert check.stderr.strip() in serve.stderr
    assert "roles.r.model: error: unknown model 'x'" in serve.stderr
    assert "refusing to start" in serve.stderr


def test_non_loopback_http_without_token_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, *serve_args("--transport", "http", "--host", "0.0.0.0")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a bearer token" in proc.stderr


@contextmanager
def serving_http(*extra: str) -> Iterator[tuple[str, str]]:
    port = free_port()
    token = "s3cret-token"
    env = {**os.environ, "ROLEGATE_TEST_TOKEN": token}
    proc = subprocess.Popen(
        [
            sys.executable,
            *serve_args(
                "--transport",
                "http",
                "--port",
                str(port),
                "--token-env",
                "ROLEGATE_TEST_TOKEN",
                *extra,
            ),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.get(url, timeout=1)
            break
        except httpx2.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
    try:
        yield url, token
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def http_server() -> Iterator[tuple[str, str]]:
    with serving_http() as served:
        yield served


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def test_http_requires_token_and_checks_origin_and_host(http_server: tuple[str, str]) -> None:
    url, token = http_server
    good = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    assert httpx2.post(url, json=INIT, headers={"Accept": good["Accept"]}).status_code == 401
    wrong = {**good, "Authorization": "Bearer nope"}
    assert httpx2.post(url, json=INIT, headers=wrong).status_code == 401
    foreign_origin = {**good, "Origin": "http://evil.example"}
    assert httpx2.post(url, json=INIT, headers=foreign_origin).status_code == 403
    foreign_host = {**good, "Host": "evil.example:80"}
    assert httpx2.post(url, json=INIT, headers=foreign_host).status_code == 421
    assert httpx2.post(url, json=INIT, headers=good).status_code == 200


@pytest.mark.parametrize("era", ERAS)
async def test_http_client_calls_tools(http_server: tuple[str, str], era: str) -> None:
    url, token = http_server
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=era) as client,
    ):
        result = await client.call_tool("route_task", {"task": "refactor this function"})
    assert result.structured_content["code"] == "ROUTED"
    assert result.structured_content["policy"]["name"] == "default-local-ollama"


LLAMA_POLICY = """
version: 1
name: http-llama
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
models:
  gemma: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
           timeout_s: 120, streaming: {{internal: true}}}}
roles:
  writer: {{model: gemma}}
channels:
  cli: {{kind: internal, streaming: true}}
defaults: {{channel: cli}}
"""


@pytest.mark.parametrize("era", ERAS)
async def test_run_role_streams_progress_over_streamable_http(
    llama: LlamaServer, tmp_path: Path, era: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LLAMA_POLICY.format(v1=llama.v1))
    ledger = f"sqlite://{tmp_path / 'ledger.sqlite3'}"
    progress = Progress()

    with serving_http("--policy", str(policy), "--ledger", ledger) as (url, token):
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http,
            Client(streamable_http_client(url, http_client=http), mode=era) as client,
        ):
            result = await client.call_tool(
                "run_role",
                {"role": "writer", "prompt": "Say hello.", "max_output_tokens": 8},
                progress_callback=progress,
            )
    assert not result.is_error, result.content
    data = result.structured_content
    assert data["model"] == "gemma"
    assert 1 <= data["usage"]["output_tokens"] <= 8
    assert progress.messages
    assert progress.text == data["output"]
