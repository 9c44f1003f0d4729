"""Residency with real llama.cpp servers that rolegate starts from a policy, driven through
the MCP tools: HOT started by `up`, WARM loaded on demand, the least recently used WARM
model evicted when memory would be exceeded, COLD refused (or fallen back from, where the
role's chain says so), failed and slow loads refused with their codes, and a server rolegate
did not start never stopped."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.core import PolicyEngine
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from rolegate.topology.residency import Residency
from tests.support.llama import llama_server, require_llama
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

POLICY = """
version: 1
name: topology-test
providers:
  front-srv: {{type: openai, base_url: "http://127.0.0.1:{p[0]}/v1", locality: local}}
  a-srv: {{type: openai, base_url: "http://127.0.0.1:{p[1]}/v1", locality: local}}
  b-srv: {{type: openai, base_url: "http://127.0.0.1:{p[2]}/v1", locality: local}}
  vault-srv: {{type: openai, base_url: "http://127.0.0.1:{p[3]}/v1", locality: local}}
  broken-srv: {{type: openai, base_url: "http://127.0.0.1:{p[4]}/v1", locality: local}}
  slow-srv: {{type: openai, base_url: "http://127.0.0.1:{p[5]}/v1", locality: local}}
models:
  front: {{provider: front-srv, name: front, tier: hot, memory_gb: 1, {common},
          server: {{gguf: "{gguf}", {server}}}}}
  worker-a: {{provider: a-srv, name: worker-a, tier: warm, memory_gb: 1, {common},
             server: {{gguf: "{gguf}", {server}}}}}
  worker-b: {{provider: b-srv, name: worker-b, tier: warm, memory_gb: 1, {common},
             server: {{gguf: "{gguf}", {server}}}}}
  vault: {{provider: vault-srv, name: vault, tier: cold, memory_gb: 1, {common},
          server: {{gguf: "{gguf}", {server}}}}}
  broken: {{provider: broken-srv, name: broken, tier: warm, memory_gb: 0.5, {common},
           server: {{gguf: "not-a-model.gguf", {server}}}}}
  slow: {{provider: slow-srv, name: slow, tier: warm, memory_gb: 0.5, {common},
         server: {{gguf: "{gguf}", binary: "{sleeper}", {server}}}}}
roles:
  front: {{model: front}}
  a: {{model: worker-a}}
  b: {{model: worker-b}}
  vault: {{model: vault}}
  vault_or_a: {{model: vault, fallback: {{models: [worker-a], mode: auto, on: [MODEL_COLD]}}}}
  broken: {{model: broken}}
  slow: {{model: slow}}
residency: {{memory_gb: 2.5, load_timeout_s: {timeout}}}
"""
COMMON = "context_window: 1024, reserve_tokens: 128, streaming: {internal: true}"
SERVER = "ctx_size: 1024, threads: 1, parallel: 1"


@pytest.fixture
def topology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    require_llama()
    ports = [free_port() for _ in range(6)]
    sleeper = tmp_path / "sleepy-llama-server"
    sleeper.write_text("#!/bin/sh\nexec sleep 120\n")  # starts, never answers /health
    sleeper.chmod(sleeper.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "not-a-model.gguf").write_bytes(b"this is not a GGUF file")
    path = tmp_path / "policy.yaml"
    path.write_text(
        POLICY.format(
            p=ports,
            gguf=os.environ["ROLEGATE_GGUF"],
            common=COMMON,
            server=SERVER,
            sleeper=sleeper,
            timeout=20,
        )
    )
    monkeypatch.setenv("ROLEGATE_STATE_DIR", str(tmp_path / "state"))
    return path, ports


@pytest.fixture
async def engine(topology: tuple[Path, list[int]]) -> AsyncIterator[PolicyEngine]:
    engine = build_engine(load_policy(topology[0]))
    try:
        yield engine
    finally:
        residency = engine.residency
        assert residency is not None
        for record in residency.servers.records().values():
            await residency.servers.stop_record(record)
        await engine.aclose()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _run(client: Client, role: str, **extra: Any) -> Any:
    return await client.call_tool(
        "run_role", {"role": role, "prompt": "Say hi.", "max_output_tokens": 4, **extra}
    )


async def test_hot_up_warm_on_demand_lru_eviction_and_cold_refusal(
    engine: PolicyEngine, topology: tuple[Path, list[int]]
) -> None:
    _, ports = topology
    residency = engine.residency
    assert isinstance(residency, Residency)
    started = await residency.up("hot")
    assert [(mid, report.loaded) for mid, report in started] == [("front", True)]  # type: ignore[union-attr]
    assert _healthy(ports[0])
    assert not _healthy(ports[1])

    async with Client(build_server(engine)) as client:
        decided = await client.call_tool(
            "route_task", {"task": "hello", "role": "a", "max_output_tokens": 4}
        )
        assert decided.structured_content["residency"] == {
            "tier": "warm", "resident": False, "load_needed": True, "memory_gb": 1.0,
        }  # fmt: skip
        first = await _run(client, "a")
        assert not first.is_error, first.content
        load = first.structured_content["load"]
        assert load["loaded"] is True
        assert load["evicted"] == []
        assert load["load_ms"] > 0
        assert _healthy(ports[1])
        again = await _run(client, "a")
        assert again.structured_content["load"] == {"loaded": False, "evicted": [], "load_ms": None}

        # HOT 1 GB + worker-a 1 GB + worker-b 1 GB > 2.5 GB: worker-a (least recently used
        # non-HOT) goes; the HOT front door never does.
        front = await _run(client, "front")
        assert front.structured_content["load"]["loaded"] is False
        second = await _run(client, "b")
        assert not second.is_error, second.content
        assert second.structured_content["load"]["evicted"] == ["worker-a"]
        assert _healthy(ports[0])
        assert _healthy(ports[2])
        assert not _healthy(ports[1])

        # The decision route_task returns is the one run_role keeps to: a COLD model that
        # is not loaded is refused on both paths, before any server is started.
        cold = await client.call_tool(
            "route_task", {"task": "hello", "role": "vault", "max_output_tokens": 4}
        )
        assert cold.structured_content["code"] == "MODEL_COLD"
        stale = await _run(client, "vault", decision_id=cold.structured_content["decision_id"])
        assert stale.is_error
        assert "outcome 'refuse'" in stale.content[0].text
        refused = await _run(client, "vault")
        assert refused.is_error
        assert refused.content[0].text.startswith("MODEL_COLD")
        assert "rolegate up --tier cold" in refused.content[0].text
        assert not _healthy(ports[3])

        # Where the role's chain names MODEL_COLD, the run falls back, and says so.
        moved = await _run(client, "vault_or_a")
        assert not moved.is_error, moved.content
        data = moved.structured_content
        assert data["model"] == "worker-a"
        assert data["fallback"]["reason"] == "MODEL_COLD"
        assert data["load"]["loaded"] is True
        assert data["load"]["evicted"] == ["worker-b"]

    # A session's end closes the engine's clients; the next session reopens them.
    async with Client(build_server(engine)) as client:
        later = await _run(client, "b")
    assert not later.is_error, later.content
    assert later.structured_content["load"]["evicted"] == ["worker-a"]


async def test_failed_and_slow_loads_are_refused_with_codes(
    engine: PolicyEngine, topology: tuple[Path, list[int]]
) -> None:
    _, _ports = topology
    residency = engine.residency
    assert residency is not None
    async with Client(build_server(engine)) as client:
        broken = await _run(client, "broken")
        text = broken.content[0].text
        assert broken.is_error
        assert text.startswith("LOAD_FAILED")
        assert "broken's server" in text
        assert "invalid magic characters" in text
        assert residency.servers.records() == {}  # nothing left behind

    slow_policy = load_policy(topology[0])
    quick = slow_policy.doc.model_copy(
        update={"residency": slow_policy.doc.residency.model_copy(update={"load_timeout_s": 1.0})}  # type: ignore[union-attr]
    )
    from rolegate.policy.compiled import Policy

    fast_engine = build_engine(Policy(quick, source=str(topology[0])))
    try:
        async with Client(build_server(fast_engine)) as client:
            slow = await _run(client, "slow")
        assert slow.is_error
        assert slow.content[0].text.startswith("LOAD_TIMEOUT")
        assert "slow's server" in slow.content[0].text
        assert residency.servers.records() == {}  # the half-started server was stopped
    finally:
        await fast_engine.aclose()


async def test_memory_held_by_calls_in_flight_is_refused_not_waited_for(
    engine: PolicyEngine,
) -> None:
    residency = engine.residency
    assert residency is not None
    await residency.up("hot")
    async with residency.lease("worker-a") as first:
        assert first is not None
        assert first.loaded
        # worker-a is in use: loading worker-b would need its memory.
        from rolegate.errors import RefusedError

        with pytest.raises(RefusedError) as refused:
            async with residency.lease("worker-b"):
                pass
        assert refused.value.code == "MEMORY_EXCEEDED"
        assert "worker-a" in refused.value.message
    # Released: now worker-a may go.
    async with residency.lease("worker-b") as second:
        assert second is not None
        assert second.evicted == ("worker-a",)


async def test_a_server_rolegate_did_not_start_is_used_but_never_stopped(
    topology: tuple[Path, list[int]],
) -> None:
    path, ports = topology
    with llama_server(ctx=1024, parallel=1) as foreign:
        port = int(foreign.url.rsplit(":", 1)[1])
        text = path.read_text().replace(f":{ports[1]}/v1", f":{port}/v1")
        path.write_text(text)
        engine = build_engine(load_policy(path))
        residency = engine.residency
        assert residency is not None
        try:
            await residency.up("hot")
            assert "worker-a" in await residency.refresh()
            # worker-a is loaded but not ours: loading worker-b cannot evict it.
            from rolegate.errors import RefusedError

            with pytest.raises(RefusedError) as refused:
                async with residency.lease("worker-b"):
                    pass
            assert refused.value.code == "MEMORY_EXCEEDED"
            assert "not started by rolegate" in refused.value.message
            for record in residency.servers.records().values():
                await residency.servers.stop_record(record)
            assert foreign.process.poll() is None  # still running
            assert _healthy(port)
        finally:
            await engine.aclose()
