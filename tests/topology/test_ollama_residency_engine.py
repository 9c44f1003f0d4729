"""Residency of Ollama models, driven through the MCP tools: a WARM model loaded on demand
(once), the least recently used WARM model unloaded with ``keep_alive: 0`` when memory would
be exceeded and the HOT one never, HOT loaded to stay (``keep_alive: -1``), COLD refused
until loaded by hand, a slow load refused with LOAD_TIMEOUT, an unreachable Ollama with
PROVIDER_UNAVAILABLE, and two server processes on one Ollama agreeing on what is loaded.

The Ollama is tests/support/ollama_resident.py (it keeps models loaded as Ollama's API docs
say, and records every request); the llama.cpp-server version is test_residency.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.core import PolicyEngine
from rolegate.errors import RefusedError
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from rolegate.topology.residency import LoadReport, Residency
from tests.support.ollama_resident import ResidentOllama, resident_ollama
from tests.support.servers import free_port

POLICY = """
version: 1
name: ollama-residency-test
providers:
  local: {{type: ollama, base_url: "{url}", locality: local}}
models:
  router: {{provider: local, name: "router:1b", tier: hot, memory_gb: 1, {common}}}
  coder: {{provider: local, name: "coder:7b", tier: warm, memory_gb: 2, {common}}}
  writer: {{provider: local, name: "writer:7b", tier: warm, memory_gb: 2, {common}}}
  notes: {{provider: local, name: "notes:1b", tier: warm, memory_gb: 1, {common}}}
  archive: {{provider: local, name: "archive:3b", tier: cold, memory_gb: 1, {common}}}
roles:
  router: {{model: router}}
  coder: {{model: coder}}
  writer: {{model: writer}}
  notes: {{model: notes}}
  archive: {{model: archive}}
intents:
  writing: {{match: {{keywords: [essay]}}, role: writer}}
residency: {{memory_gb: 4, load_timeout_s: {timeout}}}
"""
COMMON = "context_window: 2048, reserve_tokens: 256, streaming: {internal: true}"
GB = 1_000_000_000
NAMES = {
    "router": "router:1b",
    "coder": "coder:7b",
    "writer": "writer:7b",
    "notes": "notes:1b",
    "archive": "archive:3b",
}
SIZES = {name: int(name.endswith(":7b")) * GB + GB for name in NAMES.values()}
NO_LOAD = {"loaded": False, "evicted": [], "load_ms": None}


def write_policy(tmp_path: Path, url: str, *, timeout: float = 30, stem: str = "policy") -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(POLICY.format(url=url, common=COMMON, timeout=timeout))
    return path


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One state directory (and so one residency file lock) for every engine of a test."""
    path = tmp_path / "state"
    monkeypatch.setenv("ROLEGATE_STATE_DIR", str(path))
    return path


@pytest.fixture
def ollama() -> Iterator[ResidentOllama]:
    with resident_ollama(SIZES) as server:
        yield server


@pytest.fixture
async def engine(
    tmp_path: Path, state_dir: Path, ollama: ResidentOllama
) -> AsyncIterator[PolicyEngine]:
    engine = build_engine(load_policy(write_policy(tmp_path, ollama.base_url)))
    try:
        yield engine
    finally:
        await engine.aclose()


def residency_of(engine: PolicyEngine) -> Residency:
    residency = engine.residency
    assert isinstance(residency, Residency)
    assert residency.active
    return residency


# -- what the Ollama server saw ------------------------------------------------------------


def generate_bodies(server: ResidentOllama, mid: str) -> list[dict[str, Any]]:
    """The /api/generate requests for model ``mid`` (rolegate's loads and unloads)."""
    return [b for b in server.bodies("/api/generate") if b.get("model") == NAMES[mid]]


def loads_sent(server: ResidentOllama, mid: str) -> list[dict[str, Any]]:
    """Empty generate requests that load ``mid`` (any keep_alive but 0)."""
    return [
        b for b in generate_bodies(server, mid) if not b.get("prompt") and b.get("keep_alive") != 0
    ]


def unloads_sent(server: ResidentOllama, mid: str) -> list[dict[str, Any]]:
    return [b for b in generate_bodies(server, mid) if b.get("keep_alive") == 0]


def chats_sent(server: ResidentOllama, mid: str) -> list[dict[str, Any]]:
    return [b for b in server.bodies("/api/chat") if b.get("model") == NAMES[mid]]


def expires_in(server: ResidentOllama, mid: str) -> float:
    """Seconds until ``mid`` unloads by itself, as the server holds it (inf: never)."""
    return server.loaded[NAMES[mid]].expires - time.time()


# -- the MCP tools ---------------------------------------------------------------------------


async def run(client: Client, role: str) -> Any:
    return await client.call_tool(
        "run_role", {"role": role, "prompt": "Say hi.", "max_output_tokens": 4}
    )


async def route(client: Client, role: str | None = None, task: str = "Say hi.") -> Any:
    args: dict[str, Any] = {"task": task, "max_output_tokens": 4}
    if role is not None:
        args["role"] = role
    decided = await client.call_tool("route_task", args)
    assert not decided.is_error, decided.content
    return decided.structured_content


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = result.structured_content
    return data


def refusal(result: Any) -> str:
    assert result.is_error
    text: str = result.content[0].text
    return text


# -- the tests ---------------------------------------------------------------------------------


async def test_a_warm_model_is_loaded_on_demand_once(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    async with Client(build_server(engine)) as client:
        first = ok(await run(client, "coder"))
        assert first["model"] == "coder"
        assert first["provider_model"] == "coder:7b"
        assert first["output"]
        load = first["load"]
        assert load["loaded"] is True
        assert load["evicted"] == []
        assert load["load_ms"] is not None
        # The lease loaded it with an empty generate request (WARM, no keep_alive: the
        # server's default), before the chat.
        assert loads_sent(ollama, "coder") == [{"model": "coder:7b", "stream": False}]
        assert len(chats_sent(ollama, "coder")) == 1
        assert ollama.loads == 1
        assert "coder:7b" in ollama.loaded

        again = ok(await run(client, "coder"))
        assert again["load"] == NO_LOAD
        assert len(loads_sent(ollama, "coder")) == 1  # no second load request
        assert len(chats_sent(ollama, "coder")) == 2
        assert ollama.loads == 1
        assert ollama.unloads == 0


async def test_route_task_says_a_load_is_needed_until_the_model_is_loaded(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    essay = "Write an essay about tides."
    async with Client(build_server(engine)) as client:
        before = await route(client, task=essay)
        assert before["outcome"] == "route"
        assert before["role"] == "writer"
        assert before["model"] == "writer"
        assert before["residency"] == {
            "tier": "warm", "resident": False, "load_needed": True, "memory_gb": 2.0,
        }  # fmt: skip
        assert ollama.loads == 0  # routing only looks (/api/ps), it never loads
        assert ollama.bodies("/api/generate") == []
        assert ollama.bodies("/api/ps")

        ok(await run(client, "writer"))
        after = await route(client, task=essay)
        assert after["model"] == "writer"
        assert after["residency"] == {
            "tier": "warm", "resident": True, "load_needed": False, "memory_gb": 2.0,
        }  # fmt: skip
        # A fresh look at /api/ps agrees with what the lease recorded.
        assert "writer" in await residency_of(engine).refresh()
        again = await route(client, task=essay)
        assert again["residency"]["resident"] is True


async def test_the_least_recently_used_warm_model_is_unloaded_never_the_hot_one(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    async with Client(build_server(engine)) as client:
        # router (HOT, 1 GB) is used first, so it is the least recently used of all.
        hot = ok(await run(client, "router"))
        assert hot["load"]["loaded"] is True
        coder = ok(await run(client, "coder"))  # 1 + 2 <= 4 GB: nothing to unload
        assert coder["load"]["loaded"] is True
        assert coder["load"]["evicted"] == []
        assert ollama.unloads == 0

        # 1 + 2 + 2 > 4 GB: coder goes, router stays although it is older.
        writer = ok(await run(client, "writer"))
        assert writer["load"]["loaded"] is True
        assert writer["load"]["evicted"] == ["coder"]
        assert unloads_sent(ollama, "coder") == [
            {"model": "coder:7b", "stream": False, "keep_alive": 0}
        ]
        assert unloads_sent(ollama, "router") == []
        assert ollama.unloads == 1
        assert set(ollama.loaded) == {"router:1b", "writer:7b"}

        # The HOT model is still loaded and still called without a load.
        assert ok(await run(client, "router"))["load"] == NO_LOAD
        assert ollama.loads == 3


async def test_the_model_used_longest_ago_goes_first_not_the_one_loaded_first(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    async with Client(build_server(engine)) as client:
        ok(await run(client, "coder"))  # loaded first (2 GB)
        ok(await run(client, "notes"))  # 2 + 1 GB
        ok(await run(client, "coder"))  # ...but used last
        # 3 + 2 > 4 GB: one must go, and unloading notes (used longest ago) is enough.
        writer = ok(await run(client, "writer"))
    assert writer["load"]["evicted"] == ["notes"]
    assert unloads_sent(ollama, "notes") == [
        {"model": "notes:1b", "stream": False, "keep_alive": 0}
    ]
    assert unloads_sent(ollama, "coder") == []
    assert set(ollama.loaded) == {"coder:7b", "writer:7b"}


async def test_a_model_in_use_is_not_unloaded_and_nothing_is_unloaded_in_vain(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    residency = residency_of(engine)
    await residency.up("hot")
    async with residency.lease("coder") as held:
        assert held is not None
        assert held.loaded
        # router (HOT) + coder (in use) + writer = 5 > 4 GB, and neither may go.
        with pytest.raises(RefusedError) as refused:
            async with residency.lease("writer"):
                pass
        assert refused.value.code == "MEMORY_EXCEEDED"
        assert "coder" in refused.value.message
        assert ollama.unloads == 0
        assert loads_sent(ollama, "writer") == []
    # The call ended: now coder may go.
    async with residency.lease("writer") as second:
        assert second is not None
        assert second.evicted == ("coder",)
    assert set(ollama.loaded) == {"router:1b", "writer:7b"}


async def test_up_loads_the_hot_model_to_stay_and_calls_keep_it(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    residency = residency_of(engine)
    started = await residency.up("hot")
    assert [mid for mid, _ in started] == ["router"]
    report = started[0][1]
    assert isinstance(report, LoadReport), report
    assert report.loaded
    # keep_alive -1 (forever) as Ollama reads it: a JSON number of seconds; a string goes
    # through Go's time.ParseDuration, which refuses "-1" (no unit).
    assert loads_sent(ollama, "router") == [
        {"model": "router:1b", "stream": False, "keep_alive": -1}
    ]
    assert expires_in(ollama, "router") == float("inf")
    assert loads_sent(ollama, "coder") == []  # `up hot` loads HOT models only

    async with Client(build_server(engine)) as client:
        call = ok(await run(client, "router"))
    assert call["load"] == NO_LOAD
    assert ollama.loads == 1
    # Every request sets how long Ollama keeps the model afterwards (absent: its 5m
    # default), so a call to a HOT model must ask for forever again.
    assert chats_sent(ollama, "router")[0]["keep_alive"] == -1
    assert expires_in(ollama, "router") == float("inf")
    assert ollama.unloads == 0


async def test_a_cold_model_is_refused_until_loaded_by_hand(
    engine: PolicyEngine, ollama: ResidentOllama
) -> None:
    async with Client(build_server(engine)) as client:
        decided = await route(client, role="archive")
        assert decided["outcome"] == "refuse"
        assert decided["code"] == "MODEL_COLD"
        text = refusal(await run(client, "archive"))
        assert text.startswith("MODEL_COLD")
        assert "rolegate up --tier cold" in text
        assert generate_bodies(ollama, "archive") == []
        assert chats_sent(ollama, "archive") == []
        assert ollama.loads == 0

        report = await residency_of(engine).load("archive")
        assert report.loaded
        assert report.evicted == ()
        assert loads_sent(ollama, "archive") == [{"model": "archive:3b", "stream": False}]
        assert "archive:3b" in ollama.loaded

        decided = await route(client, role="archive")
        assert decided["outcome"] == "route"
        assert decided["residency"]["resident"] is True
        served = ok(await run(client, "archive"))
        assert served["model"] == "archive"
        assert served["load"] == NO_LOAD
        assert ollama.loads == 1


async def test_a_load_slower_than_the_limit_is_refused_with_load_timeout(
    tmp_path: Path, state_dir: Path
) -> None:
    with resident_ollama(SIZES, load_delay_s=2.0) as slow:
        engine = build_engine(load_policy(write_policy(tmp_path, slow.base_url, timeout=0.5)))
        try:
            async with Client(build_server(engine)) as client:
                started = time.monotonic()
                with anyio.fail_after(10):
                    text = refusal(await run(client, "coder"))
                elapsed = time.monotonic() - started
            assert text.startswith("LOAD_TIMEOUT")
            assert "0.5 s" in text
            assert elapsed < 1.9  # refused at the limit, not after the load
            assert len(loads_sent(slow, "coder")) == 1
            assert chats_sent(slow, "coder") == []  # the call itself was never made
        finally:
            await engine.aclose()


async def test_an_unreachable_ollama_fails_fast_with_provider_unavailable(
    tmp_path: Path, state_dir: Path
) -> None:
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    engine = build_engine(load_policy(write_policy(tmp_path, gone)))
    try:
        async with Client(build_server(engine)) as client:
            with anyio.fail_after(20):
                decided = await route(client, role="coder")
                text = refusal(await run(client, "coder"))
        # Nothing can be seen loaded: routing still answers, and says a load is needed.
        assert decided["outcome"] == "route"
        assert decided["residency"]["load_needed"] is True
        assert text.startswith("PROVIDER_UNAVAILABLE")
        assert gone in text
    finally:
        await engine.aclose()


async def test_two_server_processes_on_one_ollama_share_what_is_loaded(
    tmp_path: Path, state_dir: Path, ollama: ResidentOllama
) -> None:
    one = build_engine(load_policy(write_policy(tmp_path, ollama.base_url, stem="one")))
    two = build_engine(load_policy(write_policy(tmp_path, ollama.base_url, stem="two")))
    try:
        async with Client(build_server(one)) as first, Client(build_server(two)) as second:
            before = await route(second, role="coder")
            assert before["residency"]["resident"] is False

            assert ok(await run(first, "coder"))["load"]["loaded"] is True
            await residency_of(two).refresh()  # or wait out its snapshot's max_age_s
            seen = await route(second, role="coder")
            assert seen["residency"] == {
                "tier": "warm", "resident": True, "load_needed": False, "memory_gb": 2.0,
            }  # fmt: skip
            # The second process calls it without loading it again.
            assert ok(await run(second, "coder"))["load"] == NO_LOAD
            assert len(loads_sent(ollama, "coder")) == 1
            assert ollama.loads == 1

            # What the first loads, the second sees once its snapshot is older than max_age_s.
            assert ok(await run(first, "router"))["load"]["loaded"] is True
            await anyio.sleep(residency_of(two).max_age_s + 0.2)
            hot = await route(second, role="router")
            assert hot["residency"]["resident"] is True

            # And it counts the memory the first one's models take: 1 + 2 + 2 > 4 GB.
            writer = ok(await run(second, "writer"))
            assert writer["load"]["loaded"] is True
            assert writer["load"]["evicted"] == ["coder"]
            assert len(unloads_sent(ollama, "coder")) == 1
            assert set(ollama.loaded) == {"router:1b", "writer:7b"}
    finally:
        await one.aclose()
        await two.aclose()
