"""Every tool through a real MCP client session, in memory, in both protocol eras."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.server.conftest import ERAS

pytestmark = pytest.mark.anyio


async def call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    return await client.call_tool(tool, args)


def error_text(result: Any) -> str:
    assert result.is_error, result
    return str(result.content[0].text)


@pytest.mark.parametrize("era", ERAS)
async def test_tools_are_listed_flat_typed_and_annotated(
    sophie_server: MCPServer, era: str
) -> None:
    async with Client(sophie_server, mode=era) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"route_task", "run_role", "check_budget", "escalate"}
    for tool in tools.values():
        schema = json.dumps(tool.input_schema)
        assert "$ref" not in schema
        assert "$defs" not in schema
        assert tool.output_schema is not None
        assert tool.description
    ann = {name: t.annotations for name, t in tools.items()}
    assert ann["route_task"].read_only_hint
    assert ann["route_task"].idempotent_hint
    assert ann["check_budget"].read_only_hint
    assert ann["check_budget"].idempotent_hint
    assert ann["run_role"].open_world_hint is True
    assert ann["escalate"].read_only_hint is False
    risk = tools["route_task"].input_schema["properties"]["risk"]
    assert {"enum": ["low", "normal", "high"], "type": "string"} in risk["anyOf"]
    assert tools["run_role"].input_schema["required"] == ["role"]
    # Output schemas spell nullable scalars as type lists and list null first in nullable
    # references: cheaper to validate for every client that checks each result.
    for tool in tools.values():
        assert tool.output_schema is not None
        models = [tool.output_schema, *tool.output_schema.get("$defs", {}).values()]
        for model in models:
            for prop in model.get("properties", {}).values():
                options = prop.get("anyOf", [])
                if {"type": "null"} in options:
                    assert options[0] == {"type": "null"}, (tool.name, prop)
                    assert not any(set(o) == {"type"} for o in options[1:]), (tool.name, prop)
    assert tools["run_role"].output_schema["properties"]["ttft_ms"]["type"] == ["number", "null"]


@pytest.mark.parametrize("era", ERAS)
async def test_route_task_routes_and_refuses_with_structured_decision(
    sophie_server: MCPServer, era: str
) -> None:
    async with Client(sophie_server, mode=era) as client:
        ok = await call(client, "route_task", {"task": "hello", "channel": "email"})
        refused = await call(
            client, "route_task", {"task": "hello", "role": "chat", "context_tokens": 30_000}
        )
    assert not ok.is_error
    assert ok.structured_content["model"] == "llama3.1-32k"
    assert ok.structured_content["streaming"] is False
    assert ok.structured_content["decision_id"].startswith("dec_")
    assert not refused.is_error  # a refusal is a decision, not a failure
    assert refused.structured_content["code"] == "OVER_BUDGET"
    assert refused.structured_content["tokens"]["max_input_tokens"] == 28_768
    assert json.loads(refused.content[0].text) == refused.structured_content


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        ("route_task", {"task": "   "}, "INVALID_ARGUMENT: task is empty"),
        ("route_task", {"task": "x", "job": "nope"}, "UNKNOWN_JOB: unknown job 'nope'"),
        ("route_task", {"task": "x", "role": "nope"}, "UNKNOWN_ROLE: unknown role 'nope'"),
        ("route_task", {"task": "x", "channel": "fax"}, "UNKNOWN_CHANNEL"),
        ("route_task", {"task": "x", "context_tokens": -5}, "INVALID_ARGUMENT"),
        ("route_task", {"task": 42}, "INVALID_ARGUMENT: invalid arguments for"),
        ("route_task", {"task": "x", "risk": "extreme"}, "INVALID_ARGUMENT: invalid arguments for"),
        ("route_task", {}, "INVALID_ARGUMENT: invalid arguments for"),
        ("check_budget", {"model": "gpt-9"}, "UNKNOWN_MODEL: unknown model 'gpt-9'"),
        ("check_budget", {"text": "a", "input_tokens": 3}, "INVALID_ARGUMENT"),
        ("check_budget", {"input_tokens": "many"}, "INVALID_ARGUMENT: invalid arguments"),
        ("escalate", {"role": "ghost"}, "UNKNOWN_ROLE"),
        ("escalate", {"role": "chat", "confidence": "low"}, "INVALID_ARGUMENT: invalid arguments"),
        ("run_role", {"role": "ghost", "prompt": "x"}, "UNKNOWN_ROLE"),
        ("run_role", {"role": "chat"}, "INVALID_ARGUMENT: give exactly one of prompt or messages"),
        (
            "run_role",
            {"role": "chat", "messages": [{"role": "robot", "content": "x"}]},
            "INVALID_ARGUMENT: messages[0]",
        ),
        ("run_role", {"role": "chat", "prompt": "x", "job": "nope"}, "UNKNOWN_JOB"),
        (
            "run_role",
            {"role": "chat", "prompt": "x", "decision_id": "dec_nope"},
            "UNKNOWN_DECISION",
        ),
        (
            "run_role",
            {"role": "chat", "prompt": "x", "max_output_tokens": 0},
            "INVALID_ARGUMENT: invalid arguments",
        ),
        ("run_role", {"role": "chat", "prompt": "x", "stage": "s"}, "pass task_id too"),
    ],
)
async def test_bad_arguments_are_tool_errors_with_codes(
    sophie_server: MCPServer, era: str, tool: str, args: dict[str, Any], expected: str
) -> None:
    async with Client(sophie_server, mode=era) as client:
        result = await call(client, tool, args)
        assert expected in error_text(result)
        # The server is still healthy afterwards.
        again = await call(client, "route_task", {"task": "hello"})
        assert again.structured_content["code"] == "ROUTED"


async def test_huge_inputs_are_refused_not_truncated(sophie_server: MCPServer) -> None:
    async with Client(sophie_server, mode="legacy") as client:
        big = await call(client, "route_task", {"task": "word " * 40_000, "role": "chat"})
        assert big.structured_content["code"] == "OVER_BUDGET"
        too_big = await call(client, "route_task", {"task": "x" * 8_000_001})
        assert "INVALID_ARGUMENT" in error_text(too_big)
        run_big = await call(client, "run_role", {"role": "chat", "prompt": "y" * 4_000_001})
        assert "OVER_BUDGET" in error_text(run_big)


@pytest.mark.parametrize("era", ERAS)
async def test_check_budget_reports_scopes_and_fit(codex_server: MCPServer, era: str) -> None:
    async with Client(codex_server, mode=era) as client:
        report = await call(
            client, "check_budget", {"role": "auditor", "input_tokens": 1000, "output_tokens": 500}
        )
        over = await call(
            client, "check_budget", {"model": "qwen-coder-32b", "input_tokens": 40_000}
        )
    data = report.structured_content
    assert {s["id"] for s in data["scopes"]} == {
        "global:*:day",
        "role:auditor:day",
        "provider:moonshot:month",
        "job:spec-audit:day",
    }
    day = next(s for s in data["scopes"] if s["id"] == "global:*:day")
    assert day["cap_usd_micro"] == 20_000_000
    assert day["resets_at"].endswith("T00:00:00+00:00")
    assert data["check"]["worst_case_cost_micro"] == 1000 * 125 // 100 + 500 * 10
    assert data["check"]["admitted"] is True
    assert over.structured_content["check"]["code"] == "OVER_BUDGET"
    assert over.structured_content["check"]["fits_context"] is False


@pytest.mark.parametrize("era", ERAS)
async def test_escalate_reports_fired_predicates_and_target(
    codex_server: MCPServer, era: str
) -> None:
    async with Client(codex_server, mode=era) as client:
        up = await call(client, "escalate", {"role": "architect", "confidence": 0.5})
        stay = await call(client, "escalate", {"role": "architect", "confidence": 0.9})
        local = await call(
            client, "escalate", {"role": "librarian", "full_sweep": True, "job": "private-spec"}
        )
    assert up.structured_content["escalate"] is True
    assert up.structured_content["to_model"] == "deepseek-reasoner"
    assert up.structured_content["provenance_id"].startswith("esc_")
    assert up.structured_content["fired"][0]["signal"] == "confidence"
    assert stay.structured_content["code"] == "NO_ESCALATION"
    assert local.structured_content["code"] == "LOCAL_ONLY_VIOLATION"


@pytest.mark.parametrize("era", ERAS)
async def test_escalation_with_task_id_moves_up_the_ladder(
    codex_server: MCPServer, era: str
) -> None:
    async with Client(codex_server, mode=era) as client:
        first = await call(
            client, "escalate", {"role": "librarian", "task_id": "t1", "full_sweep": True}
        )
        second = await call(
            client, "escalate", {"role": "librarian", "task_id": "t1", "full_sweep": True}
        )
        third = await call(
            client, "escalate", {"role": "librarian", "task_id": "t1", "full_sweep": True}
        )
        task = await client.read_resource("rolegate://tasks/t1")
    assert (first.structured_content["to_model"], second.structured_content["to_model"]) == (
        "kimi-k2",
        "claude-sonnet",
    )
    assert third.structured_content["escalate"] is False
    record = json.loads(task.contents[0].text)
    assert [e["to_model"] for e in record["escalations"]] == ["kimi-k2", "claude-sonnet"]


@pytest.mark.parametrize("era", ERAS)
async def test_run_role_without_reachable_provider_is_provider_unavailable(
    sophie_server: MCPServer, era: str
) -> None:
    async with Client(sophie_server, mode=era) as client:
        result = await call(client, "run_role", {"role": "extractor", "prompt": "pull fields"})
        premium = await call(client, "run_role", {"role": "reasoning", "prompt": "plan"})
    # Nothing listens on Ollama's port here; the moonshot key is not set.
    assert error_text(result).startswith("PROVIDER_UNAVAILABLE: phi4-extractor: cannot reach")
    # No key for the cloud model: unavailable, and its ask-first fallback cannot be asked here.
    assert error_text(premium).startswith("NEEDS_CONSENT: kimi failed (PROVIDER_UNAVAILABLE: ")
    assert "needs an API key: set MOONSHOT_API_KEY" in error_text(premium)


@pytest.mark.parametrize("era", ERAS)
async def test_resources_policy_roles_and_tasks(sophie_server: MCPServer, era: str) -> None:
    async with Client(sophie_server, mode=era) as client:
        policy = json.loads((await client.read_resource("rolegate://policy")).contents[0].text)
        roles = json.loads((await client.read_resource("rolegate://roles")).contents[0].text)
        with pytest.raises(MCPError):
            await client.read_resource("rolegate://tasks/never-seen")
    assert policy["name"] == "sophie-moltbot"
    assert policy["hash"].startswith("sha256:")
    assert policy["policy"]["models"]["kimi"]["reserve_tokens"] == 8000
    assert roles["roles"]["chat"] == {
        "model": "llama3.1-32k",
        "authority": "owner",
        "fallback": ["kimi"],
        "fallback_mode": "ask",
        "escalation_ladder": [],
        "output_contract": None,
    }
    assert roles["models"]["llama3.1-32k"]["max_input_tokens"] == 28_768


async def test_each_escalation_is_audited_once_with_its_move(codex_rs: Any, tmp_path: Any) -> None:
    """A recorded move and its audit record share one transaction; a refused move (no
    higher rung) is audited alone. Exactly one record per escalate call."""
    from rolegate.engine.bootstrap import build_engine
    from rolegate.ledger import open_ledger
    from rolegate.server.app import build_server

    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    server = build_server(build_engine(codex_rs, env={}, ledger=ledger))
    args = {"role": "librarian", "task_id": "t9", "full_sweep": True}
    async with Client(server, mode="legacy") as client:
        for _ in range(3):
            await call(client, "escalate", args)
    audited = [r for r in reversed(ledger.recent_audit(20)) if r.get("kind") == "escalation"]
    ledger.close()
    assert [(r["to_model"], r["code"]) for r in audited] == [
        ("kimi-k2", "ESCALATE"),
        ("claude-sonnet", "ESCALATE"),
        (None, "NO_SUFFICIENT_MODEL"),
    ]
