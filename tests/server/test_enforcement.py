"""Every rule on every path: a decision's constraints bind its run, the whole fallback chain
is walked with every step re-checked, refusals describe the model they refuse, and errors a
caller can cause are always ``CODE: sentence``."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp_types import ElicitResult, ErrorData

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.requests import EscalateRequest
from rolegate.errors import RequestError
from rolegate.ledger import Ledger, open_ledger
from rolegate.policy import Policy, load_policy
from rolegate.policy.limits import signal_names
from rolegate.policy.loader import parse_text
from rolegate.policy.schema import PolicyDocument
from rolegate.server.app import build_server
from tests.server.conftest import ERAS
from tests.support.servers import CountingEndpoint, free_port

pytestmark = pytest.mark.anyio
CODED = r"^[A-Z][A-Z_]+: \S"

POLICY = """
version: 1
name: enforcement-test
providers:
  echo: {{type: echo, base_url: "echo://", locality: local}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{dead}/v1", locality: local, max_retries: 0,
          connect_timeout_s: 1}}
  cloud: {{type: openai, base_url: "http://127.0.0.1:{cloud}/v1", locality: cloud,
           api_key_env: CLOUD_KEY, max_retries: 0, connect_timeout_s: 1}}
models:
  dead-a: {{provider: dead, name: a, context_window: 4096, reserve_tokens: 512, rank: 1}}
  dead-b: {{provider: dead, name: b, context_window: 4096, reserve_tokens: 512}}
  dead-c: {{provider: dead, name: c, context_window: 4096, reserve_tokens: 512}}
  tiny: {{provider: echo, name: tiny, context_window: 64, reserve_tokens: 32}}
  echo-d: {{provider: echo, name: echo-d, context_window: 4096, reserve_tokens: 512,
            streaming: {{internal: true}}}}
  cloud-1: {{provider: cloud, name: cloud-1, context_window: 100000, reserve_tokens: 512}}
roles:
  # Seed 000's shape: a primary and three declared local fallbacks, walked in order.
  chain: {{model: dead-a, fallback: {{models: [dead-b, dead-c, echo-d], mode: auto}}}}
  asking: {{model: dead-a, fallback: {{models: [dead-b, echo-d], mode: ask}}}}
  # A step whose window is too small for the input is refused and the next one tried.
  narrow: {{model: dead-a, fallback: {{models: [tiny, echo-d], mode: auto}}}}
  hybrid: {{model: dead-a, fallback: {{models: [cloud-1, echo-d], mode: auto}}}}
  parrot: {{model: echo-d}}
  planner:
    model: echo-d
    output_contract: plan
    escalation: {{ladder: [cloud-1], when: [{{signal: confidence, op: lt, value: 0.75}}]}}
contracts:
  plan: {{required: [plan, confidence], confidence_field: confidence}}
jobs:
  nightly: {{role: parrot}}
  daily: {{role: parrot}}
channels:
  cli: {{kind: internal, streaming: true}}
  email: {{kind: external, streaming: false}}
"""


@pytest.fixture
def policy_path(tmp_path: Path, cloud: CountingEndpoint) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(dead=free_port(), cloud=cloud.port))
    return path


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    opened = open_ledger(f"sqlite://{tmp_path / 'ledger.sqlite3'}")
    yield opened
    opened.close()


@pytest.fixture
def server(policy_path: Path, ledger: Ledger) -> MCPServer:
    service = build_engine(load_policy(policy_path), env={"CLOUD_KEY": "k"}, ledger=ledger)
    return build_server(service)


async def call(client: Client, tool: str, **args: Any) -> Any:
    return await client.call_tool(tool, args)


def text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.parametrize("era", ERAS)
async def test_a_decisions_local_only_binds_the_run_that_uses_it(
    server: MCPServer, cloud: CountingEndpoint, ledger: Ledger, era: str
) -> None:
    async with Client(server, mode=era) as client:
        routed = await call(client, "route_task", task="hi", role="hybrid", local_only=True)
        decision = routed.structured_content
        run = await call(client, "run_role", role="hybrid", prompt="hi there",
                         decision_id=decision["decision_id"])  # fmt: skip
    # The decision never lists a fallback its own constraints forbid.
    assert decision["local_only"] is True
    assert decision["fallback"] == ["echo-d"]
    assert [(r["model"], r["code"]) for r in decision["fallback_rejected"]] == [
        ("cloud-1", "LOCAL_ONLY_VIOLATION")
    ]
    # The local primary is down: the run skips the cloud step and lands on echo-d.
    assert not run.is_error, text(run)
    data = run.structured_content
    assert data["model"] == "echo-d"
    assert [(s["model"], s["outcome"], s["code"]) for s in data["fallback"]["path"]] == [
        ("dead-a", "failed", "PROVIDER_UNAVAILABLE"),
        ("cloud-1", "refused", "LOCAL_ONLY_VIOLATION"),
        ("echo-d", "ok", "OK"),
    ]
    assert cloud.connections == 0
    kinds = [(r["kind"], r.get("model")) for r in reversed(ledger.recent_audit(20))]
    assert ("fallback_refused", "cloud-1") in kinds


async def test_without_local_only_the_same_chain_does_reach_the_cloud(
    server: MCPServer, cloud: CountingEndpoint
) -> None:
    async with Client(server, mode="legacy") as client:
        run = await call(client, "run_role", role="hybrid", prompt="hi there")
    assert cloud.connections >= 1  # the counter works: the rule above is what kept it at 0
    assert run.structured_content["model"] == "echo-d"  # the fake cloud hangs up


async def test_a_decision_binds_job_channel_and_output_cap(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        routed = await call(client, "route_task", task="hi", role="parrot", channel="email",
                            max_output_tokens=5)  # fmt: skip
        did = routed.structured_content["decision_id"]
        other_channel = await call(client, "run_role", role="parrot", prompt="a b",
                                   decision_id=did, channel="cli")  # fmt: skip
        bigger = await call(client, "run_role", role="parrot", prompt="a b", decision_id=did,
                            max_output_tokens=6)  # fmt: skip
        bound = await call(client, "run_role", role="parrot", prompt="a b c d e f g h",
                           decision_id=did)  # fmt: skip
        for_job = await call(client, "route_task", task="hi", job="nightly")
        other_job = await call(client, "run_role", role="parrot", prompt="a", job="daily",
                               decision_id=for_job.structured_content["decision_id"])  # fmt: skip
    assert text(other_channel).startswith("INVALID_ARGUMENT: decision dec_")
    assert "channel 'email'" in text(other_channel)
    assert text(other_job).startswith("INVALID_ARGUMENT: decision dec_")
    assert "job 'nightly'" in text(other_job)
    assert text(bigger).startswith("INVALID_ARGUMENT")
    data = bound.structured_content
    assert data["streamed"] is False  # the decision's email channel forbids streaming
    assert data["usage"]["output_tokens"] == 5  # the decision's cap


@pytest.mark.parametrize("era", ERAS)
async def test_the_whole_declared_chain_is_walked_in_order(
    server: MCPServer, ledger: Ledger, era: str
) -> None:
    async with Client(server, mode=era) as client:
        run = await call(client, "run_role", role="chain", prompt="still here")
    assert not run.is_error, text(run)
    data = run.structured_content
    assert (data["model"], data["output"]) == ("echo-d", "still here")
    path = [s["model"] for s in data["fallback"]["path"]]
    assert path == ["dead-a", "dead-b", "dead-c", "echo-d"]
    switches = [
        (r["model"], r["to_model"]) for r in reversed(ledger.recent_audit(30))
        if r["kind"] == "fallback"
    ]  # fmt: skip
    assert switches == [("dead-a", "dead-b"), ("dead-b", "dead-c"), ("dead-c", "echo-d")]


async def test_every_step_is_rechecked_against_its_own_window(
    server: MCPServer, ledger: Ledger
) -> None:
    async with Client(server, mode="legacy") as client:
        run = await call(client, "run_role", role="narrow", prompt="word " * 60)
    data = run.structured_content
    assert data["model"] == "echo-d"
    assert [(s["model"], s["code"]) for s in data["fallback"]["path"]] == [
        ("dead-a", "PROVIDER_UNAVAILABLE"),
        ("tiny", "OVER_BUDGET"),
        ("echo-d", "OK"),
    ]
    # No switch is recorded to the refused step, and the switch made says why it was made.
    trail = [
        (r["kind"], r["model"], r["to_model"], r["code"]) for r in reversed(ledger.recent_audit(20))
        if r["kind"] in ("fallback", "fallback_refused")
    ]  # fmt: skip
    assert trail == [
        ("fallback_refused", "tiny", None, "OVER_BUDGET"),
        ("fallback", "dead-a", "echo-d", "PROVIDER_UNAVAILABLE"),
    ]


async def test_an_exhausted_chain_names_every_step(policy_path: Path) -> None:
    text_ = policy_path.read_text().replace("[dead-b, dead-c, echo-d]", "[dead-b, dead-c]")
    policy_path.write_text(text_)
    server = build_server(build_engine(load_policy(policy_path), env={}))
    async with Client(server, mode="legacy") as client:
        run = await call(client, "run_role", role="chain", prompt="x")
    message = text(run)
    assert message.startswith("PROVIDER_UNAVAILABLE: ")
    assert "chain exhausted: dead-a PROVIDER_UNAVAILABLE, dead-b PROVIDER_UNAVAILABLE, " \
        "dead-c PROVIDER_UNAVAILABLE" in message  # fmt: skip


async def test_consent_is_asked_for_every_step_of_an_ask_chain(server: MCPServer) -> None:
    asked: list[str] = []

    async def yes(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"switch": True})

    async with Client(server, mode="legacy", elicitation_callback=yes) as client:
        run = await call(client, "run_role", role="asking", prompt="hello")
    assert run.structured_content["model"] == "echo-d"
    # Up front, the question names the alternates in order; the answer covers them.
    assert len(asked) == 1
    assert "dead-b then echo-d" in asked[0]
    assert run.structured_content["fallback"]["consent"] == "user"


async def test_a_consent_answer_that_does_not_fit_its_form_is_coded(server: MCPServer) -> None:
    async def garbled(context: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"switch": "maybe"})

    async with Client(server, mode="2026-07-28", elicitation_callback=garbled) as client:
        run = await call(client, "run_role", role="asking", prompt="hello")
    assert run.is_error
    assert text(run).startswith("INVALID_ARGUMENT: the answer to the consent question")


def _unchecked(data: dict[str, Any]) -> Policy:
    """A policy built without `rolegate check`, as an embedding program could."""
    return Policy(PolicyDocument.model_validate(data), source="<unchecked>")


async def test_runtime_never_falls_back_to_escalation_only_or_premium(
    policy_path: Path, cloud: CountingEndpoint
) -> None:
    data = parse_text(policy_path.read_text(), "yaml", "test")
    data["models"]["cloud-1"]["escalation_only"] = True
    data["models"]["echo-d"]["premium"] = True
    server = build_server(build_engine(_unchecked(data), env={"CLOUD_KEY": "k"}))
    async with Client(server, mode="legacy") as client:
        run = await call(client, "run_role", role="hybrid", prompt="x")
    assert run.is_error
    message = text(run)
    assert message.startswith("FALLBACK_FORBIDDEN: echo-d is premium")
    assert "cloud-1 FALLBACK_FORBIDDEN" in message
    assert cloud.connections == 0


async def test_a_refusal_describes_the_model_it_refuses(mac_mini: Policy) -> None:
    server = build_server(build_engine(mac_mini, env={}))
    async with Client(server, mode="legacy") as client:
        refused = await call(client, "route_task", task="plan the day", role="strategist")
    data = refused.structured_content
    assert data["code"] == "NOT_ALLOWLISTED"
    assert (data["model"], data["premium"], data["provider"], data["locality"]) == (
        "kimi-k2.5",
        True,
        "moonshot",
        "cloud",
    )


async def test_escalate_takes_every_signal_and_nothing_else(codex_server: MCPServer) -> None:
    async with Client(codex_server, mode="legacy") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        props = set(tools["escalate"].input_schema["properties"])
        scope = await call(client, "escalate", role="architect", scope_large=True)
        self_check = await call(client, "escalate", role="implementer", self_check_confidence=0.1)
        curious = await call(client, "escalate", role="ace-reflector", interesting_failure=True)
        typo = await call(client, "escalate", role="architect", confidense=0.1)
        high = await call(client, "escalate", role="architect", confidence=1.5)
        twice = await call(client, "escalate", role="librarian", confidence=0.1, user_request=True)
    assert set(signal_names()) <= props
    assert scope.structured_content["escalate"] is True
    assert [f["signal"] for f in scope.structured_content["fired"]] == ["scope_large"]
    assert self_check.structured_content["fired"][0]["signal"] == "self_check_confidence"
    assert curious.structured_content["to_model"] == "kimi-k2"
    assert text(typo).startswith("INVALID_ARGUMENT: escalate has no argument(s) 'confidense'")
    assert text(high).startswith("INVALID_ARGUMENT")
    signals = [f["signal"] for f in twice.structured_content["fired"]]
    assert sorted(signals) == ["confidence", "user_request"]


async def test_nan_or_out_of_range_signals_are_invalid(codex_rs: Policy) -> None:
    service = build_engine(codex_rs, env={})
    for signals in ({"confidence": math.nan}, {"failed_loops": -1}, {"context_estimate": 1e99},
                    {"tool_heavy": 1}, {"confidence": math.inf}):  # fmt: skip
        with pytest.raises(RequestError) as caught:
            await service.escalate(EscalateRequest("implementer", signals))
        assert caught.value.code == "INVALID_ARGUMENT"


TWICE = """
version: 1
name: twice
providers: {echo: {type: echo, base_url: "echo://", locality: local}}
models:
  a: {provider: echo, name: a, context_window: 4096, reserve_tokens: 512}
  b: {provider: echo, name: b, context_window: 4096, reserve_tokens: 512}
roles:
  twice:
    model: a
    escalation:
      ladder: [b]
      when: [{signal: confidence, op: lt, value: 0.9}, {signal: confidence, op: lt, value: 0.5}]
"""


async def test_a_predicate_fires_once_even_when_two_rules_name_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TWICE)
    server = build_server(build_engine(load_policy(path), env={}))
    async with Client(server, mode="legacy") as client:
        result = await call(client, "escalate", role="twice", confidence=0.1)
    fired = result.structured_content["fired"]
    assert [(f["signal"], f["threshold"]) for f in fired] == [("confidence", 0.9)]


@pytest.mark.parametrize(
    ("tool", "args", "code"),
    [
        ("no_such_tool", {}, "UNKNOWN_TOOL"),
        ("route_task", {"task": "x", "max_output_tokens": 2**63}, "INVALID_ARGUMENT"),
        (
            "run_role",
            {"role": "parrot", "prompt": "x", "max_output_tokens": 2**63},
            "INVALID_ARGUMENT",
        ),
        ("route_task", {"task": "x", "needs": ["n"] * 1000}, "INVALID_ARGUMENT"),
        (
            "run_role",
            {"role": "parrot", "prompt": "x", "task_id": "t" * 10_000},
            "INVALID_ARGUMENT",
        ),
        ("route_task", {"task": "x", "job": "j" * 10_000}, "INVALID_ARGUMENT"),
        ("check_budget", {"output_tokens": -1}, "INVALID_ARGUMENT"),
        ("route_task", {"task": "x", "bogus": 1}, "INVALID_ARGUMENT"),
    ],
)
async def test_errors_a_caller_can_cause_are_coded(
    server: MCPServer, tool: str, args: dict[str, Any], code: str
) -> None:
    async with Client(server, mode="legacy") as client:
        result = await call(client, tool, **args)
        alive = await call(client, "route_task", task="hello", role="parrot")
    assert result.is_error
    assert text(result).startswith(f"{code}: "), text(result)
    assert "validation error for" not in text(result)
    assert "Error executing tool" not in text(result)
    assert len(text(result)) < 2_000  # no echo of a huge argument
    assert alive.structured_content["code"] == "ROUTED"


async def test_seed_000s_chain_is_walked_to_its_end(mac_mini: Policy, ledger: Ledger) -> None:
    """qwen2.5:3b -> llama3.2:3b -> qwen2.5:7b -> deepseek-coder:1.3b, each tried in turn
    (no Ollama listens here, so each one fails to connect and the next is tried)."""
    policy = mac_mini.doc.model_copy(
        update={
            "providers": {
                **mac_mini.doc.providers,
                "ollama": mac_mini.doc.providers["ollama"].model_copy(
                    update={"base_url": f"http://127.0.0.1:{free_port()}", "max_retries": 0}
                ),
            }
        }
    )
    server = build_server(build_engine(Policy(policy, source="000"), env={}, ledger=ledger))
    async with Client(server, mode="legacy") as client:
        run = await call(client, "run_role", role="local_fast", prompt="triage the queue")
    message = text(run)
    assert message.startswith("PROVIDER_UNAVAILABLE: "), message
    assert message.endswith(
        "(declared fallback chain exhausted: qwen2.5-3b PROVIDER_UNAVAILABLE, llama3.2-3b "
        "PROVIDER_UNAVAILABLE, qwen2.5-7b PROVIDER_UNAVAILABLE, deepseek-coder-1.3b "
        "PROVIDER_UNAVAILABLE)"
    )
    switches = [
        (r["model"], r["to_model"]) for r in reversed(ledger.recent_audit(40))
        if r["kind"] == "fallback"
    ]  # fmt: skip
    assert switches == [
        ("qwen2.5-3b", "llama3.2-3b"),
        ("llama3.2-3b", "qwen2.5-7b"),
        ("qwen2.5-7b", "deepseek-coder-1.3b"),
    ]


async def test_run_time_local_only_keeps_the_cloud_judge_rule(codex_server: MCPServer) -> None:
    async with Client(codex_server, mode="legacy") as client:
        routed = await call(client, "route_task", task="plan it", role="architect", risk="high")
        run = await call(client, "run_role", role="architect", prompt="x", local_only=True,
                         decision_id=routed.structured_content["decision_id"])  # fmt: skip
    assert routed.structured_content["judge_required"] == "auditor"
    assert text(run).startswith("CLOUD_JUDGE_REQUIRED: high-risk work needs the cloud judge")


async def test_the_escalation_an_output_calls_for_obeys_local_only(
    server: MCPServer, cloud: CountingEndpoint
) -> None:
    plan = '{"plan": 1, "confidence": 0.1}'
    async with Client(server, mode="legacy") as client:
        free = await call(client, "run_role", role="planner", prompt=plan)
        private = await call(client, "run_role", role="planner", prompt=plan, local_only=True)
    assert free.structured_content["escalation"]["to_model"] == "cloud-1"
    escalation = private.structured_content["escalation"]
    assert (escalation["escalate"], escalation["code"]) == (False, "LOCAL_ONLY_VIOLATION")
    assert cloud.connections == 0


async def test_streamed_is_false_when_the_client_asked_for_no_progress(
    server: MCPServer,
) -> None:
    async with Client(server, mode="legacy") as client:
        run = await call(client, "run_role", role="parrot", prompt="a b c", channel="cli")
    assert run.structured_content["streamed"] is False


@pytest.mark.parametrize("value", ["yes", 1, "maybe"])
async def test_a_flag_signal_takes_only_true_or_false(codex_server: MCPServer, value: Any) -> None:
    async with Client(codex_server, mode="legacy") as client:
        result = await call(client, "escalate", role="librarian", tool_heavy=value)
    assert text(result).startswith("INVALID_ARGUMENT: invalid arguments for escalate: tool_heavy")


async def test_a_client_that_fails_the_consent_question_gets_needs_consent(
    server: MCPServer,
) -> None:
    async def broken(context: Any, params: Any) -> ErrorData:
        return ErrorData(code=-32603, message="the client fell over")

    async with Client(server, mode="legacy", elicitation_callback=broken) as client:
        run = await call(client, "run_role", role="asking", prompt="hello")
        alive = await call(client, "route_task", task="hello", role="parrot")
    assert text(run).startswith("NEEDS_CONSENT: the client could not answer")
    assert alive.structured_content["code"] == "ROUTED"


async def test_tool_arguments_take_exactly_their_kind(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        results = [
            await call(client, "route_task", task="x", local_only=1),
            await call(client, "route_task", task="x", context_tokens=5.5),
            await call(client, "run_role", role="parrot", prompt="x", local_only="yes"),
            await call(client, "escalate", role="parrot", local_only=1),
        ]
    for result in results:
        assert text(result).startswith("INVALID_ARGUMENT: invalid arguments for"), text(result)


async def test_a_task_resource_error_is_coded_and_echoes_nothing(server: MCPServer) -> None:
    marker = "MARKER-9d1c"
    async with Client(server, mode="legacy") as client:
        for uri in (f"rolegate://tasks/{marker}", f"rolegate://tasks/{'t' * 200}"):
            with pytest.raises(Exception) as caught:  # noqa: PT011 - the SDK's MCPError
                await client.read_resource(uri)
            message = str(caught.value)
            assert re.match(r"^(UNKNOWN_TASK|INVALID_ARGUMENT): ", message), message
            assert marker not in message


PROBE = """
version: 1
name: probe-test
providers:
  echo: {{type: echo, base_url: "echo://", locality: local}}
  cloud: {{type: openai, base_url: "http://127.0.0.1:{cloud}/v1", locality: cloud,
           api_key_env: CLOUD_KEY, max_retries: 0, connect_timeout_s: 1}}
models:
  echo-d: {{provider: echo, name: echo-d, context_window: 4096, reserve_tokens: 512}}
  kimi: {{provider: cloud, name: kimi, context_window: 100000, reserve_tokens: 512,
          premium: true}}
  cheap: {{provider: cloud, name: cheap, context_window: 100000, reserve_tokens: 512,
           price: {{input_per_mtok: "1", output_per_mtok: "1"}}}}
roles:
  premium_ask: {{model: kimi, fallback: {{models: [echo-d], mode: ask}}}}
  capped_ask: {{model: cheap, fallback: {{models: [echo-d], mode: ask}}}}
jobs:
  capped: {{role: capped_ask, budgets: [{{window: day, tokens: 1}}]}}
"""


async def test_the_consent_probe_never_contacts_a_server_the_run_may_not_use(
    tmp_path: Path, cloud: CountingEndpoint
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PROBE.format(cloud=cloud.port))
    server = build_server(build_engine(load_policy(path), env={"CLOUD_KEY": "k"}))
    asked: list[str] = []

    async def never(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="decline")

    async with Client(server, mode="legacy", elicitation_callback=never) as client:
        premium = await call(client, "run_role", role="premium_ask", prompt="x")
        capped = await call(client, "run_role", role="capped_ask", prompt="x", job="capped")
    assert text(premium).startswith("NOT_ALLOWLISTED: kimi is premium")
    assert text(capped).startswith("BUDGET_EXHAUSTED: ")
    assert (cloud.connections, asked) == (0, [])


async def test_route_never_picks_a_model_no_role_runs(three_role: Policy) -> None:
    server = build_server(build_engine(three_role, env={}))
    async with Client(server, mode="legacy") as client:
        for task in ("why is the sky blue", "summarize this", "refactor the parser", "hi"):
            routed = (await call(client, "route_task", task=task)).structured_content
            if routed["outcome"] == "route":
                assert routed["role"] is not None, (task, routed["model"])
