"""The policy format's fixed words: localities, signals, operators, failure codes, remedies
and the capabilities rolegate knows (re-exported by ``schema``)."""

from __future__ import annotations

from typing import Literal

Locality = Literal["local", "cloud"]
API_KEY_ENV_PATTERN = r"^[A-Z_][A-Z0-9_]{0,63}$"
"""An environment variable name in upper snake case, at most 64 characters."""
Signal = Literal[
    "confidence",
    "failed_loops",
    "context_estimate",
    "contradictions",
    "tool_heavy",
    "full_sweep",
    "high_risk",
    "user_request",
    "self_check_confidence",
    "scope_large",
    "interesting_failure",
]
Op = Literal["lt", "le", "gt", "ge", "eq", "ne"]
FailureCode = Literal[
    "PROVIDER_UNAVAILABLE",
    "PROVIDER_TIMEOUT",
    "PROVIDER_ERROR",
    "BAD_RESPONSE",
    "MODEL_COLD",
    "MEMORY_EXCEEDED",
    "LOAD_TIMEOUT",
    "LOAD_FAILED",
]
Remedy = Literal["summarize", "narrow_scope", "select_documents", "chunk", "escalate"]

KNOWN_CAPABILITIES = frozenset(
    {
        "chat",
        "code",
        "reasoning",
        "long_context",
        "extraction",
        "summarize",
        "vision",
        "tools",
        "json",
        "routing",
        "validation",
        "citations",
        "speech",
        "ocr",
        "embeddings",
    }
)
