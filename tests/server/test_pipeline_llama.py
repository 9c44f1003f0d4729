"""Escalation, the single-owner pipeline and the critic, end to end through MCP against a real
llama.cpp server. Contracts are enforced (the server constrains output with the contract's JSON
schema) and the roles run at temperature 0, so Gemma 270M's answers are repeatable.

The premium model's "cloud" is a listener that counts connections: the tests prove when it is
never contacted.
"""

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
from tests.support.llama import LlamaServer
from tests.support.servers import CountingEndpoint

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: pipeline-llama
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
  cloud: {{type: openai, base_url: "http://127.0.0.1:{cloud}/v1", locality: cloud,
           api_key_env: CLOUD_KEY, max_retries: 0, connect_timeout_s: 2}}
models:
  gemma-a: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
             timeout_s: 120}}
  gemma-b: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
             timeout_s: 120}}
  premium: {{provider: cloud, name: big-1, context_window: 200000, reserve_tokens: 4096,
             premium: true, escalation_only: true,
             price: {{input_per_mtok: "15", output_per_mtok: "75"}}}}
roles:
  architect:
    model: gemma-a
    output_contract: plan
    temperature: 0
    escalation:
      ladder: [gemma-b, premium]
      when: [{{signal: confidence, op: lt, value: 0.75}}]
  careful:
    model: gemma-a
    output_contract: plan
    temperature: 0
    escalation:
      ladder: [gemma-b]
      consent: true
      when: [{{signal: confidence, op: lt, value: 0.75}}]
  critic: {{model: gemma-b, authority: sidecar, output_contract: critique, temperature: 0}}
contracts:
  plan: {{required: [plan, confidence], types: {{plan: string}}, confidence_field: confidence,
          enforce: true}}
  critique:
    required: [risks, contradictions, missing_requirements, guardrail_conflicts]
    types: {{risks: array, contradictions: array, missing_requirements: array,
             guardrail_conflicts: array}}
    max_items: 3
    enforce: true
jobs:
  feature: {{role: architect}}
  release: {{role: architect, premium_allowlist: [premium]}}
  private: {{role: architect, local_only: true, premium_allowlist: [premium]}}
defaults: {{max_output_tokens: 160}}
pipeline:
  critic: always
  stages:
    - {{name: design, owner: architect, critic: critic}}
"""

SYSTEM = (
    "You are the architect. Reply with one JSON object with the keys plan (a string) "
    "and confidence (a number from 0 to 1)."
)
UNSURE = "Plan how to split the parser module. You are unsure: report confidence 0.3."
REVIEW = "Review this plan: split the parser module into a lexer and a parser, confidence 0.3."
SURE = "Plan how to rename one variable. You are certain: report confidence 0.95."


@pytest.fixture
def server(llama: LlamaServer, cloud: CountingEndpoint, tmp_path: Path) -> MCPServer:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(v1=llama.v1, cloud=cloud.port))
    return build_server(build_engine(load_policy(path), env={"CLOUD_KEY": "sk-test"}))


async def architect(client: Client, prompt: str, **args: Any) -> Any:
    return await client.call_tool(
        "run_role",
        {"role": args.pop("role", "architect"), "prompt": prompt, "system": SYSTEM, **args},
    )


async def task_view(client: Client, task_id: str) -> dict[str, Any]:
    resource = await client.read_resource(f"rolegate://tasks/{task_id}")
    view: dict[str, Any] = json.loads(resource.contents[0].text)
    return view


async def test_low_confidence_plan_escalates_and_a_confident_one_does_not(
    server: MCPServer, cloud: CountingEndpoint
) -> None:
    async with Client(server, mode="legacy") as client:
        unsure = await architect(client, UNSURE, max_output_tokens=120)
        sure = await architect(client, SURE, max_output_tokens=120)
    for result in (unsure, sure):
        assert not result.is_error, result.content
        data = result.structured_content
        assert data["model"] == "gemma-a"
        assert data["contract"] == {"name": "plan", "valid": True, "errors": []}
        assert set(data["structured"]) >= {"plan", "confidence"}
        assert data["usage"]["output_tokens"] >= 1
    low, high = unsure.structured_content, sure.structured_content
    assert low["structured"]["confidence"] < 0.75 <= high["structured"]["confidence"]
    escalation = low["escalation"]
    assert (escalation["escalate"], escalation["to_model"]) == (True, "gemma-b")
    assert [f["signal"] for f in escalation["fired"]] == ["confidence"]
    assert escalation["fired"][0]["observed"] == low["structured"]["confidence"]
    assert high["escalation"] is None or high["escalation"]["escalate"] is False
    assert cloud.connections == 0


async def test_one_owner_per_stage_escalation_replaces_it_and_the_critic_only_comments(
    server: MCPServer, cloud: CountingEndpoint
) -> None:
    async with Client(server, mode="2026-07-28") as client:
        owner = await architect(client, UNSURE, task_id="t1", stage="design")
        second = await architect(client, UNSURE, task_id="t1", stage="design")
        critique = await client.call_tool(
            "run_role",
            {
                "role": "critic",
                "prompt": REVIEW,
                "task_id": "t1",
                "stage": "design",
                "max_output_tokens": 200,
            },
        )
        escalated = await client.call_tool(
            "escalate",
            {"role": "architect", "task_id": "t1", "confidence": owner_confidence(owner)},
        )
        replaced = await architect(client, UNSURE, task_id="t1", stage="design")
        view = await task_view(client, "t1")
    assert owner.structured_content["authoritative"] is True
    assert second.is_error
    assert second.content[0].text.startswith("CONSENSUS_FORBIDDEN")
    # The critic: a structured critique, never authoritative, and the owner stays the owner.
    assert not critique.is_error, critique.content
    review = critique.structured_content
    assert review["authoritative"] is False
    assert review["contract"]["valid"] is True, review["output"]
    assert set(review["structured"]) == {
        "risks",
        "contradictions",
        "missing_requirements",
        "guardrail_conflicts",
    }
    assert all(isinstance(v, list) for v in review["structured"].values())
    # Escalation moved the architect up the ladder and the new owner replaced the old one.
    assert escalated.structured_content["to_model"] == "gemma-b"
    assert escalated.structured_content["provenance_id"].startswith("esc_")
    assert replaced.structured_content["model"] == "gemma-b"
    stage = view["stages"]["design"]
    assert (stage["role"], stage["model"], stage["replaced"]) == (
        "architect",
        "gemma-b",
        ["gemma-a"],
    )
    # critic: always, so the server ran the stage critic after each owner output too.
    assert [c["authoritative"] for c in view["critiques"]] == [False, False, False]
    for result in (owner, replaced):
        auto = result.structured_content["critique"]
        assert (auto["role"], auto["authoritative"]) == ("critic", False)
        assert auto["contract"]["name"] == "critique"
    assert [e["to_model"] for e in view["escalations"]] == ["gemma-b"]
    assert "lexer" not in json.dumps(view)  # the task view holds no text
    assert cloud.connections == 0


def owner_confidence(result: Any) -> float:
    confidence: float = result.structured_content["structured"]["confidence"]
    return confidence


async def test_premium_escalation_obeys_the_allowlist_and_local_only(
    server: MCPServer, cloud: CountingEndpoint
) -> None:
    async with Client(server, mode="legacy") as client:
        results = {}
        for job in ("feature", "release", "private"):
            task = f"p-{job}"
            # Two escalations: gemma-b, then the premium rung.
            await client.call_tool(
                "escalate", {"role": "architect", "job": job, "task_id": task, "confidence": 0.2}
            )
            results[job] = await client.call_tool(
                "escalate", {"role": "architect", "job": job, "task_id": task, "confidence": 0.2}
            )
        # Under local_only, running the escalated role never reaches the cloud either.
        private_run = await architect(client, UNSURE, job="private", task_id="p-private")
    feature, release, private = (results[j].structured_content for j in results)
    assert (feature["escalate"], feature["code"]) == (False, "NOT_ALLOWLISTED")
    assert "premium" in feature["message"]
    assert (release["escalate"], release["to_model"]) == (True, "premium")
    assert (private["escalate"], private["code"]) == (False, "LOCAL_ONLY_VIOLATION")
    assert private_run.structured_content["model"] == "gemma-b"
    assert cloud.connections == 0  # an escalation decision contacts nobody


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("answer", ["accept", "decline"])
async def test_consent_through_elicitation_is_asked_and_obeyed(
    server: MCPServer, era: str, answer: str
) -> None:
    asked: list[str] = []

    on_elicit = consent_answerer(answer, asked)

    async with Client(server, mode=era, elicitation_callback=on_elicit) as client:
        first = await architect(client, UNSURE, role="careful", task_id="c", stage="sketch")
        decision = await client.call_tool(
            "escalate",
            {"role": "careful", "task_id": "c", "confidence": owner_confidence(first)},
        )
        after = await architect(client, UNSURE, role="careful", task_id="c")
        view = await task_view(client, "c")
    assert first.structured_content["escalation"]["consent_required"] is True
    assert asked
    assert "switch from gemma-a to gemma-b" in asked[0]
    data = decision.structured_content
    if answer == "accept":
        assert (data["escalate"], data["consent"], data["to_model"]) == (True, "granted", "gemma-b")
        assert after.structured_content["model"] == "gemma-b"
        assert view["escalations"][0]["consent"] == "granted"
    else:
        assert (data["escalate"], data["code"], data["consent"]) == (
            False,
            "NEEDS_CONSENT",
            "declined",
        )
        assert after.structured_content["model"] == "gemma-a"
        assert not view["escalations"]
