"""Which intent a task gets: signals, keywords (with inflections, no name tie-breaks),
the classifier's proposal, and what on_unsure says."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rolegate.errors import Code, PolicyInvalidError
from rolegate.policy import Policy, RouteRequest, route
from rolegate.policy.decision import Classification
from rolegate.policy.loader import load_policy_text

BASE: dict[str, Any] = {
    "version": 1,
    "name": "intents",
    "providers": {"local": {"type": "openai", "base_url": "http://127.0.0.1:1/v1",
                            "locality": "local"}},
    "models": {
        "small": {"provider": "local", "name": "s", "context_window": 8192,
                  "reserve_tokens": 1024, "capabilities": ["chat", "summarize", "ocr"]},
        "coder": {"provider": "local", "name": "c", "context_window": 8192,
                  "reserve_tokens": 1024, "capabilities": ["chat", "code"]},
        "long": {"provider": "local", "name": "l", "context_window": 200000,
                 "reserve_tokens": 4096, "capabilities": ["chat", "long_context"]},
    },
    "roles": {"general": {"model": "small"}, "code": {"model": "coder"},
              "reader": {"model": "long"}},
    "intents": {
        "summarize": {"match": {"keywords": ["summarize", "scan"]}, "requires": ["summarize"]},
        "code": {"match": {"keywords": ["bug"]}, "requires": ["code"], "role": "code"},
        "chat": {"requires": ["chat"]},
    },
    "defaults": {"intent": "chat", "role": "general"},
}  # fmt: skip

EXAMPLES = {
    "summarize": ["sum up this thread", "tl;dr of the meeting", "condense these notes"],
    "code": ["fix this null pointer", "write a unit test", "refactor the parser"],
    "chat": ["hello there", "what is the capital of France", "tell me a joke"],
}


def policy(**changes: Any) -> Policy:
    doc = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        doc[key] = value
    return load_policy_text(json.dumps(doc), "json", "<test>")


def with_examples(**classifier: Any) -> Policy:
    doc = json.loads(json.dumps(BASE))
    for name, texts in EXAMPLES.items():
        doc["intents"][name]["examples"] = texts
    if classifier:
        doc["classifier"] = classifier
    return load_policy_text(json.dumps(doc), "json", "<test>")


@pytest.mark.parametrize(
    "task",
    ["Please summarise this", "Summarizing the log, please", "a scanned receipt", "scans"],
)
def test_keywords_match_inflections_and_british_spellings(task: str) -> None:
    d = route(RouteRequest(task=task), policy())
    assert d.intent == "summarize"
    assert d.classification is not None
    assert d.classification.method == "keywords"


@pytest.mark.parametrize("task", ["a summary", "scant evidence", "debugger"])
def test_inflections_do_not_match_other_words(task: str) -> None:
    assert route(RouteRequest(task=task), policy()).intent == "chat"


def test_a_tie_is_never_decided_by_names() -> None:
    # "bug" (code) and "summarize" match at the same priority: no name decides.
    d = route(RouteRequest(task="summarize this bug"), policy())
    assert d.intent == "chat"  # the default intent, said in the decision
    assert d.classification is not None
    assert "matched at one priority" in (d.classification.note or "")
    assert any("default intent 'chat'" in r for r in d.reasons)


def test_the_classifier_breaks_a_keyword_tie() -> None:
    p = with_examples()
    proposal = Classification(method="embedding", label="code", confidence=0.4, confident=False)
    d = route(RouteRequest(task="summarize this bug"), p, None, proposal)
    assert d.intent == "code"
    assert d.role == "code"


def test_a_priority_still_decides() -> None:
    doc_intents = json.loads(json.dumps(BASE["intents"]))
    doc_intents["code"]["priority"] = 10
    d = route(RouteRequest(task="summarize this bug"), policy(intents=doc_intents))
    assert d.intent == "code"


def test_size_decides_before_words() -> None:
    intents = json.loads(json.dumps(BASE["intents"]))
    intents["long"] = {"min_input_tokens": 20000, "requires": ["long_context"],
                       "role": "reader"}  # fmt: skip
    d = route(RouteRequest(task="summarize it", context_tokens=50000), policy(intents=intents))
    assert d.intent == "long"
    assert d.model == "long"
    assert d.classification is not None
    assert d.classification.method == "size"
    small = route(RouteRequest(task="summarize it", context_tokens=100), policy(intents=intents))
    assert small.intent == "summarize"


def test_a_confident_proposal_decides_when_no_keyword_does() -> None:
    p = with_examples()
    proposal = Classification(method="embedding", label="code", confidence=0.9, confident=True,
                              runner_up="chat", runner_up_confidence=0.05)  # fmt: skip
    d = route(RouteRequest(task="my program crashes"), p, None, proposal)
    assert d.intent == "code"
    assert d.model == "coder"
    assert d.classification == proposal


def test_unsure_goes_to_the_default_intent_and_says_so() -> None:
    p = with_examples(threshold=0.8)
    proposal = Classification(method="embedding", label="code", confidence=0.4, confident=False)
    d = route(RouteRequest(task="my program crashes"), p, None, proposal)
    assert d.outcome == "route"
    assert d.intent == "chat"
    assert any("no intent decided (embedding 0.40)" in r for r in d.reasons)


def test_unsure_refuses_when_the_policy_fails_closed() -> None:
    p = with_examples(threshold=0.8, on_unsure="refuse")
    proposal = Classification(method="embedding", label="code", confidence=0.4, confident=False)
    d = route(RouteRequest(task="my program crashes"), p, None, proposal)
    assert d.outcome == "refuse"
    assert d.code == Code.INTENT_UNCERTAIN
    assert "0.40 < threshold 0.80" in d.message
    assert d.model is None


def test_an_unsure_confidence_just_below_the_threshold_is_shown_below_it() -> None:
    p = with_examples(threshold=0.95, on_unsure="refuse")
    proposal = Classification(method="embedding", label="code", confidence=0.9452, confident=False)
    d = route(RouteRequest(task="my program crashes"), p, None, proposal)
    assert d.code == Code.INTENT_UNCERTAIN
    assert "0.9452 < threshold 0.9500" in d.message  # not "0.95 < threshold 0.95"


def test_a_role_named_by_the_caller_decides_without_the_classifier() -> None:
    p = with_examples(on_unsure="refuse")
    d = route(RouteRequest(task="anything at all", role="code"), p)
    assert d.outcome == "route"
    assert d.role == "code"
    assert d.classification is not None
    assert d.classification.method == "caller"


def test_adding_the_new_fields_changed_no_hash() -> None:
    # Unset, the new fields are left out of the canonical JSON.
    text = policy().canonical_json
    for key in ("examples", "min_input_tokens", "classifier", "tokenizer"):
        assert f'"{key}"' not in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"examples": ["only one"]}, "give at least 3"),
        ("classifier-router", "on_unsure 'router' needs a router_role"),
        ("embedder-chat", "lacks the 'embeddings' capability"),
    ],
)
def test_checks_refuse_a_classifier_that_cannot_work(change: Any, message: str) -> None:
    doc = json.loads(json.dumps(BASE))
    if change == "classifier-router":
        doc["classifier"] = {"on_unsure": "router"}
    elif change == "embedder-chat":
        doc["classifier"] = {"embedder_model": "small"}
    else:
        doc["intents"]["chat"].update(change)
    with pytest.raises(PolicyInvalidError) as caught:
        load_policy_text(json.dumps(doc), "json", "<test>")
    assert message in str(caught.value.problems)


def _kinds_doc(chat_examples: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    for name, texts in EXAMPLES.items():
        doc["intents"][name]["examples"] = texts
    doc["intents"]["chat"]["examples"] = chat_examples
    return doc


def test_an_intent_can_group_its_examples_by_kind() -> None:
    translate = ["say it in French", "en español", "translate to German please"]
    kinds = {"smalltalk": EXAMPLES["chat"], "translate": translate}
    loaded = load_policy_text(json.dumps(_kinds_doc(kinds)), "json", "<test>")
    chat = loaded.doc.intents["chat"]
    assert [kind for kind, _ in chat.example_groups()] == ["smalltalk", "translate"]
    assert chat.example_texts() == (*EXAMPLES["chat"], *translate)
    # The plain list form hashes as before: kinds are a new shape, not a new field.
    flat = load_policy_text(json.dumps(_kinds_doc(EXAMPLES["chat"])), "json", "<test>")
    assert flat.doc.intents["chat"].example_groups() == ((None, tuple(EXAMPLES["chat"])),)
    assert json.loads(flat.canonical_json)["intents"]["chat"]["examples"] == EXAMPLES["chat"]


@pytest.mark.parametrize(
    ("chat_examples", "where", "message"),
    [
        ({"smalltalk": EXAMPLES["chat"], "translate": ["en français"]},
         "intents.chat.examples.translate", "give at least 3"),
        ({"smalltalk": EXAMPLES["chat"], "empty": []}, "intents.chat.examples.empty",
         "give at least 3"),
        ({"a": [f"example {i}" for i in range(600)], "b": [f"other {i}" for i in range(401)]},
         "intents.chat.examples", "1001 examples; at most 1000 per intent"),
        ({"smalltalk": EXAMPLES["chat"], "again": ["fix this null pointer", "x y", "y z"]},
         "intents.chat.examples", "also an example of intent 'code'"),
    ],
)  # fmt: skip
def test_kinds_are_checked_one_by_one(chat_examples: Any, where: str, message: str) -> None:
    with pytest.raises(PolicyInvalidError) as caught:
        load_policy_text(json.dumps(_kinds_doc(chat_examples)), "json", "<test>")
    assert any(p.location == where and message in p.message for p in caught.value.problems), (
        caught.value.problems
    )
