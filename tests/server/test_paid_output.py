"""Output that was paid for is always returned, and its spend is never lost: not when the
output breaks the contract checker, not when the ledger fails after the provider call."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.requests import BudgetQuery
from rolegate.engine.spool import Spool
from rolegate.ledger import SqliteLedger
from rolegate.plugins.base import (
    ChatRequest,
    ChatResult,
    Message,
    OnDelta,
    ProviderClient,
    ProviderType,
    TokenCount,
)
from rolegate.plugins.hookspecs import hookimpl
from rolegate.plugins.manager import build_registry
from rolegate.policy import load_policy
from rolegate.policy.schema import Provider
from rolegate.server.app import build_server

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: paid-output-test
providers:
  echo: {type: echo, base_url: "echo://", locality: local}
  saboteur: {type: saboteur, base_url: "saboteur://", locality: local}
models:
  echo-1: {provider: echo, name: echo-1, context_window: 65536, reserve_tokens: 512,
           price: {input_per_mtok: "1", output_per_mtok: "1"}}
  sab-1: {provider: saboteur, name: sab-1, context_window: 4096, reserve_tokens: 512,
          price: {input_per_mtok: "1", output_per_mtok: "1"}}
roles:
  planner: {model: echo-1, output_contract: plan}
  fragile: {model: sab-1}
  paid: {model: echo-1}
contracts:
  plan: {required: [plan]}
pipeline:
  stages:
    - {name: plan, owner: planner, max_retries: 1}
jobs:
  tight: {role: planner, budgets: [{window: day, tokens: 400}]}
budgets:
  - {scope: global, window: day, usd: "1.00"}
"""


class Saboteur:
    """A provider whose call succeeds while the ledger file is taken away under it."""

    def __init__(self, during_call: Callable[[], None]) -> None:
        self.during_call = during_call

    async def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult:
        self.during_call()
        return ChatResult(text="paid for", input_tokens=7, output_tokens=2, finish_reason="stop")

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> TokenCount | None:
        return None

    async def list_models(self) -> list[str]:
        return ["sab-1"]

    async def aclose(self) -> None:
        return None


class SaboteurType:
    name = "saboteur"

    def __init__(self, during_call: Callable[[], None]) -> None:
        self.during_call = during_call

    def create(self, config: Provider, *, api_key: str | None, transport: Any = None) -> Any:
        client: ProviderClient = Saboteur(self.during_call)
        return client


class SaboteurPlugin:
    def __init__(self, during_call: Callable[[], None]) -> None:
        self.during_call = during_call

    @hookimpl
    def register_providers(self, register: Callable[[ProviderType], None]) -> None:
        register(SaboteurType(self.during_call))


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[SqliteLedger]:
    opened = SqliteLedger(ledger_path)
    yield opened
    opened.close()


def _server(tmp_path: Path, ledger: SqliteLedger, during_call: Callable[[], None]) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    registry = build_registry(extra_plugins=[SaboteurPlugin(during_call)])
    service = build_engine(load_policy(path), env={}, ledger=ledger, registry=registry)
    return build_server(service), service


@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("[" * 3000, "nested too deeply"),
        ('{"plan": ' + "1" * 5000 + "}", "not usable JSON"),
        ('{"plan": ' + "[" * 400 + "]" * 400 + "}", "nested deeper than 64 levels"),
    ],
)
async def test_output_that_breaks_the_checker_is_returned_with_the_violation(
    tmp_path: Path, ledger: SqliteLedger, output: str, error: str
) -> None:
    server, _ = _server(tmp_path, ledger, lambda: None)
    async with Client(server, mode="legacy") as client:
        result = await client.call_tool("run_role", {"role": "planner", "prompt": output})
    assert not result.is_error, result.content
    data = result.structured_content
    assert data["output"] == output
    assert data["contract"]["valid"] is False
    assert error in data["contract"]["errors"][0]
    assert data["cost_micro"] > 0  # charged, and the output that was paid for is here


async def test_spend_the_ledger_cannot_take_is_spooled_and_committed_later(
    tmp_path: Path, ledger: SqliteLedger, ledger_path: Path
) -> None:
    away = ledger_path.with_name("moved-away.sqlite3")

    def take_the_ledger_away() -> None:
        if ledger_path.exists():
            os.rename(ledger_path, away)

    server, service = _server(tmp_path, ledger, take_the_ledger_away)
    async with Client(server, mode="legacy") as client:
        broken = await client.call_tool("run_role", {"role": "fragile", "prompt": "hello"})
        assert not broken.is_error, broken.content
        data = broken.structured_content
        assert data["output"] == "paid for"
        assert data["warnings"][0].startswith("LEDGER_SPOOLED: ")
        spooled = service.store.spool.pending()
        assert [p.stem for p in spooled] == [data["request_id"]]
        # While the ledger is gone, admission fails closed: nothing new is admitted.
        closed = await client.call_tool("run_role", {"role": "paid", "prompt": "x"})
        assert closed.content[0].text.startswith("BUDGET_UNAVAILABLE: ")
        os.rename(away, ledger_path)  # the ledger is back
        after = await client.call_tool("run_role", {"role": "paid", "prompt": "one two"})
        assert not after.is_error, after.content
    assert service.store.spool.pending() == []
    calls = [r for r in ledger.recent_audit(20) if r["kind"] == "call" and r.get("spooled")]
    assert [r["request_id"] for r in calls] == [data["request_id"]]
    assert calls[0]["cost_micro"] == data["cost_micro"] == 9
    scopes = (await service.check_budget(BudgetQuery())).scopes
    spent = {s.id: s.spent_usd_micro for s in scopes}["global:*:day"]
    assert spent == data["cost_micro"] + after.structured_content["cost_micro"]


async def test_a_validation_retry_that_fails_keeps_the_output_already_paid_for(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    server, _ = _server(tmp_path, ledger, lambda: None)
    words = "word " * 100  # ~160 input tokens + 100 output: one call fits 400, two do not
    async with Client(server, mode="legacy") as client:
        # The output breaks the contract; the retry cannot fit the job's 400-token budget.
        result = await client.call_tool(
            "run_role",
            {"role": "planner", "job": "tight", "prompt": words, "max_output_tokens": 100,
             "task_id": "t1", "stage": "plan"},
        )  # fmt: skip
    assert not result.is_error, result.content
    data = result.structured_content
    assert data["output"] == words.strip()
    assert data["attempts"] == 1
    assert data["warnings"][0].startswith("BUDGET_EXHAUSTED: validation retry 2 failed")


def test_a_spooled_charge_the_ledger_cannot_take_is_set_aside(
    tmp_path: Path, ledger: SqliteLedger
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put("req_never_reserved", cost_micro=5, tokens=5, at=datetime.now(UTC), audit={})
    assert spool.drain(ledger) == 0
    assert spool.pending() == []  # admission is not wedged by it...
    (aside,) = (tmp_path / "spool" / "quarantine").iterdir()  # ...and a person can find it
    assert aside.name == "req_never_reserved.json"


def test_a_repeated_commit_writes_no_second_audit_record(ledger: SqliteLedger) -> None:
    now = datetime.now(UTC)
    ledger.reserve(request_id="req_1", owner="o", lines=[], cost_micro=1, tokens=1, now=now,
                   lease_s=60)  # fmt: skip
    for _ in range(3):
        ledger.commit("req_1", cost_micro=1, tokens=1, now=now, audit={"kind": "call"})
    assert [r["kind"] for r in ledger.recent_audit(10)] == ["call"]
