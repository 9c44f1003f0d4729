"""examples/clients: the Python agent runs all four tools over stdio; the configs are valid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "examples" / "clients"
ECHO_POLICY = ROOT / "examples" / "plugins" / "rolegate-echo" / "echo-policy.yaml"


def test_the_agent_calls_all_four_tools_over_stdio(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(CLIENTS / "agent.py"),
            "summarize these notes",
            "--policy",
            str(ECHO_POLICY),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "tools: route_task, run_role, check_budget, escalate" in out
    for tool in ("route_task", "check_budget", "run_role", "escalate"):
        assert f"> {tool}" in out
    assert "echo-1: 'summarize these notes'" in out  # run_role ran the echo model
    assert "tool error" not in out
    # The server's ledger is under the HOME it was given, not the user's.
    assert (tmp_path / ".local" / "share" / "rolegate" / "ledger.sqlite3").is_file()


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("claude_desktop_config.json", "mcpServers"),
        ("cursor-mcp.json", "mcpServers"),
        ("vscode-mcp.json", "servers"),
        (".mcp.json", "mcpServers"),
    ],
)
def test_client_configs_start_rolegate_serve_without_secrets(name: str, key: str) -> None:
    config = json.loads((CLIENTS / name).read_text())
    server = config[key]["rolegate"]
    assert server["command"].endswith("rolegate}") or server["command"].endswith("rolegate")
    args = server["args"]
    assert args[0] == "serve"
    policy = args[args.index("--policy") + 1].removesuffix("}")  # ${VAR:-default} in .mcp.json
    assert Path(policy).name == "003-sophie-context.yaml"
    assert (ROOT / "examples" / "policies" / Path(policy).name).is_file()
    key_value = server["env"]["MOONSHOT_API_KEY"]
    assert key_value.startswith(("${", "<")), "a config must never hold a real key"
