"""Decisions and stage ownership are shared by every rolegate process on one ledger, and
survive a restart: real `rolegate serve` processes over stdio, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.support.servers import missing

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: shared-state-test
providers:
  echo: {type: echo, base_url: "echo://", locality: local}
models:
  echo-1: {provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512}
  echo-2: {provider: echo, name: echo-2, context_window: 8192, reserve_tokens: 512}
roles:
  planner:
    model: echo-1
    escalation: {ladder: [echo-2], when: [{signal: confidence, op: lt, value: 0.75}]}
pipeline:
  critic: never
  stages:
    - {name: plan, owner: planner}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'ledger.sqlite3'}"
    url = os.environ.get("ROLEGATE_TEST_PG_URL")
    if not url:
        missing("PostgreSQL not set up: run `bash scripts/test.sh` (ROLEGATE_TEST_PG_URL)")
    return url


def _client(policy: Path, ledger_url: str, errlog: Any) -> Client:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "rolegate", "serve", "--policy", str(policy), "--ledger", ledger_url],
    )
    return Client(stdio_client(params, errlog=errlog), mode="legacy")


async def test_two_processes_share_decisions_and_one_owner_per_stage(
    tmp_path: Path, ledger_url: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    task = f"task-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryFile("w+") as errlog:
        async with (
            _client(policy, ledger_url, errlog) as first,
            _client(policy, ledger_url, errlog) as second,
        ):
            routed = await first.call_tool("route_task", {"task": "plan it", "role": "planner"})
            decision_id = routed.structured_content["decision_id"]
            # A decision made by one process runs in another.
            ran = await second.call_tool(
                "run_role", {"role": "planner", "prompt": "a b", "decision_id": decision_id}
            )
            owner = await first.call_tool(
                "run_role", {"role": "planner", "prompt": "x", "task_id": task, "stage": "plan"}
            )
            rival = await second.call_tool(
                "run_role", {"role": "planner", "prompt": "y", "task_id": task, "stage": "plan"}
            )
        # A restart: a new process still knows the owner, and still refuses a second one.
        async with _client(policy, ledger_url, errlog) as third:
            again = await third.call_tool(
                "run_role", {"role": "planner", "prompt": "z", "task_id": task, "stage": "plan"}
            )
            view = await third.read_resource(f"rolegate://tasks/{task}")
            moved = await third.call_tool(
                "escalate", {"role": "planner", "task_id": task, "confidence": 0.1}
            )
            replaced = await third.call_tool(
                "run_role", {"role": "planner", "prompt": "w", "task_id": task, "stage": "plan"}
            )
    assert not ran.is_error, ran.content
    assert ran.structured_content["decision_id"] == decision_id
    assert not owner.is_error, owner.content
    assert rival.content[0].text.startswith("CONSENSUS_FORBIDDEN: "), rival.content
    assert again.content[0].text.startswith("CONSENSUS_FORBIDDEN: "), again.content
    stage = json.loads(view.contents[0].text)["stages"]["plan"]
    assert (stage["model"], stage["request_id"]) == (
        "echo-1",
        owner.structured_content["request_id"],
    )
    # Only an escalation lets a new owner replace the old one.
    assert moved.structured_content["to_model"] == "echo-2"
    assert replaced.structured_content["model"] == "echo-2"
