"""run_role end to end through MCP with the out-of-tree echo plugin (no model server needed):
streaming progress, contracts, escalation from output, declared fallbacks, consent, pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from tests.server.conftest import ERAS, consent_answerer
from tests.support.progress import Progress
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: run-role-test
providers:
  echo: {{type: echo, base_url: "echo://", locality: local}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{port}/v1", locality: local,
          max_retries: 0, connect_timeout_s: 1}}
models:
  echo-1: {{provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512,
            streaming: {{internal: true}}}}
  echo-2: {{provider: echo, name: echo-2, context_window: 8192, reserve_tokens: 512}}
  dead-1: {{provider: dead, name: dead-1, context_window: 4096, reserve_tokens: 512}}
roles:
  parrot: {{model: echo-1}}
  planner:
    model: echo-1
    output_contract: plan
    escalation: {{ladder: [echo-2], when: [{{signal: confidence, op: lt, value: 0.75}}]}}
  flaky_auto: {{model: dead-1, fallback: {{models: [echo-1], mode: auto}}}}
  flaky_ask: {{model: dead-1, fallback: {{models: [echo-2], mode: ask}}}}
  flaky_none: {{model: dead-1}}
  critic: {{model: echo-2, authority: sidecar}}
  careful:
    model: echo-1
    escalation: {{ladder: [echo-2], consent: true,
                  when: [{{signal: confidence, op: lt, value: 0.75}}]}}
contracts:
  plan: {{required: [plan, confidence], confidence_field: confidence}}
channels:
  cli: {{kind: internal, streaming: true}}
  email: {{kind: external, streaming: false}}
pipeline:
  stages:
    - {{name: plan, owner: planner, critic: critic}}
"""


@pytest.fixture
def server(tmp_path: Path) -> MCPServer:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(port=free_port()))
    return build_server(build_engine(load_policy(path), env={}))


async def run(client: Client, **args: Any) -> Any:
    return await client.call_tool("run_role", args)


@pytest.mark.parametrize("era", ERAS)
async def test_run_role_streams_progress_and_reports_usage(server: MCPServer, era: str) -> None:
    progress = Progress()

    async with Client(server, mode=era) as client:
        result = await client.call_tool(
            "run_role",
            {"role": "parrot", "prompt": "one two three", "channel": "cli"},
            progress_callback=progress,
        )
        quiet = Progress()
        email = await client.call_tool(
            "run_role",
            {"role": "parrot", "prompt": "a b", "channel": "email"},
            progress_callback=quiet,
        )
        # No channel given and no default channel: unknown, so nothing is streamed.
        silent = Progress()
        unknown = await client.call_tool(
            "run_role", {"role": "parrot", "prompt": "c d"}, progress_callback=silent
        )
    data = result.structured_content
    assert not result.is_error
    assert data["output"] == "one two three"
    assert (data["model"], data["provider"], data["locality"]) == ("echo-1", "echo", "local")
    assert data["usage"] == {
        "input_tokens": 3,
        "output_tokens": 3,
        "input_exact": True,
        "charged_at_worst_case": False,
    }
    assert data["streamed"] is True
    assert data["fallback"] is None
    assert progress.messages == ["one", " two", " three"]
    assert quiet.messages == []  # email forbids streaming: no partial text reaches the client
    assert email.structured_content["output"] == "a b"
    assert email.structured_content["streamed"] is False  # the truth: nothing was streamed
    assert silent.messages == []
    assert (unknown.structured_content["output"], unknown.structured_content["streamed"]) == (
        "c d",
        False,
    )


@pytest.mark.parametrize("era", ERAS)
async def test_contract_is_parsed_and_low_confidence_escalates(server: MCPServer, era: str) -> None:
    plan = json.dumps({"plan": ["step"], "confidence": 0.5})
    async with Client(server, mode=era) as client:
        good = await run(client, role="planner", prompt=plan)
        bad = await run(client, role="planner", prompt="not json at all")
    data = good.structured_content
    assert data["contract"] == {"name": "plan", "valid": True, "errors": []}
    assert data["structured"] == {"plan": ["step"], "confidence": 0.5}
    assert data["escalation"]["escalate"] is True
    assert data["escalation"]["to_model"] == "echo-2"
    violated = bad.structured_content
    assert not bad.is_error  # reported, not hidden, and not a crash
    assert violated["contract"]["valid"] is False
    assert violated["contract"]["errors"][0].startswith("not JSON")
    assert violated["structured"] is None


@pytest.mark.parametrize("era", ERAS)
async def test_declared_auto_fallback_is_reported(server: MCPServer, era: str) -> None:
    async with Client(server, mode=era) as client:
        result = await run(client, role="flaky_auto", prompt="hello there")
        none = await run(client, role="flaky_none", prompt="hello there")
    data = result.structured_content
    assert data["model"] == "echo-1"
    assert data["fallback"] == {
        "from_model": "dead-1",
        "to_model": "echo-1",
        "reason": "PROVIDER_UNAVAILABLE",
        "consent": "auto",
        "path": [
            {
                "model": "dead-1",
                "code": "PROVIDER_UNAVAILABLE",
                "outcome": "failed",
                "consent": None,
            },
            {"model": "echo-1", "code": "OK", "outcome": "ok", "consent": "auto"},
        ],
    }
    assert none.is_error  # no declared fallback: no silent switch
    assert none.content[0].text.startswith("PROVIDER_UNAVAILABLE: dead-1: cannot reach")


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("answer", ["accept", "decline"])
async def test_ask_first_fallback_uses_elicitation(
    server: MCPServer, era: str, answer: str
) -> None:
    asked: list[str] = []

    on_elicit = consent_answerer(answer, asked)

    async with Client(server, mode=era, elicitation_callback=on_elicit) as client:
        result = await run(client, role="flaky_ask", prompt="hi")
    assert asked
    assert "dead-1 is unavailable" in asked[0]
    assert "echo-2" in asked[0]
    if answer == "accept":
        assert result.structured_content["model"] == "echo-2"
        assert result.structured_content["fallback"]["consent"] == "user"
    else:
        assert result.is_error
        assert result.content[0].text.startswith("NEEDS_CONSENT")
        assert "declined" in result.content[0].text


@pytest.mark.parametrize("era", ERAS)
async def test_ask_first_without_elicitation_names_the_alternate(
    server: MCPServer, era: str
) -> None:
    async with Client(server, mode=era) as client:
        result = await run(client, role="flaky_ask", prompt="hi")
    assert result.is_error
    text = result.content[0].text
    assert text.startswith(
        "NEEDS_CONSENT: dead-1 failed (PROVIDER_UNAVAILABLE: dead-1: cannot reach"
    )
    assert "switching to echo-2" in text


@pytest.mark.parametrize("era", ERAS)
async def test_one_owner_per_stage_and_a_critic_that_never_owns(
    server: MCPServer, era: str
) -> None:
    # pipeline.critic is on_escalation (the default): critics only after an escalation.
    async with Client(server, mode=era) as client:
        plan = json.dumps({"plan": ["a"], "confidence": 0.9})
        first = await run(client, role="planner", prompt=plan, task_id="t", stage="plan")
        second = await run(client, role="planner", prompt=plan, task_id="t", stage="plan")
        intruder = await run(client, role="parrot", prompt="x", task_id="t", stage="plan")
        early = await run(client, role="critic", prompt="risky", task_id="t", stage="plan")
        escalated = await client.call_tool(
            "escalate", {"role": "planner", "task_id": "t", "confidence": 0.2}
        )
        replaced = await run(client, role="planner", prompt=plan, task_id="t", stage="plan")
        critique = await run(client, role="critic", prompt="risky", task_id="t", stage="plan")
        task = json.loads((await client.read_resource("rolegate://tasks/t")).contents[0].text)
    assert first.structured_content["model"] == "echo-1"
    assert first.structured_content["critique"] is None  # not escalated: no second opinion
    assert second.content[0].text.startswith("CONSENSUS_FORBIDDEN")
    assert intruder.content[0].text.startswith("CONSENSUS_FORBIDDEN: stage 'plan' is owned by")
    assert early.content[0].text.startswith("CRITIC_NOT_ALLOWED: 'critic' is a critic")
    assert escalated.structured_content["to_model"] == "echo-2"
    # The escalated owner gets the stage critic's second opinion, run by the server.
    owner = replaced.structured_content
    assert owner["model"] == "echo-2"
    assert owner["authoritative"] is True
    review = owner["critique"]
    assert (review["role"], review["authoritative"]) == ("critic", False)
    assert plan in review["output"]  # the echo critic saw the owner output
    assert owner["output"] == plan  # and did not change it
    assert critique.structured_content["authoritative"] is False
    stage = task["stages"]["plan"]
    assert (stage["role"], stage["model"], stage["replaced"]) == ("planner", "echo-2", ["echo-1"])
    assert [c["authoritative"] for c in task["critiques"]] == [False, False]
    assert task["escalations"][0]["fired"] == ["confidence"]


@pytest.mark.parametrize("mode", ["never", "always"])
async def test_the_pipeline_critic_mode_is_enforced(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        POLICY.format(port=free_port()).replace("pipeline:\n", f"pipeline:\n  critic: {mode}\n")
    )
    server = build_server(build_engine(load_policy(path), env={}))
    plan = json.dumps({"plan": ["a"], "confidence": 0.9})
    async with Client(server, mode="legacy") as client:
        owner = await run(client, role="planner", prompt=plan, task_id="m", stage="plan")
        asked = await run(client, role="critic", prompt="risky", task_id="m", stage="plan")
        task = json.loads((await client.read_resource("rolegate://tasks/m")).contents[0].text)
    assert owner.structured_content["output"] == plan
    if mode == "never":
        assert owner.structured_content["critique"] is None
        assert asked.content[0].text.startswith("CRITIC_NOT_ALLOWED")
        assert task["critiques"] == []
    else:
        review = owner.structured_content["critique"]
        assert (review["role"], review["authoritative"]) == ("critic", False)
        assert asked.structured_content["authoritative"] is False
        assert len(task["critiques"]) == 2
        assert task["stages"]["plan"]["role"] == "planner"  # the owner stays the owner


async def test_decision_id_must_match_the_role(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        decision = await client.call_tool("route_task", {"task": "hi", "role": "parrot"})
        decision_id = decision.structured_content["decision_id"]
        ok = await run(client, role="parrot", prompt="hi", decision_id=decision_id)
        wrong = await run(client, role="planner", prompt="hi", decision_id=decision_id)
    assert ok.structured_content["decision_id"] == decision_id
    assert wrong.content[0].text.startswith("INVALID_ARGUMENT: decision")


async def test_over_context_is_refused_before_any_call(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        result = await run(client, role="parrot", prompt="w " * 7200)
    assert result.content[0].text.startswith("OVER_BUDGET: input is ")
    assert "tokens; echo-1 accepts" in result.content[0].text


@pytest.mark.parametrize("prompt", ["null", "[1, 2]", '{"a": 1}', "true", "42"])
async def test_prompts_that_look_like_json_stay_text(server: MCPServer, prompt: str) -> None:
    async with Client(server, mode="legacy") as client:
        result = await run(client, role="parrot", prompt=prompt)
        budget = await client.call_tool("check_budget", {"role": "parrot", "text": prompt})
    assert result.structured_content["output"] == prompt
    assert budget.structured_content["check"]["admitted"] is True


async def test_validation_stage_retries_a_bounded_number_of_times(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        bad = await run(client, role="planner", prompt="no plan here", task_id="v", stage="plan")
        good = await run(
            client,
            role="planner",
            prompt='{"plan": [], "confidence": 0.9}',
            task_id="w",
            stage="plan",
        )
    assert bad.structured_content["attempts"] == 2  # the stage's max_retries is 1
    assert bad.structured_content["contract"]["valid"] is False
    assert good.structured_content["attempts"] == 1
    assert good.structured_content["authoritative"] is True


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("answer", ["accept", "decline", None])
async def test_escalation_that_demands_consent_asks_and_records_the_answer(
    server: MCPServer, era: str, answer: str | None
) -> None:
    asked: list[str] = []

    callback = consent_answerer(answer, asked) if answer is not None else None
    async with Client(server, mode=era, elicitation_callback=callback) as client:
        calm = await client.call_tool("escalate", {"role": "careful", "confidence": 0.9})
        result = await client.call_tool(
            "escalate", {"role": "careful", "confidence": 0.3, "task_id": "c"}
        )
        task = await client.read_resource("rolegate://tasks/c") if answer == "accept" else None
    assert calm.structured_content["code"] == "NO_ESCALATION"
    data = result.structured_content
    if answer == "accept":
        assert len(asked) >= 1
        assert "switch from echo-1 to echo-2" in asked[0]
        assert (data["escalate"], data["consent"], data["to_model"]) == (True, "granted", "echo-2")
        assert task is not None
        assert json.loads(task.contents[0].text)["escalations"][0]["consent"] == "granted"
    else:
        assert (data["escalate"], data["code"]) == (False, "NEEDS_CONSENT")
        assert data["consent"] == ("declined" if answer == "decline" else "not_asked")
