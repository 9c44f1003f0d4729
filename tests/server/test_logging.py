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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    assert len([e for e in tool_lines if e.get("event") == "tool_call"]) == len(CALLS) - 1
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
