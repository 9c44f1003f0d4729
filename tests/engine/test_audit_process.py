"""Every durable audit record names the server process that wrote it, so `rolegate audit
--process PID` shows one MCP window's trail (over stdio, one process per window)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rolegate.engine.reports import select_audit
from rolegate.engine.routing import route_task
from rolegate.engine.store import PROCESS, Store
from rolegate.ledger import SqliteLedger
from rolegate.policy import RouteRequest, load_policy_text

POLICY = """
version: 1
name: audit-process
providers:
  local: {type: openai, base_url: "http://127.0.0.1:9/v1", locality: local}
models:
  m: {provider: local, name: m, context_window: 4096, reserve_tokens: 512}
roles:
  r: {model: m}
"""


def test_the_process_is_this_one_and_its_pid_comes_first() -> None:
    pid, host, tag = PROCESS.split(":")
    assert pid == str(os.getpid())
    assert host
    assert len(tag) == 12


async def test_decisions_and_audit_records_carry_the_process(tmp_path: Path) -> None:
    policy = load_policy_text(POLICY, "yaml", "p.yaml")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    try:
        store = Store(policy, ledger=ledger)
        await route_task(policy, store, RouteRequest(task="hello there"))
        await store.audit({"kind": "stage", "code": "OK"})
        records = ledger.recent_audit(10)
    finally:
        ledger.close()
    assert [r["kind"] for r in records] == ["stage", "decision"]
    assert {r["process"] for r in records} == {PROCESS}
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    mine = _audit(url, "--process", str(os.getpid()))
    assert [r["kind"] for r in mine] == ["stage", "decision"]
    assert _audit(url, "--process", PROCESS) == mine
    assert _audit(url, "--process", str(os.getpid() + 1_000_000)) == []


def _audit(url: str, *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "rolegate", "audit", "--ledger", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_pid_matches_only_its_own_process() -> None:
    rows = [
        (1, {"kind": "call", "process": "123:h:aaaaaaaaaaaa"}),
        (2, {"kind": "call", "process": "1234:h:bbbbbbbbbbbb"}),
        (3, {"kind": "call"}),  # written before records named their process
    ]
    assert select_audit(rows, process="123", limit=10) == [rows[0]]
    assert select_audit(rows, process="1234:h:bbbbbbbbbbbb", limit=10) == [rows[1]]
    assert len(select_audit(rows, limit=10)) == 3


async def test_each_mcp_session_is_named_in_its_records(tmp_path: Path) -> None:
    from mcp import Client

    from rolegate.engine.bootstrap import build_engine
    from rolegate.server.app import build_server

    policy = load_policy_text(POLICY, "yaml", "p.yaml")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    try:
        server = build_server(build_engine(policy, ledger=ledger))
        for _ in range(2):  # two clients, one after the other: two sessions
            async with Client(server, mode="legacy") as client:
                for task in ("first task", "second task"):
                    result = await client.call_tool("route_task", {"task": task})
                    assert not result.is_error, result.content
        records = list(reversed(ledger.recent_audit(10)))
    finally:
        ledger.close()
    sessions = [r.get("session") for r in records]
    assert len(sessions) == 4
    assert sessions[0] == sessions[1]
    assert sessions[2] == sessions[3]
    assert sessions[0] != sessions[2]
    assert all(isinstance(s, str) and s.startswith("conn_") for s in sessions)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    picked = _audit(url, "--session", str(sessions[2]))
    assert [r["session"] for r in picked] == [sessions[2], sessions[2]]


async def test_the_stateless_era_names_no_session(tmp_path: Path) -> None:
    from mcp import Client

    from rolegate.engine.bootstrap import build_engine
    from rolegate.server.app import build_server

    policy = load_policy_text(POLICY, "yaml", "p.yaml")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    try:
        server = build_server(build_engine(policy, ledger=ledger))
        async with Client(server, mode="2026-07-28") as client:
            for task in ("first task", "second task"):
                result = await client.call_tool("route_task", {"task": task})
                assert not result.is_error, result.content
        records = ledger.recent_audit(10)
    finally:
        ledger.close()
    assert len(records) == 2
    assert all("session" not in r for r in records)
    assert all(r["process"] == PROCESS for r in records)


def test_a_streamable_http_session_is_named_by_its_header() -> None:
    from types import SimpleNamespace
    from typing import Any

    from rolegate.server.boundary import session_of

    def context(headers: dict[str, str] | None, session: object) -> Any:
        request = SimpleNamespace(headers=headers) if headers is not None else None
        return SimpleNamespace(
            request_context=SimpleNamespace(
                request=request, session=session, protocol_version="2025-11-25"
            )
        )

    class Connection:
        pass

    conn = Connection()
    assert session_of(context({"mcp-session-id": "abc123"}, conn)) == "abc123"
    first = session_of(context(None, conn))
    assert first is not None
    assert first.startswith("conn_")
    assert session_of(context({}, conn)) == first  # the same connection, the same label
    assert session_of(context(None, Connection())) != first
    assert session_of(None) is None
