"""Counting a model's input with its own tokenizer, offline, where one can be had.

A model's ``tokenizer:`` says how: ``o200k`` / ``cl100k`` (OpenAI's encodings, embedded in
PyPI's ``bpe-openai``: no download), ``file:PATH`` (a Hugging Face ``tokenizer.json`` via
``tokenizers``), ``server`` (the provider's ``/tokenize``: asked by the engine, never by
the pure router), ``estimate``. Unset: the server's count where it offers one, else the
calibrated estimate (``tokens.estimate_tokens``). Tokenizers load on first use (the
encodings take ~0.5 s to import), once per policy, and counting is pure computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolegate.errors import Code, PolicyLoadError
from rolegate.policy.schema import TokenEstimate
from rolegate.policy.tokens import estimate_method, estimate_tokens


@dataclass(frozen=True, slots=True)
class Counter:
    """Counts tokens of text for one tokenizer; ``exact`` is false for the estimate."""

    name: str
    exact: bool
    count_text: Callable[[str], int]
    # The last text counted, with its count: one request's task is counted more than once
    # (the engine's reading and route() size it, then count it for the candidates), and a
    # long task costs tens of microseconds to estimate, milliseconds to tokenize.
    _last: list[tuple[str, int]] = field(default_factory=list, compare=False, repr=False)

    def count(self, text: str, overhead: int = 0) -> int:
        # One read of the slot: another thread (a budget check off the event loop) may
        # replace it in between two.
        entry = self._last[0] if self._last else None
        if entry is not None and entry[0] == text:
            return entry[1] + overhead
        counted = self.count_text(text)
        self._last[:] = [(text, counted)]
        return counted + overhead


def _openai(name: str) -> Callable[[str], int]:
    import bpe_openai

    encoding: Any = bpe_openai.get_encoding(f"{name}_base")

    def count(text: str) -> int:
        # encode_ordinary: special-token text in a prompt is counted as text, never refused.
        return len(encoding.encode_ordinary(text))

    return count


def _hf_file(path: Path) -> Callable[[str], int]:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception for bad files
        raise PolicyLoadError(
            f"tokenizer file {path} cannot be loaded: {exc}", code=Code.POLICY_LOAD
        ) from None

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


class Counters:
    """The policy's counters by tokenizer name, each loaded on first use."""

    def __init__(self, settings: TokenEstimate, base_dir: Path) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self.estimate = Counter(
            "estimate", False, lambda text: estimate_tokens(text, settings, messages=0)
        )
        self._loaded: dict[str, Counter] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Loaded tokenizers are native objects: a pickled Policy reloads them on first use.
        return (Counters, (self.settings, self.base_dir))

    def get(self, tokenizer: str | None) -> Counter:
        """The offline counter for a model's ``tokenizer``; the estimate for unset,
        ``server`` and ``estimate`` (the engine asks a server itself)."""
        if tokenizer is None or tokenizer in ("server", "estimate"):
            return self.estimate
        found = self._loaded.get(tokenizer)
        if found is None:
            found = self._loaded[tokenizer] = self._load(tokenizer)
        return found

    def _load(self, tokenizer: str) -> Counter:
        if tokenizer in ("o200k", "cl100k"):
            return Counter(tokenizer, True, _openai(tokenizer))
        path = Path(tokenizer.removeprefix("file:")).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        return Counter(tokenizer, True, _hf_file(path))

    def method(self, counter: Counter) -> str:
        if counter.exact:
            return f"exact ({counter.name} tokenizer)"
        return estimate_method(self.settings)
