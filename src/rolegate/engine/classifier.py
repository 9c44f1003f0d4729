"""The intent classifier: a task's similarity to each intent's examples.

The examples are embedded once (in batches, when the first task needs them) and
L2-normalised; a task is embedded, normalised and compared by dot product (cosine). Each
intent scores either its nearest examples' mean similarity (``knn``: the mean of its
``K_NEAREST`` best, robust to one odd example) or its examples' mean vector's similarity
(``centroid``). A softmax over the intent scores gives the confidence; the threshold
decides whether the classifier is sure. Which method and temperature: by measurement on the
labelled set (``benchmarks/bench_classify.py``).

The answer is cached by the task's hash (the classifier belongs to one policy, so the
policy hash is part of every key), so a repeated task costs a dict lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rolegate.engine.text import encodable
from rolegate.errors import Code, ProviderError
from rolegate.logs import get_logger
from rolegate.policy.decision import Classification
from rolegate.policy.schema import Classifier

if TYPE_CHECKING:
    from rolegate.plugins.base import Embedder

log = get_logger()

K_NEAREST = 3
TEMPERATURE = 0.01  # cosine gaps between e5 intents are a few hundredths (bench_classify.py)
CACHE_SIZE = 8192
BATCH = 32


def _np() -> Any:
    import numpy  # ~60 ms to import: paid when the first task is classified, not at start

    return numpy


class IntentClassifier:
    """Classifies tasks among ``examples``' labels with one embedder."""

    def __init__(
        self,
        examples: Sequence[tuple[str, Sequence[str]]],
        embedder: Embedder,
        settings: Classifier,
        cache_dir: Path | None = None,
    ) -> None:
        # The examples' vectors are kept in cache_dir (one file per embedder and example
        # set), so a restart does not embed them again: seconds for a few hundred examples.
        self.cache_dir = cache_dir
        self.labels = [label for label, texts in examples if texts]
        self._texts = [(label, list(texts)) for label, texts in examples if texts]
        self.embedder = embedder
        self.settings = settings
        self._matrix: Any = None  # examples x dims, normalised
        self._owner: Any = None  # label index of each example row
        self._centroids: Any = None
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
            owner = np.asarray([i for i, (_, texts) in enumerate(self._texts) for _ in texts])
            matrix = await anyio.to_thread.run_sync(self._load_cached)
            if matrix is None or len(matrix) != len(owner):
                rows: list[Any] = []
                for _, texts in self._texts:
                    for start in range(0, len(texts), BATCH):
                        batch = texts[start : start + BATCH]
                        rows.append(_normalised(np, await self.embedder.embed(batch)))
                matrix = np.vstack(rows)
                await anyio.to_thread.run_sync(self._store_cached, matrix)
            centroids = np.vstack(
                [matrix[owner == i].mean(axis=0) for i in range(len(self.labels))]
            )
            self._centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
            self._owner = owner
            self._matrix = matrix

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(self.embedder.id.encode())
        for label, texts in self._texts:
            digest.update(json.dumps([label, texts]).encode())
        return self.cache_dir / f"examples-{digest.hexdigest()[:32]}.npy"

    def _load_cached(self) -> Any:
        path = self._cache_file()
        if path is None or not path.exists():
            return None
        try:
            return _np().load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable or half-written: embed again

    def _store_cached(self, matrix: Any) -> None:
        path = self._cache_file()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            with partial.open("wb") as out:
                _np().save(out, matrix, allow_pickle=False)
            os.replace(partial, path)
        except OSError as exc:
            log.warning("embedding_cache_unwritable", error=type(exc).__name__)

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
        vector = _normalised(np, await self.embedder.embed([encodable(task)]))[0]
        result = self.judge(self.scores(vector))
        self._cache[_key(task)] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def scores(self, vector: Any) -> Any:
        """One similarity score per label for a normalised task vector."""
        np = _np()
        if self.settings.method == "centroid":
            return self._centroids @ vector
        sims = self._matrix @ vector
        out = np.empty(len(self.labels))
        for i in range(len(self.labels)):
            mine = np.sort(sims[self._owner == i])
            out[i] = mine[-K_NEAREST:].mean()
        return out

    def judge(self, scores: Any) -> Classification:
        np = _np()
        weights = np.exp((scores - scores.max()) / TEMPERATURE)
        probs = weights / weights.sum()
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
