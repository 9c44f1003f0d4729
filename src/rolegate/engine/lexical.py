"""A text's words and letter n-grams, hashed into a fixed number of columns.

Next to a task's embedding, the linear classifier reads these: they carry what an embedding
blurs (identifiers, file names, exact phrases such as "tl;dr" or "root cause", the shape of
pasted code and logs). The features are the lower-cased words and punctuation marks, each
pair of neighbours, and the 3- to 5-letter pieces of each word (inflections, spelling
variants, scripts written without spaces), each hashed with CRC-32 (the same in every
process) into ``DIMENSIONS`` columns. A feature seen ``c`` times weighs ``1 + ln c``; each
row is L2-normalised. On the labelled set (benchmarks/bench_classify.py) 2**12 to 2**15
columns measured the same; 2**13 leaves room for larger example sets.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

DIMENSIONS = 1 << 13
# A pasted document's head and tail say what is asked of it; reading all of a long one
# would cost milliseconds per 10,000 characters and change nothing.
HEAD_CHARS = 6000
TAIL_CHARS = 2000
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")


def sparse(text: str) -> tuple[list[int], list[float]]:
    """The text's non-zero columns and their L2-normalised weights."""
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = f"{text[:HEAD_CHARS]} {text[-TAIL_CHARS:]}"
    text = text.lower()
    tokens = _TOKEN.findall(text)
    grams = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
    for word in _WORD.findall(text):
        padded = f" {word} "
        for size in (3, 4, 5):
            grams.extend(padded[i : i + size] for i in range(len(padded) - size + 1))
    counts = Counter(
        zlib.crc32(gram.encode("utf-8", "surrogatepass")) % DIMENSIONS for gram in grams
    )
    columns = list(counts)
    weights = [1.0 + math.log(counts[column]) for column in columns]
    norm = math.sqrt(sum(w * w for w in weights)) or 1.0
    return columns, [w / norm for w in weights]


def has_words(text: str, count: int) -> bool:
    """Whether ``text`` has at least ``count`` words (reading no further than that)."""
    return sum(1 for _ in itertools.islice(_WORD.finditer(text), count)) >= count


def dense(np: Any, texts: Sequence[str]) -> Any:
    """One float32 row per text (texts x DIMENSIONS)."""
    rows = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    for index, text in enumerate(texts):
        columns, weights = sparse(text)
        rows[index, columns] = weights
    return rows


def project(np: Any, features: tuple[list[int], list[float]], weights: Any) -> Any:
    """``features @ weights`` for one sparse row (weights: DIMENSIONS x outputs)."""
    columns, values = features
    if not columns:
        return np.zeros(weights.shape[1], dtype=weights.dtype)
    return np.asarray(values, dtype=weights.dtype) @ weights[columns]
