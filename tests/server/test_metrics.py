"""Prometheus metrics at /metrics: exact counts per label set from real tool calls, over the
real `rolegate serve --transport http` process (echo provider; llama.cpp for a real model),
and in-process without a ledger; the bearer token, Host checks and method; no prompt text in
the exposition; separate counts for two servers in one process; GenAI spans when a tracer
provider is set."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from rolegate import __version__
from rolegate.engine.bootstrap import build_engine
from rolegate.engine.core import PolicyEngine
from rolegate.policy import Policy, load_policy
from rolegate.server.app import build_server
from tests.server.test_transports import serving_http
from tests.support.llama import LlamaServer

pytestmark = pytest.mark.anyio

CANARY = "zebra-canary-7f3a"
"""Caller text that must never reach the exposition (prompts, tasks, names)."""

# Echo answers with the prompt's words and reports word counts as usage, so tokens and
# spend are known exactly: echo-1 costs 2 micro-USD per input token, 10 per output token.
POLICY = """
version: 1
name: metrics-echo
providers:
  echo: {type: echo, base_url: "echo://local", locality: local}
  cloud: {type: openai, base_url: "http://127.0.0.1:9/v1", locality: cloud,
          api_key_env: ROLEGATE_METRICS_TEST_NO_KEY, max_retries: 0}
models:
  echo-1: {provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512,
           capabilities: [chat, summarize], price: {input_per_mtok: "2", output_per_mtok: "10"}}
  cloud-1: {provider: cloud, name: big-1, context_window: 8192, reserve_tokens: 512,
            price: {input_per_mtok: "15", output_per_mtok: "75"}}
roles:
  parrot: {model: echo-1}
  tight: {model: echo-1}
  remote: {model: cloud-1}
budgets:
  - {scope: role, target: tight, window: day, tokens: 10}
lanes: {light: 2}
defaults: {role: parrot, max_output_tokens: 64}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def label_set(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def error_code(result: CallToolResult) -> str:
    assert result.is_error
    first = result.content[0]
    assert isinstance(first, TextContent)
    return first.text.split(":", 1)[0]


async def exercise(client: Client) -> list[dict[str, Any]]:
    """The same calls for every server under test; returns the successful runs' usage."""
    usages = []
    for prompt in (f"one two three {CANARY}", "four five"):
        run = await client.call_tool("run_role", {"role": "parrot", "prompt": prompt})
        assert not run.is_error, run.content
        usages.append(run.structured_content["usage"])
    # Refused before any call: the role's 10-token budget cannot take input + 64 output.
    tight = await client.call_tool("run_role", {"role": "tight", "prompt": CANARY})
    assert error_code(tight) == "BUDGET_EXHAUSTED"
    remote = await client.call_tool(
        "run_role", {"role": "remote", "prompt": CANARY, "local_only": True}
    )
    assert error_code(remote) == "LOCAL_ONLY_VIOLATION"
    routed = await client.call_tool("route_task", {"task": f"hello {CANARY}", "role": "parrot"})
    assert routed.structured_content["code"] == "ROUTED"
    big = await client.call_tool("route_task", {"task": CANARY, "context_tokens": 99_999})
    assert big.structured_content["code"] == "OVER_BUDGET"
    local = await client.call_tool(
        "route_task", {"task": CANARY, "role": "remote", "local_only": True}
    )
    assert local.structured_content["code"] == "LOCAL_ONLY_VIOLATION"
    bad_job = await client.call_tool("route_task", {"task": CANARY, "job": CANARY})
    assert error_code(bad_job) == "UNKNOWN_JOB"
    unknown = await client.call_tool(CANARY, {})
    assert error_code(unknown) == "UNKNOWN_TOOL"
    return usages


def check_exercised(text: str, usages: list[dict[str, Any]], policy_hash: str) -> None:
    """What ``exercise`` must have counted, exactly."""
    assert CANARY not in text
    assert "four five" not in text
    got = parse(text)
    inp = sum(u["input_tokens"] for u in usages)
    out = sum(u["output_tokens"] for u in usages)
    assert inp > 0
    assert out == 6  # the prompts' words, echoed back
    assert series(got, "rolegate_calls_total") == {
        label_set(model="echo-1", provider="echo", role="parrot", code="OK"): 2
    }
    assert series(got, "rolegate_tokens_total") == {
        label_set(model="echo-1", direction="input"): inp,
        label_set(model="echo-1", direction="output"): out,
    }
    spend = value(got, "rolegate_spend_usd_total", model="echo-1", provider="echo")
    assert spend == pytest.approx((2 * inp + 10 * out) / 1_000_000, rel=0, abs=1e-12)
    assert series(got, "rolegate_decisions_total") == {
        label_set(outcome="route", code="ROUTED"): 1,
        label_set(outcome="refuse", code="OVER_BUDGET"): 1,
        label_set(outcome="refuse", code="LOCAL_ONLY_VIOLATION"): 1,
    }
    assert series(got, "rolegate_refusals_total") == {
        label_set(tool="route_task", code="OVER_BUDGET"): 1,
        label_set(tool="route_task", code="LOCAL_ONLY_VIOLATION"): 1,
        label_set(tool="run_role", code="BUDGET_EXHAUSTED"): 1,
        label_set(tool="run_role", code="LOCAL_ONLY_VIOLATION"): 1,
    }
    assert series(got, "rolegate_tool_calls_total") == {
        label_set(tool="run_role", code="OK"): 2,
        label_set(tool="run_role", code="BUDGET_EXHAUSTED"): 1,
        label_set(tool="run_role", code="LOCAL_ONLY_VIOLATION"): 1,
        label_set(tool="route_task", code="OK"): 3,
        label_set(tool="route_task", code="UNKNOWN_JOB"): 1,
        label_set(tool="(unknown)", code="UNKNOWN_TOOL"): 1,
    }
    assert value(got, "rolegate_call_latency_seconds_count", model="echo-1") == 2
    assert value(got, "rolegate_call_latency_seconds_bucket", model="echo-1", le="+Inf") == 2
    assert value(got, "rolegate_tool_latency_seconds_count", tool="run_role") == 4
    assert value(got, "rolegate_tool_latency_seconds_count", tool="route_task") == 4
    assert value(got, "rolegate_tool_latency_seconds_count", tool="(unknown)") == 1
    assert series(got, "rolegate_in_flight") == {label_set(lane="light"): 0}
    assert series(got, "rolegate_lane_limit") == {label_set(lane="light"): 2}
    assert series(got, "rolegate_info") == {
        label_set(policy_name="metrics-echo", policy_hash=policy_hash, version=__version__): 1
    }


# -- the real server -----------------------------------------------------------


def test_metrics_need_the_token_and_pass_the_host_check(policy_file: Path) -> None:
    with serving_http("--policy", str(policy_file)) as (url, token):
        metrics = url.removesuffix("/mcp") + "/metrics"
        auth = {"Authorization": f"Bearer {token}"}
        missing = httpx2.get(metrics)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="rolegate"'
        assert httpx2.get(metrics, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx2.post(metrics, headers=auth).status_code == 405
        assert httpx2.get(metrics, headers={**auth, "Host": "evil.example:80"}).status_code == 421
        foreign = {**auth, "Origin": "http://evil.example"}
        assert httpx2.get(metrics, headers=foreign).status_code == 403
        ok = httpx2.get(metrics, headers=auth)
    assert ok.status_code == 200
    assert ok.headers["content-type"] == CONTENT_TYPE_LATEST
    got = parse(ok.text)
    # Before any tool call: the info and the lane, and no counts yet.
    assert series(got, "rolegate_info")
    assert series(got, "rolegate_in_flight") == {label_set(lane="light"): 0}
    assert not series(got, "rolegate_calls_total")


@pytest.mark.parametrize("era", ["legacy", "2026-07-28"])
async def test_real_server_counts_every_call(policy_file: Path, tmp_path: Path, era: str) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with serving_http("--policy", str(policy_file), "--ledger", ledger) as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=auth, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http), mode=era) as client,
        ):
            usages = await exercise(client)
            scraped = await http.get(url.removesuffix("/mcp") + "/metrics")
    assert scraped.status_code == 200
    check_exercised(scraped.text, usages, load_policy(policy_file).hash)


LLAMA_POLICY = """
version: 1
name: metrics-llama
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
models:
  gemma: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
           timeout_s: 120, weight: heavy,
           price: {{input_per_mtok: "1", output_per_mtok: "3"}}}}
roles:
  writer: {{model: gemma, temperature: 0}}
lanes: {{heavy: 1}}
"""


async def test_real_model_call_is_counted(llama: LlamaServer, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LLAMA_POLICY.format(v1=llama.v1))
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with serving_http("--policy", str(policy), "--ledger", ledger) as (url, token):
        auth = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=auth, timeout=120) as http,
            Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
        ):
            run = await client.call_tool(
                "run_role",
                {"role": "writer", "prompt": f"Say hello to {CANARY}.", "max_output_tokens": 8},
            )
            scraped = await http.get(url.removesuffix("/mcp") + "/metrics")
    assert not run.is_error, run.content
    data = run.structured_content
    text = scraped.text
    assert CANARY not in text
    if data["output"].strip():
        assert data["output"].strip() not in text
    got = parse(text)
    usage = data["usage"]
    assert series(got, "rolegate_calls_total") == {
        label_set(model="gemma", provider="llama", role="writer", code="OK"): 1
    }
    assert series(got, "rolegate_tokens_total") == {
        label_set(model="gemma", direction="input"): usage["input_tokens"],
        label_set(model="gemma", direction="output"): usage["output_tokens"],
    }
    cost = math.ceil(usage["input_tokens"] * 1 + usage["output_tokens"] * 3)
    assert data["cost_micro"] == cost
    spend = value(got, "rolegate_spend_usd_total", model="gemma", provider="llama")
    assert spend == pytest.approx(cost / 1_000_000, rel=0, abs=1e-12)
    assert value(got, "rolegate_call_latency_seconds_count", model="gemma") == 1
    latency = value(got, "rolegate_call_latency_seconds_sum", model="gemma")
    assert latency is not None
    assert 0 < latency <= data["latency_ms"] / 1000
    assert series(got, "rolegate_in_flight") == {label_set(lane="heavy"): 0}


# -- in process, without a ledger ------------------------------------------------


async def scrape(server: MCPServer, **headers: str) -> httpx2.Response:
    app = server.streamable_http_app(host="127.0.0.1")
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
        return await http.get("/metrics", headers=headers)


def serve_engine(policy: Policy) -> tuple[PolicyEngine, MCPServer]:
    engine = build_engine(policy, env={})
    assert engine.store.ledger is None
    return engine, build_server(engine)


async def test_counts_without_a_ledger(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    _, server = serve_engine(policy)
    async with Client(server, mode="legacy") as client:
        usages = await exercise(client)
    scraped = await scrape(server)
    assert scraped.status_code == 200
    assert scraped.headers["content-type"] == CONTENT_TYPE_LATEST
    check_exercised(scraped.text, usages, policy.hash)


async def test_two_servers_in_one_process_count_separately(policy_file: Path) -> None:
    policy = load_policy(policy_file)
    _, first = serve_engine(policy)
    _, second = serve_engine(policy)
    async with Client(first, mode="legacy") as client:
        for _ in range(3):
            assert not (
                await client.call_tool("run_role", {"role": "parrot", "prompt": "a b"})
            ).is_error
    async with Client(second, mode="legacy") as client:
        await client.call_tool("route_task", {"task": "hi", "role": "parrot"})
    one, two = parse((await scrape(first)).text), parse((await scrape(second)).text)
    parrot = label_set(model="echo-1", provider="echo", role="parrot", code="OK")
    assert series(one, "rolegate_calls_total") == {parrot: 3}
    assert series(one, "rolegate_tool_calls_total") == {label_set(tool="run_role", code="OK"): 3}
    assert not series(one, "rolegate_decisions_total")
    assert not series(two, "rolegate_calls_total")
    assert series(two, "rolegate_decisions_total") == {label_set(outcome="route", code="ROUTED"): 1}
    assert series(two, "rolegate_tool_calls_total") == {label_set(tool="route_task", code="OK"): 1}


async def test_in_flight_is_read_when_scraped(policy_file: Path) -> None:
    engine, server = serve_engine(load_policy(policy_file))
    assert engine.pool is not None
    lane = engine.pool.lane(engine.policy.models["echo-1"])
    async with lane:
        held = parse((await scrape(server)).text)
    after = parse((await scrape(server)).text)
    assert value(held, "rolegate_in_flight", lane="light") == 1
    assert value(after, "rolegate_in_flight", lane="light") == 0


async def test_metrics_check_the_host_in_process(policy_file: Path) -> None:
    _, server = serve_engine(load_policy(policy_file))
    assert (await scrape(server, host="evil.example")).status_code == 421
    assert (await scrape(server, origin="http://evil.example")).status_code == 403


# -- OpenTelemetry ----------------------------------------------------------------


class FakeSpan:
    def __init__(self, name: str, kwargs: Mapping[str, Any]) -> None:
        self.name = name
        self.kind = kwargs.get("kind")
        self.attributes = dict(kwargs.get("attributes") or {})
        self.start = kwargs.get("start_time")
        self.end_time: int | None = None
        self.status: Any = None

    def set_status(self, status: Any) -> None:
        self.status = status

    def end(self, end_time: int | None = None) -> None:
        self.end_time = end_time


class FakeTracer:
    def __init__(self) -> None:
        self.spans: list[FakeSpan] = []

    def start_span(self, name: str, **kwargs: Any) -> FakeSpan:
        span = FakeSpan(name, kwargs)
        self.spans.append(span)
        return span


class FakeProvider:
    def __init__(self) -> None:
        self.tracer = FakeTracer()

    def get_tracer(self, *args: Any, **kwargs: Any) -> FakeTracer:
        return self.tracer


@pytest.fixture
def tracer(monkeypatch: pytest.MonkeyPatch) -> FakeTracer:
    provider = FakeProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    return provider.tracer


async def test_no_spans_without_a_tracer_provider(
    policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only the API (no provider set), rolegate does not even ask for a tracer."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    asked: list[str] = []
    original = trace.ProxyTracerProvider.get_tracer

    def get_tracer(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(trace.ProxyTracerProvider, "get_tracer", get_tracer)
    _, server = serve_engine(load_policy(policy_file))
    async with Client(server, mode="legacy") as client:
        assert not (await client.call_tool("run_role", {"role": "parrot", "prompt": "x"})).is_error
    assert "rolegate" not in asked


async def test_provider_calls_become_genai_spans(policy_file: Path, tracer: FakeTracer) -> None:
    _, server = serve_engine(load_policy(policy_file))
    async with Client(server, mode="legacy") as client:
        run = await client.call_tool("run_role", {"role": "parrot", "prompt": f"hi {CANARY}"})
        await client.call_tool("route_task", {"task": "hi", "role": "parrot"})  # no span
    usage = run.structured_content["usage"]
    [span] = tracer.spans
    assert span.name == "chat echo-1"
    assert span.kind == trace.SpanKind.CLIENT
    assert span.status is None
    assert span.end_time is not None
    assert span.start is not None
    assert 0 <= span.end_time - span.start < 60 * 10**9
    attrs = span.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.system"] == "echo"
    assert attrs["gen_ai.request.model"] == "echo-1"
    assert attrs["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert attrs["rolegate.role"] == "parrot"
    assert attrs["rolegate.code"] == "OK"
    assert "error.type" not in attrs
    assert all(CANARY not in str(v) for v in attrs.values())
