"""The example plugin's hooks, found through its ``rolegate`` entry point."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from rolegate.errors import RequestError
from rolegate.evals.suites import load_suite, validate_suite
from rolegate.plugins.base import CheckContext
from rolegate.plugins.kinds import default_prompts, resolve_role_kinds
from rolegate.plugins.manager import build_registry
from rolegate.plugins.sinks import AuditSinks
from rolegate.policy import load_policy
from tests.conftest import ROOT

ECHO_POLICY = ROOT / "examples" / "plugins" / "rolegate-echo" / "echo-policy.yaml"


def test_the_entry_point_is_declared() -> None:
    (ep,) = [e for e in metadata.entry_points(group="rolegate") if e.name == "echo"]
    assert ep.value == "rolegate_echo.plugin"


def test_every_hook_is_found_through_the_entry_point() -> None:
    registry = build_registry()
    echo = next(p for p in registry.plugins if p.name == "echo")
    assert echo.provides == [
        "provider:echo",
        "role:summarizer",
        "audit-sink",
        "checker:echo-length",
    ]
    assert registry.providers["echo"].name == "echo"
    summarizer = registry.roles["summarizer"]
    assert (summarizer.authority, bool(summarizer.system_prompt)) == ("owner", True)
    assert [s.plugin for s in registry.audit_sinks] == ["echo"]


async def test_the_echo_checker_is_found_through_the_entry_point() -> None:
    registry = build_registry()
    checker = registry.checkers["echo-length"]
    assert type(checker).__module__ == "rolegate_echo.plugin"
    assert "echo-length" not in build_registry(block=["echo"]).checkers
    context = CheckContext("case-1", "echo-1", {})
    passed = await checker.check("  twelve chars  ", {"min_chars": 12}, context)
    assert (passed.passed, passed.score) == (True, 1.0)
    short = await checker.check("secret", {"min_chars": 12}, context)
    assert (short.passed, short.reason) == (False, "6 characters; at least 12 needed")


def test_a_suite_using_the_echo_checker_is_validated_by_it(tmp_path: Path) -> None:
    registry = build_registry()
    suite = tmp_path / "suite.yaml"
    head = "name: echo\ncases:\n"
    suite.write_text(head + "  - {id: ok, prompt: hi, check: {type: echo-length, min_chars: 2}}")
    validate_suite(load_suite(suite), registry.checkers, {})
    suite.write_text(head + "  - {id: no, prompt: hi, check: {type: echo-length, min_chars: 0}}")
    with pytest.raises(RequestError, match="needs 'min_chars', a whole number, 1 or more"):
        validate_suite(load_suite(suite), registry.checkers, {})


def test_the_echo_policy_selects_the_plugins_kind() -> None:
    registry = build_registry()
    policy = load_policy(ECHO_POLICY)
    assert policy.doc.roles["parrot"].kind == "summarizer"
    resolved = resolve_role_kinds(policy.doc.roles, registry.roles)
    assert resolved["parrot"] is registry.roles["summarizer"]
    assert default_prompts(resolved) == {"parrot": registry.roles["summarizer"].system_prompt}


def test_the_echo_sink_receives_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "audit.jsonl"
    monkeypatch.setenv("ROLEGATE_ECHO_AUDIT_FILE", str(out))
    sinks = AuditSinks.from_registry(build_registry())
    records: list[dict[str, object]] = [
        {"kind": "decision", "decision_id": "dec_1", "code": "ROUTED"},
        {"kind": "call", "request_id": "req_1", "code": "OK", "output_tokens": 2},
    ]
    for record in records:
        sinks.deliver(record)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"kind": "decision", "code": "ROUTED"}, {"kind": "call", "code": "OK"}]
    assert sinks.failures() == {"echo:AuditFile": 0}


def test_the_echo_sink_does_nothing_without_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROLEGATE_ECHO_AUDIT_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    AuditSinks.from_registry(build_registry()).deliver({"kind": "call", "code": "OK"})
    assert list(tmp_path.iterdir()) == []


async def test_every_audit_record_of_a_served_run_reaches_the_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the MCP server: decisions, calls and escalations land in the ledger and, in
    the same order, in the plugin's sink (ids and codes; never text)."""
    from mcp import Client

    from rolegate.engine.bootstrap import build_engine
    from rolegate.ledger import open_ledger
    from rolegate.server.app import build_server

    out = tmp_path / "audit.jsonl"
    monkeypatch.setenv("ROLEGATE_ECHO_AUDIT_FILE", str(out))
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    server = build_server(build_engine(load_policy(ECHO_POLICY), env={}, ledger=ledger))
    async with Client(server, mode="legacy") as client:
        routed = await client.call_tool("route_task", {"task": "summarize this"})
        ran = await client.call_tool("run_role", {"role": "parrot", "prompt": "secret words"})
        assert not routed.is_error
        assert not ran.is_error
    sunk = [json.loads(line) for line in out.read_text().splitlines()]
    stored = list(reversed(ledger.recent_audit(10)))
    ledger.close()
    assert [r["kind"] for r in sunk] == [r["kind"] for r in stored] == ["decision", "call"]
    assert [r["code"] for r in sunk] == [r["code"] for r in stored]
    assert "secret words" not in out.read_text()


async def test_the_server_lifespan_closes_clients_and_an_owned_ledger(tmp_path: Path) -> None:
    from mcp import Client

    from rolegate.engine.bootstrap import build_engine
    from rolegate.errors import LedgerError
    from rolegate.ledger import open_ledger
    from rolegate.server.app import build_server

    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    engine = build_engine(load_policy(ECHO_POLICY), env={}, ledger=ledger)
    assert engine.pool is not None
    async with Client(build_server(engine, close_ledger=True), mode="legacy") as client:
        ran = await client.call_tool("run_role", {"role": "parrot", "prompt": "hi"})
        assert not ran.is_error
        assert engine.pool.open_providers == ["echo"]
    assert engine.pool.open_providers == []
    with pytest.raises(LedgerError, match="was closed"):
        ledger.recent_audit(1)
