"""The classifier's words: hashed n-gram features, the dual-form regression, the shortcut."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rolegate.engine import classifier as clf
from rolegate.engine import lexical
from rolegate.engine.classifier import IntentClassifier
from rolegate.policy.understanding_schema import Classifier

INTENTS = {
    "code": ["refactor this python function", "fix the failing unit test in utils.py",
             "write a bash script that renames files", "why does this segfault in my C code"],
    "summarize": ["summarize this article", "give me the tl;dr of this thread",
                  "condense the meeting notes into bullet points", "short summary of the report"],
    "translate": ["translate this into French", "how do you say thank you in German",
                  "put this paragraph into Spanish", "translate the menu to Japanese"],
}  # fmt: skip


def test_features_are_the_same_in_every_process() -> None:
    # The weights learnt in one process read the columns of another (crc32, not hash()).
    text = "Summarise the incident report, ignoring the stack trace: KeyError 'x'"
    here = lexical.sparse(text)
    code = f"from rolegate.engine import lexical; print(lexical.sparse({text!r}))"
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout
    assert there.strip() == repr(here)


def test_features_are_normalised_and_share_letter_ngrams_across_spellings() -> None:
    columns, weights = lexical.sparse("Summarize this")
    assert math.isclose(math.fsum(w * w for w in weights), 1.0, rel_tol=1e-9)
    assert all(0 <= c < lexical.DIMENSIONS for c in columns)
    british = set(lexical.sparse("Summarise this")[0])
    unrelated = set(lexical.sparse("Deploy the cluster")[0])
    # "summar" pieces are shared; the whole words differ.
    assert len(british & set(columns)) > len(unrelated & set(columns)) + 5
    assert lexical.sparse("") == ([], [])


def test_a_long_paste_is_read_by_its_head_and_tail() -> None:
    middle = "lorem ipsum dolor sit amet " * 40_000  # ~1 MB
    text = "Summarize this log:\n" + middle + "\nWhat failed?"
    started = time.perf_counter()
    columns, _ = lexical.sparse(text)
    assert time.perf_counter() - started < 5  # generous: ~10 ms; the whole text would be ~1 s
    assert set(lexical.sparse("what failed?")[0]) <= set(columns)
    assert set(lexical.sparse("summarize this log:")[0]) <= set(columns)


def _primal(inputs: Any, owner: Any, labels: int) -> Any:
    """The regression trained directly on its weights (the pre-dual algorithm)."""
    inputs = np.hstack([clf.LINEAR_SCALE * inputs, np.ones((len(inputs), 1))]).astype(np.float32)
    targets = np.eye(labels, dtype=np.float32)[owner]
    counts = np.bincount(owner, minlength=labels).astype(np.float32)
    balance = (len(owner) / (labels * counts[owner]))[:, None].astype(np.float32)
    penalty = np.ones((inputs.shape[1], 1), np.float32)
    penalty[-1] = 0.0
    weights = np.zeros((inputs.shape[1], labels), np.float32)
    velocity = np.zeros_like(weights)
    for _ in range(clf.LINEAR_STEPS):
        ahead = weights + clf.LINEAR_MOMENTUM * velocity
        errors = (clf._softmax(np, inputs @ ahead) - targets) * balance
        gradient = inputs.T @ errors / len(inputs) + clf.LINEAR_L2 * penalty * ahead
        velocity = clf.LINEAR_MOMENTUM * velocity - clf.LINEAR_RATE * gradient
        weights = weights + velocity
    return weights


def test_the_dual_form_takes_the_steps_of_the_primal_one() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owner = np.array([i % 3 for i in range(40)] + [0, 0, 0, 0])  # unbalanced groups
    vectors = np.vstack([vectors, vectors[:4] * 0.5 + 0.1])
    model = clf._fit(np, vectors, None, vectors @ vectors.T, owner, 3)
    reference = _primal(vectors, owner, 3)
    probe = rng.normal(size=(5, 16)).astype(np.float32)
    expected = clf._softmax(np, clf.LINEAR_SCALE * probe @ reference[:-1] + reference[-1])
    got = np.vstack([model.probabilities(np, row, None) for row in probe])
    np.testing.assert_allclose(got, expected, atol=2e-3)


class CountingEmbedder:
    """The packaged e5 behind a counter of the texts it was asked to embed."""

    def __init__(self) -> None:
        from rolegate.plugins.builtin.e5_embedder import E5Embedder

        self.inner = E5Embedder()
        self.id = self.inner.id
        self.asked: list[str] = []

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        self.asked.extend(texts)
        return await self.inner.embed(texts)


def _classifier(**settings: Any) -> tuple[IntentClassifier, CountingEmbedder]:
    embedder = CountingEmbedder()
    examples = [(label, None, texts) for label, texts in INTENTS.items()]
    found = IntentClassifier(examples, embedder, Classifier(**settings))  # type: ignore[arg-type]
    return found, embedder


async def test_a_task_the_words_decide_is_not_embedded() -> None:
    classifier, embedder = _classifier(shortcut=0.5, threshold=0.3)
    await classifier.prepare()
    embedder.asked.clear()
    found = await classifier.classify("translate this paragraph into French")
    assert (found.method, found.label, found.confident) == ("lexical", "translate", True)
    assert found.confidence is not None
    assert found.confidence >= 0.5
    assert embedder.asked == []
    # Without the shortcut the same task is embedded, and the answer agrees.
    plain, plain_embedder = _classifier(shortcut=None, threshold=0.3)
    again = await plain.classify("translate this paragraph into French")
    assert (again.method, again.label) == ("embedding", "translate")
    assert "translate this paragraph into French" in plain_embedder.asked


async def test_a_task_the_words_do_not_decide_is_embedded() -> None:
    classifier, embedder = _classifier(shortcut=0.99, threshold=0.3)
    await classifier.prepare()
    embedder.asked.clear()
    found = await classifier.classify("¿Puedes resumir este artículo en tres frases?")
    assert found.method == "embedding"
    assert embedder.asked == ["¿Puedes resumir este artículo en tres frases?"]


async def test_the_shortcut_never_answers_below_the_threshold() -> None:
    # A words-only answer must not stand in for the embedding when the threshold asks for
    # more certainty than it has, however low 'shortcut' is set.
    classifier, _ = _classifier(shortcut=0.1, threshold=0.95)
    await classifier.prepare()
    assert classifier._shortcut is not None
    between = 0
    for task in ("translate this paragraph into French", "summarize this article please",
                 "please have a look at this"):  # fmt: skip
        words = classifier._shortcut.probabilities(np, None, lexical.sparse(task)).max()
        found = await classifier.classify(task)
        assert found.method == ("lexical" if words >= 0.95 else "embedding"), (task, words)
        between += 0.1 <= words < 0.95
    assert between >= 1  # the case the rule is about did occur


async def test_without_lexical_features_the_model_reads_the_embedding_alone() -> None:
    classifier, _ = _classifier(lexical=False, threshold=0.0)
    await classifier.prepare()
    assert classifier._linear is not None
    assert classifier._linear.lexical is None
    assert classifier._shortcut is None
    found = await classifier.classify("could you translate this note into Italian")
    assert (found.method, found.label) == ("embedding", "translate")


async def test_words_and_embedding_together_are_one_model() -> None:
    classifier, _ = _classifier(threshold=0.0, shortcut=None)
    await classifier.prepare()
    model = classifier._linear
    assert model is not None
    assert model.embedding.shape == (384, 3)
    assert model.lexical.shape == (lexical.DIMENSIONS, 3)
    # Both parts move the answer: the words of a task change its probabilities.
    vector = np.asarray((await classifier.embedder.embed(["fix my code"]))[0], np.float32)
    vector /= np.linalg.norm(vector)
    with_words = model.probabilities(np, vector, lexical.sparse("fix my code"))
    without_words = model.probabilities(np, vector, None)
    assert not np.allclose(with_words, without_words, atol=1e-3)
    assert with_words.sum() == pytest.approx(1.0, abs=1e-5)


def test_the_new_settings_leave_the_hash_of_older_policies_alone() -> None:
    from rolegate.policy.loader import load_policy_text

    doc = (
        '{"version": 1, "name": "t", "providers": {"p": {"type": "openai", '
        '"base_url": "http://127.0.0.1:9/v1", "locality": "local"}}, "models": {"m": '
        '{"provider": "p", "name": "m", "context_window": 4096, "reserve_tokens": 512}}, '
        '"roles": {"r": {"model": "m"}}, "defaults": {"role": "r"}, "classifier": %s}'
    )

    def load(classifier: str) -> Any:
        return load_policy_text(doc % classifier, "json", "<t>")

    older = load('{"method": "linear", "threshold": 0.4}')
    assert "lexical" not in older.canonical_json
    assert "shortcut" not in older.canonical_json
    assert load('{"threshold": 0.4, "lexical": true, "shortcut": 0.7}').hash == older.hash
    assert load('{"threshold": 0.4, "lexical": false}').hash != older.hash
    assert load('{"threshold": 0.4, "shortcut": null}').hash != older.hash
    assert load('{"threshold": 0.4, "shortcut": 0.9}').hash != older.hash


async def test_trained_models_are_kept_on_disk_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = [(label, None, texts) for label, texts in INTENTS.items()]
    first = IntentClassifier(examples, CountingEmbedder(), Classifier(), cache_dir=tmp_path)  # type: ignore[arg-type]
    task = "could you make this paragraph French"
    expected = await first.classify(task)
    [saved] = tmp_path.glob("linear-*.npz")

    def no_training(*_: object) -> None:
        raise AssertionError("trained again instead of reading the cache")

    again = IntentClassifier(examples, CountingEmbedder(), Classifier(), cache_dir=tmp_path)  # type: ignore[arg-type]
    monkeypatch.setattr(again, "_train", no_training)
    assert await again.classify(task) == expected
    # Other settings are another model, and a damaged file is trained again.
    plain = IntentClassifier(
        examples,
        CountingEmbedder(),
        Classifier(shortcut=None),
        cache_dir=tmp_path,  # type: ignore[arg-type]
    )
    await plain.prepare()
    assert len(list(tmp_path.glob("linear-*.npz"))) == 2
    saved.write_bytes(b"not a zip")
    damaged = IntentClassifier(examples, CountingEmbedder(), Classifier(), cache_dir=tmp_path)  # type: ignore[arg-type]
    assert await damaged.classify(task) == expected


async def test_damaged_cache_files_are_rebuilt(tmp_path: Path) -> None:
    examples = [(label, None, texts) for label, texts in INTENTS.items()]
    task = "could you make this paragraph French"

    def fresh() -> IntentClassifier:
        return IntentClassifier(examples, CountingEmbedder(), Classifier(), cache_dir=tmp_path)  # type: ignore[arg-type]

    expected = await fresh().classify(task)
    [vectors] = tmp_path.glob("examples-*.npy")
    [models] = tmp_path.glob("linear-*.npz")
    whole = models.read_bytes()
    for damage in (b"", whole[:100], b"\x93NUMPY garbage"):  # empty, truncated zip, bad array
        models.write_bytes(damage)
        vectors.write_bytes(damage)
        assert await fresh().classify(task) == expected, damage


async def test_a_long_task_is_embedded_by_its_head_and_tail() -> None:
    classifier, embedder = _classifier(shortcut=None, threshold=0.0)
    await classifier.prepare()
    embedder.asked.clear()
    task = "Summarize this log for me:\n" + "GET /index.html 200\n" * 10_000 + "What failed?"
    found = await classifier.classify(task)
    assert found.method == "embedding"
    [asked] = embedder.asked
    assert len(asked) <= clf.EMBED_HEAD + clf.EMBED_TAIL + 5
    assert asked.startswith("Summarize this log for me:")
    assert asked.endswith("What failed?")
    short = "summarize this article for me please"
    await classifier.classify(short)
    assert embedder.asked[-1] == short  # a short task is embedded whole


async def test_too_few_words_are_never_decided_by_the_words_alone() -> None:
    classifier, _ = _classifier(shortcut=0.0, threshold=0.0)
    await classifier.prepare()
    for task in (".", "thoughts?", "translate, please"):
        assert (await classifier.classify(task)).method == "embedding", task
    found = await classifier.classify("translate this paragraph")
    assert found.method == "lexical"


def _load_with(classifier: str) -> Any:
    from rolegate.policy.loader import load_policy_text

    intents = json.dumps({k: {"examples": v} for k, v in INTENTS.items()})
    doc = (
        '{"version": 1, "name": "t", "providers": {"p": {"type": "openai", '
        '"base_url": "http://127.0.0.1:9/v1", "locality": "local"}}, "models": {"m": '
        '{"provider": "p", "name": "m", "context_window": 4096, "reserve_tokens": 512}}, '
        '"roles": {"r": {"model": "m"}}, "defaults": {"role": "r"}, "intents": %s, '
        '"classifier": %s}'
    )
    return load_policy_text(doc % (intents, classifier), "json", "<t>")


@pytest.mark.parametrize(
    "classifier",
    ['{"shortcut": true}', '{"shortcut": "0.8"}', '{"lexical": "yes"}', '{"lexical": 1}'],
)
def test_the_new_settings_take_their_own_types_only(classifier: str) -> None:
    from rolegate.errors import PolicyInvalidError

    with pytest.raises(PolicyInvalidError) as info:
        _load_with(classifier)
    [problem] = info.value.problems
    assert problem.location in ("classifier.shortcut", "classifier.lexical")


NEW_SETTINGS = ("classifier.lexical", "classifier.shortcut")


def test_settings_the_method_ignores_are_warned_about() -> None:
    def warned(classifier: str) -> list[str]:
        found = _load_with(classifier).warnings
        return [f"{w.location}: {w.message}" for w in found if w.location in NEW_SETTINGS]

    assert warned('{"method": "knn", "lexical": true}') == [
        "classifier.lexical: only the 'linear' method reads the task's words; "
        "method 'knn' ignores 'lexical'"
    ]
    assert warned('{"method": "centroid", "shortcut": 0.9}')[0].startswith("classifier.shortcut")
    assert warned('{"lexical": false, "shortcut": 0.8}')[0].startswith(
        "classifier.shortcut: the shortcut is a model of the task's words"
    )
    assert warned('{"lexical": false, "shortcut": null}') == []
    assert warned('{"method": "knn"}') == []
    assert warned('{"shortcut": 0.9}') == []


def test_the_dual_form_of_embedding_and_words_together_is_the_primal_one() -> None:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"task {i} about {'code' if i % 2 else 'prose'} number {i * 7}" for i in range(30)]
    words = lexical.dense(np, texts)
    owner = np.array([i % 2 for i in range(30)])
    model = clf._fit(np, vectors, words, vectors @ vectors.T + words @ words.T, owner, 2)
    reference = _primal(np.hstack([vectors, words]), owner, 2)
    for i in (0, 1, 7):
        probe = texts[i].replace("task", "job")
        features = lexical.sparse(probe)
        full = np.concatenate([vectors[i], lexical.dense(np, [probe])[0]])
        expected = clf._softmax(np, clf.LINEAR_SCALE * full @ reference[:-1] + reference[-1])
        got = model.probabilities(np, vectors[i], features)
        np.testing.assert_allclose(got, expected, atol=2e-3)


async def test_the_cache_directory_is_made_and_other_vectors_are_another_model(
    tmp_path: Path,
) -> None:
    examples = [(label, None, texts) for label, texts in INTENTS.items()]
    where = tmp_path / "not" / "there"
    classifier = IntentClassifier(examples, CountingEmbedder(), Classifier(), cache_dir=where)  # type: ignore[arg-type]
    await classifier.prepare()
    assert len(list(where.glob("linear-*.npz"))) == 1
    assert not list(where.glob("*.tmp"))
    matrix = classifier._matrix
    assert classifier._models_file(matrix) != classifier._models_file(matrix * 0.5)


def test_more_examples_than_the_classifier_takes_are_refused() -> None:
    from rolegate.errors import PolicyInvalidError
    from rolegate.policy.loader import load_policy_text

    intents = {f"i{n}": {"examples": [f"example {n}-{k}" for k in range(900)]} for n in range(5)}
    doc = {
        "version": 1, "name": "t", "defaults": {"role": "r"}, "intents": intents,
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1",
                            "locality": "local"}},
        "models": {"m": {"provider": "p", "name": "m", "context_window": 4096,
                         "reserve_tokens": 512}},
        "roles": {"r": {"model": "m"}},
    }  # fmt: skip
    with pytest.raises(PolicyInvalidError) as info:
        load_policy_text(json.dumps(doc), "json", "<t>")
    said = [p.message for p in info.value.problems if p.location == "intents"]
    assert said == [
        "4,500 examples in all; the classifier takes at most 4,000 (its training grows with "
        "the square of their number). Keep the most varied ones"
    ]
