"""Write the embedded default policy's example vectors into the package (float16).

Run after editing the default policy's examples: python scripts/ship_vectors.py
tests/engine/test_shipped_vectors.py fails until the shipped file matches the policy.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import numpy

from rolegate.engine.understanding import build_reader
from rolegate.plugins.manager import build_registry
from rolegate.policy.loader import load_default_policy

SHIPPED = Path(__file__).resolve().parent.parent / "src" / "rolegate" / "engine" / "shipped"


async def main() -> None:
    env = {**os.environ, "ROLEGATE_CACHE_DIR": "off"}
    reader = build_reader(load_default_policy(), build_registry(), None, env, {})
    classifier = reader.classifier
    assert classifier is not None
    for stale in SHIPPED.glob("examples-*.npy"):
        stale.unlink()
    # Embedded here, not by prepare(): prepare() would load the file being replaced.
    rows = await classifier.embedder.embed(classifier.example_texts())
    matrix = numpy.asarray(rows, dtype=numpy.float32)
    matrix /= numpy.linalg.norm(matrix, axis=1, keepdims=True)
    target = SHIPPED / classifier.cache_name()
    numpy.save(target, matrix.astype(numpy.float16), allow_pickle=False)
    print(f"{target}: {matrix.shape[0]} vectors, {target.stat().st_size:,} bytes")


if __name__ == "__main__":
    anyio.run(main)
