"""run_role and check_budget over a real SQLite ledger (the echo plugin stands in for a model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.ledger import Ledger, open_ledger
from rolegate.policy import load_policy
from rolegate.server.app import build_server

pytestmark = pytest.mark.anyio

# echo-paid costs 1 USD per Mtok either way: one micro-dollar per token.
POLICY = """
version: 1
name: budget-run-test
providers:
  echo: {type: echo, base_url: "echo://", locality: local}
  # Nothing listens on the discard port: every call fails to connect.
  dead: {type: openai, base_url: "http://127.0.0.1:9/v1", locality: local, max_retries: 0,
         connect_timeout_s: 1}
models:
  echo-paid: {provider: echo, name: echo-paid, context_window: 4096, reserve_tokens: 512,
              price: {input_per_mtok: "1", output_per_mtok: "1"}}
  dead-1: {provider: dead, name: dead-1, context_window: 4096, reserve_tokens: 512}
roles:
  paid: {model: echo-paid}
  flaky: {model: dead-1, fallback: {models: [echo-paid], mode: auto}}
jobs:
  nightly: {role: paid, budgets: [{window: day, usd: "0.000200"}]}
budgets:
  - {scope: global, window: day, tokens: 100000}
"""


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = open_ledger(f"sqlite://{tmp_path / 'ledger.sqlite3'}")
    yield opened
    opened.close()


@pytest.fixture
def server(tmp_path: Path, ledger: Ledger) -> MCPServer:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return build_server(build_engine(load_policy(path), env={}, ledger=ledger))


async def run(client: Client, **args: Any) -> Any:
    return await client.call_tool("run_role", args)


async def test_spend_is_committed_and_over_budget_is_refused_before_the_call(
    server: MCPServer, ledger: Ledger
) -> None:
    async with Client(server, mode="legacy") as client:
        # Worst case: ~40 input + 100 output = ~140 micro-dollars of a 200 cap: admitted.
        first = await run(
            client, role="paid", job="nightly", prompt="one two three", max_output_tokens=100
        )
        budget = await client.call_tool("check_budget", {"job": "nightly"})
        second = await run(
            client, role="paid", job="nightly", prompt="four five six", max_output_tokens=190
        )
    assert not first.is_error, first.content
    cost = first.structured_content["cost_micro"]
    assert cost == 3 + 3  # echo: 3 input words, 3 output words, 1 micro-dollar each
    scopes = {s["id"]: s for s in budget.structured_content["scopes"]}
    assert scopes["job:nightly:day"]["spent_usd_micro"] == cost
    assert scopes["job:nightly:day"]["reserved_usd_micro"] == 0
    assert scopes["global:*:day"]["spent_tokens"] == 6
    assert budget.structured_content["ledger"].startswith("sqlite:///")
    # 194 already left, the worst case of the second call is higher: refused, naming the scope.
    assert second.is_error
    text = second.content[0].text
    assert text.startswith("BUDGET_EXHAUSTED")
    assert "job:nightly:day" in text
    calls = [r for r in ledger.recent_audit(10) if r.get("kind") == "call"]
    assert len(calls) == 1  # the refused call never reached the provider


async def test_check_budget_says_whether_a_call_would_fit(server: MCPServer) -> None:
    async with Client(server, mode="legacy") as client:
        fits = await client.call_tool(
            "check_budget", {"job": "nightly", "input_tokens": 50, "output_tokens": 100}
        )
        too_big = await client.call_tool(
            "check_budget", {"job": "nightly", "input_tokens": 150, "output_tokens": 100}
        )
    assert fits.structured_content["check"]["admitted"] is True
    check = too_big.structured_content["check"]
    assert (check["admitted"], check["code"], check["refusing_scope"]) == (
        False,
        "BUDGET_EXHAUSTED",
        "job:nightly:day",
    )


async def test_unusable_ledger_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    broken_dir = tmp_path / "ledger-dir"
    ledger = open_ledger(f"sqlite://{broken_dir / 'ledger.sqlite3'}")
    server = build_server(build_engine(load_policy(path), env={}, ledger=ledger))
    # Replace the database file by a directory: every read and write now fails.
    ledger.close()
    for item in broken_dir.iterdir():
        item.unlink()
    (broken_dir / "ledger.sqlite3").mkdir()
    async with Client(server, mode="legacy") as client:
        result = await run(client, role="paid", job="nightly", prompt="hi")
        routed = await client.call_tool("route_task", {"task": "hi", "role": "paid"})
    assert result.content[0].text.startswith("BUDGET_UNAVAILABLE")
    assert routed.content[0].text.startswith("BUDGET_UNAVAILABLE")


async def test_decisions_calls_and_fallbacks_are_audited_without_text(
    server: MCPServer, ledger: Ledger
) -> None:
    async with Client(server, mode="legacy") as client:
        routed = await client.call_tool("route_task", {"task": "secret plans", "role": "paid"})
        ran = await run(client, role="flaky", prompt="secret words")
    assert not ran.is_error, ran.content
    records = list(reversed(ledger.recent_audit(10)))
    assert [r["kind"] for r in records] == ["decision", "call", "fallback", "call"]
    decision, failed, fallback, call = records
    assert decision["decision_id"] == routed.structured_content["decision_id"]
    assert (decision["outcome"], decision["model"]) == ("route", "echo-paid")
    assert (failed["model"], failed["code"], failed["cost_micro"]) == (
        "dead-1",
        "PROVIDER_UNAVAILABLE",
        0,
    )
    assert (fallback["model"], fallback["to_model"], fallback["consent"]) == (
        "dead-1",
        "echo-paid",
        "auto",
    )
    assert (call["model"], call["code"], call["fallback_from"]) == ("echo-paid", "OK", "dead-1")
    assert call["cost_micro"] == ran.structured_content["cost_micro"]
    assert "secret" not in repr(records)
