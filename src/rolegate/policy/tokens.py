"""Conservative token estimates for when no tokenizer is at hand.

Byte-level BPE tokenizers never give a token less than one byte, and they split
digits, punctuation, whitespace next to them and rare characters finely. So the
estimate counts one token per ASCII digit, punctuation mark and whitespace
character, one per UTF-8 byte of non-ASCII text, and for each run of ASCII
letters one per ``chars_per_token`` letters, rounded up (English words average
near 4 letters a token). Every step is a C-speed string operation.
"""

from __future__ import annotations

import math
import re
import string

from rolegate.policy.schema import TokenEstimate

_LETTERS_ONLY = str.maketrans(
    "", "", string.digits + string.punctuation + string.whitespace + "".join(map(chr, range(32)))
)
_LETTER_RUN = re.compile(r"[A-Za-z]+")


def estimate_tokens(text: str, settings: TokenEstimate, messages: int = 1) -> int:
    """Estimated tokens of ``text`` sent as ``messages`` chat messages, rounded up."""
    if text.isascii():
        ascii_text, non_ascii_bytes = text, 0
    else:
        ascii_text = text.encode("ascii", "ignore").decode("ascii")
        non_ascii_bytes = len(text.encode("utf-8")) - len(ascii_text)
    letters = len(ascii_text.translate(_LETTERS_ONLY))
    fine = len(ascii_text) - letters  # digits, punctuation, whitespace: a token each
    runs = _LETTER_RUN.subn("", ascii_text)[1]
    per = settings.chars_per_token
    # Each run rounds up on its own: ceil(n / per) <= n / per + (1 - 1 / per).
    words = math.ceil(letters / per + runs * max(0.0, 1 - 1 / per))
    return fine + non_ascii_bytes + words + settings.overhead_tokens * messages


def estimate_method(settings: TokenEstimate) -> str:
    return (
        f"estimate: 1 per digit, punctuation, whitespace and non-ASCII byte; 1 per "
        f"{settings.chars_per_token:g} letters; +{settings.overhead_tokens} per message"
    )
