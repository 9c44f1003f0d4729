"""The MCP Inspector CLI (the reference TypeScript client) against `rolegate serve` over stdio.

Install it first: `scripts/setup_inspector.sh` (pinned @modelcontextprotocol/inspector into
.ci-cache/inspector). Without it these tests skip, or fail when the CI env var is set.
ROLEGATE_INSPECTOR may point at another mcp-inspector binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INSPECTOR = ROOT / ".ci-cache" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"
SERVER = [sys.executable, "-m", "rolegate", "serve"]
TOOLS = {"route_task", "run_role", "check_budget", "escalate"}
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def inspector() -> Path:
    path = Path(os.environ.get("ROLEGATE_INSPECTOR") or DEFAULT_INSPECTOR)
    problem = None
    if not path.is_file():
        problem = f"MCP Inspector CLI not found at {path}"
    elif shutil.which("node") is None:
        problem = "node is not on PATH (the MCP Inspector CLI needs node >= 20)"
    if problem is None:
        return path
    hint = f"{problem}; install it with scripts/setup_inspector.sh"
    if os.environ.get("CI"):
        pytest.fail(hint)
    pytest.skip(hint)


def run_inspector(inspector: Path, *method_args: str) -> dict[str, Any]:
    """Run `mcp-inspector --cli <server> <method args>` and return its JSON output."""
    cmd = [str(inspector), "--cli", *SERVER, *method_args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    try:
        output: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"inspector printed no JSON\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return output


def test_inspector_lists_the_four_tools(inspector: Path) -> None:
    listed = run_inspector(inspector, "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert set(tools) == TOOLS
    route = tools["route_task"]
    assert route["inputSchema"]["required"] == ["task"]
    assert route["annotations"]["readOnlyHint"] is True
    assert "outputSchema" in route


def test_inspector_calls_route_task(inspector: Path) -> None:
    result = run_inspector(
        inspector,
        "--method",
        "tools/call",
        "--tool-name",
        "route_task",
        "--tool-arg",
        "task=implement the parser fix in the rust crate",
    )
    assert result.get("isError") is not True, result
    decision = result["structuredContent"]
    assert decision["code"] == "ROUTED"
    assert decision["outcome"] == "route"
    assert decision["decision_id"].startswith("dec_")
    assert json.loads(result["content"][0]["text"]) == decision
