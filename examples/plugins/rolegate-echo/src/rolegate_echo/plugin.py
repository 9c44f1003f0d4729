"""An example rolegate plugin implementing every hook rolegate defines.

- ``register_providers``: the ``echo`` provider type, which answers with the last user
  message, streamed word by word, with word counts as usage.
- ``register_roles``: the ``summarizer`` role kind, for owner roles, with a default prompt.
- ``register_audit_sinks``: a sink that appends one JSON line per audit record (its kind
  and code) to the file named by ``ROLEGATE_ECHO_AUDIT_FILE``; it does nothing when the
  variable is unset.
- ``register_checkers``: the ``echo-length`` checker for eval suites, which passes when an
  output has at least ``min_chars`` characters.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rolegate.plugins.base import (
    ChatRequest,
    ChatResult,
    CheckContext,
    Checker,
    Message,
    OnDelta,
    ProviderClient,
    ProviderType,
    RoleKind,
    TokenCount,
    Verdict,
)
from rolegate.plugins.hookspecs import hookimpl
from rolegate.plugins.sinks import AuditSink
from rolegate.policy.schema import Contract, Provider


class EchoClient:
    def __init__(self, config: Provider) -> None:
        self.config = config

    async def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult:
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = last.split()[: request.max_output_tokens]
        for i, word in enumerate(words):
            if on_delta is not None:
                await on_delta(word if i == 0 else " " + word)
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        return ChatResult(
            text=" ".join(words),
            input_tokens=prompt_words,
            output_tokens=len(words),
            finish_reason="stop",
            streamed=request.stream,
        )

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> TokenCount | None:
        return TokenCount(tokens=sum(len(m.content.split()) for m in messages), exact=True)

    async def list_models(self) -> list[str]:
        return ["echo-1"]

    async def aclose(self) -> None:
        return None


class EchoProviderType:
    name = "echo"

    def create(
        self, config: Provider, *, api_key: str | None, transport: Any = None
    ) -> ProviderClient:
        return EchoClient(config)


@hookimpl
def register_providers(register: Callable[[ProviderType], None]) -> None:
    register(EchoProviderType())


SUMMARIZER_PROMPT = "Summarize the user's text in at most three sentences. Add nothing."


@hookimpl
def register_roles(register: Callable[[RoleKind], None]) -> None:
    # A policy role selects it with `kind: summarizer`; its authority must be `owner`.
    register(
        RoleKind(
            name="summarizer",
            description="Condenses text; owner authority.",
            system_prompt=SUMMARIZER_PROMPT,
            authority="owner",
        )
    )


AUDIT_FILE_ENV = "ROLEGATE_ECHO_AUDIT_FILE"


class AuditFile:
    """Appends ``{"kind": ..., "code": ...}`` per audit record to a local file.

    Sinks run inline on the request path, so this one does the least it can: one short
    append to a local file, no network, no fsync. A record never holds prompt or output
    text, and this sink keeps only two of its fields anyway.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()  # one line at a time, whatever thread delivers

    def __call__(self, record: dict[str, object]) -> None:
        if self.path is None:
            return
        line = json.dumps({"kind": record.get("kind"), "code": record.get("code")})
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


@hookimpl
def register_audit_sinks(register: Callable[[AuditSink], None]) -> None:
    # Read once, at server start; unset means the sink is registered but does nothing.
    path = os.environ.get(AUDIT_FILE_ENV)
    register(AuditFile(Path(path) if path else None))


class EchoLengthChecker:
    """``check: {type: echo-length, min_chars: 20}``: passes when the output has at least
    ``min_chars`` characters (surrounding whitespace not counted)."""

    name = "echo-length"

    def validate(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        # Runs when the suite is loaded: a bad spec fails before any model is called.
        unknown = sorted(set(spec) - {"min_chars"})
        if unknown:
            raise ValueError(
                f"check type 'echo-length' has no option {unknown}; it takes min_chars"
            )
        value = spec.get("min_chars")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                "check type 'echo-length' needs 'min_chars', a whole number, 1 or more"
            )

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        wanted = spec["min_chars"]
        assert isinstance(wanted, int)  # validate made sure
        length = len(output.strip())
        if length >= wanted:
            return Verdict(passed=True, score=1.0)
        # A reason describes the output (its length), never quotes it: verdicts are stored.
        return Verdict(False, 0.0, f"{length} characters; at least {wanted} needed")


@hookimpl
def register_checkers(register: Callable[[Checker], None]) -> None:
    register(EchoLengthChecker())
