"""Conservative token estimates for when no tokenizer is at hand.

A byte-level BPE token covers at least one UTF-8 byte, so ``bytes`` is a hard
upper bound; the policy's ``bytes_per_token`` trades that bound for realism
(2.0 by default: English runs near 4, code near 3).
"""

from __future__ import annotations

import math

from rolegate.policy.schema import TokenEstimate


def estimate_tokens(text: str, settings: TokenEstimate, messages: int = 1) -> int:
    """Estimated tokens of ``text`` sent as ``messages`` chat messages, rounded up."""
    size = len(text.encode("utf-8")) if not text.isascii() else len(text)
    return math.ceil(size / settings.bytes_per_token) + settings.overhead_tokens * messages


def estimate_method(settings: TokenEstimate) -> str:
    return (
        f"estimate: utf8_bytes/{settings.bytes_per_token:g} + "
        f"{settings.overhead_tokens} per message"
    )
