"""The calibrated token estimate, for models whose tokenizer cannot be had offline.

It counts features that every byte-level BPE and SentencePiece tokenizer splits alike and
weighs them by what the worst of o200k, cl100k and Gemma 3 spends on them, fitted on
``benchmarks/data/token_corpus`` (prose, code, logs, JSON, CJK, emoji) so that it is never
below any of them on a corpus chunk and as close as one estimate can be
(``benchmarks/bench_tokens.py`` prints the ratios): per ASCII word 0.5 plus 0.4 /
``chars_per_token`` per letter (0.2 at the default 2), 1.3 per digit (Gemma splits every
digit), 0.8 per punctuation mark, 2.0 per line break, 0.6 per space of indentation, 1.3 per
CJK character, 0.75 per other non-ASCII letter, 0.7 per UTF-8 byte of other symbols (emoji).
Every step is a C-speed string operation.
"""

from __future__ import annotations

import math
import re
import string

from rolegate.policy.schema import TokenEstimate

_WORDS = re.compile(r"[A-Za-z]+")
_INDENT = re.compile(r"[ \t]{2,}")
_LETTERS = string.ascii_letters
_DIGITS = string.digits
_PUNCT = string.punctuation
_NOT = {ord(c): None for c in _LETTERS}
_KEEP_DIGITS = str.maketrans("", "", "".join(chr(i) for i in range(128) if chr(i) not in _DIGITS))
_KEEP_PUNCT = str.maketrans("", "", "".join(chr(i) for i in range(128) if chr(i) not in _PUNCT))
_KEEP_LETTERS = str.maketrans("", "", "".join(chr(i) for i in range(128) if chr(i) not in _LETTERS))


def _non_ascii(text: str) -> tuple[int, int, int]:
    """(CJK characters, other non-ASCII letters, UTF-8 bytes of other non-ASCII symbols)."""
    cjk = other = symbol_bytes = 0
    for char in text:
        if char.isascii():
            continue
        if char.isalpha():
            if ord(char) >= 0x2E80:
                cjk += 1
            else:
                other += 1
        else:
            symbol_bytes += len(char.encode("utf-8", "surrogatepass"))
    return cjk, other, symbol_bytes


def estimate_tokens(text: str, settings: TokenEstimate, messages: int = 1) -> int:
    """Estimated tokens of ``text`` sent as ``messages`` chat messages, rounded up."""
    if text.isascii():
        ascii_text, cjk, other, symbol_bytes = text, 0, 0, 0
    else:
        ascii_text = text.encode("ascii", "ignore").decode("ascii")
        cjk, other, symbol_bytes = _non_ascii(text)
    words = len(_WORDS.findall(ascii_text))
    letters = len(ascii_text.translate(_KEEP_LETTERS))
    digits = len(ascii_text.translate(_KEEP_DIGITS))
    punct = len(ascii_text.translate(_KEEP_PUNCT))
    lines = ascii_text.count("\n")
    indents = sum(len(run) for run in _INDENT.findall(ascii_text))
    total = (
        0.5 * words
        + 0.4 / settings.chars_per_token * letters
        + 1.3 * digits
        + 0.8 * punct
        + 2.0 * lines
        + 0.6 * indents
        + 1.3 * cjk
        + 0.75 * other
        + 0.7 * symbol_bytes
    )
    return math.ceil(total) + settings.overhead_tokens * messages


def estimate_method(settings: TokenEstimate) -> str:
    return (
        "estimate: calibrated on prose, code, logs, JSON, CJK and emoji against o200k, "
        f"cl100k and Gemma 3 (never below them there); +{settings.overhead_tokens} per message"
    )
