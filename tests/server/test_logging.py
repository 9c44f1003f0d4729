"""No prompt or completion text in any log line, on success and error paths."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

pytestmark = pytest.mark.anyio

CANARY = "CANARY-7f3e9a1c-do-not-log"


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("route_task", {"task": f"hello {CANARY}"}),
    ("route_task", {"task": f"{CANARY} " * 20_000, "role": "chat"}),  # refused
    ("route_task", {"task": CANARY, "job": CANARY}),  # unknown job
    ("route_task", {"task": CANARY, "risk": CANARY}),  # validation error
    ("check_budget", {"role": "chat", "text": CANARY}),
    ("check_budget", {"model": CANARY}),
    ("escalate", {"role": "chat", "reason": CANARY, "user_request": True}),
    ("escalate", {"role": CANARY, "reason": CANARY}),
    ("run_role", {"role": "extractor", "prompt": CANARY, "system": CANARY}),
    ("run_role", {"role": "chat", "messages": [{"role": "user", "content": CANARY}]}),
    ("run_role", {"role": "chat", "messages": [{"role": CANARY, "content": CANARY}]}),
]


@pytest.mark.parametrize("era", ["legacy", "2026-07-28"])
async def test_canary_never_reaches_the_logs(
    sophie_server: MCPServer, log_stream: io.StringIO, era: str
) -> None:
    async with Client(sophie_server, mode=era) as client:
        for tool, args in CALLS:
            await client.call_tool(tool, args)
    lines = log_stream.getvalue().splitlines()
    tool_lines = [json.loads(line) for line in lines if line.startswith("{")]
    # One line per call, the refused validation included (the boundary sees every call).
    assert len([e for e in tool_lines if e.get("event") == "tool_call"]) == len(CALLS)
    assert all("policy_hash" in e for e in tool_lines if e.get("event") == "tool_call")
    assert CANARY not in log_stream.getvalue()


async def test_tool_call_log_line_has_the_required_fields(
    sophie_server: MCPServer, log_stream: io.StringIO
) -> None:
    async with Client(sophie_server, mode="legacy") as client:
        await client.call_tool("route_task", {"task": "hi", "role": "chat"})
    (event,) = [
        json.loads(line) for line in log_stream.getvalue().splitlines() if '"tool_call"' in line
    ]
    assert event["tool"] == "route_task"
    assert event["model"] == "llama3.1-32k"
    assert event["outcome"] == "ROUTED"
    assert event["max_input_tokens"] == 28_768
    assert event["reserve_tokens"] == 4000
    assert event["policy_hash"].startswith("sha256:")


def test_an_embedded_server_never_logs_to_stdout() -> None:
    """Without any logging set up by the host, rolegate's logs still go to stderr:
    stdout belongs to the stdio transport."""
    import subprocess
    import sys

    script = (
        "import anyio\n"
        "from mcp import Client\n"
        "from rolegate.policy import load_default_policy\n"
        "from rolegate.server.app import build_server\n"
        "from rolegate.engine.bootstrap import build_engine\n"
        "server = build_server(build_engine(load_default_policy(), env={}))\n"
        "async def main():\n"
        "    async with Client(server, mode='legacy') as client:\n"
        "        await client.call_tool('route_task', {'task': 'summarize this'})\n"
        "anyio.run(main)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout == ""
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "tool_call" for line in lines), proc.stderr
