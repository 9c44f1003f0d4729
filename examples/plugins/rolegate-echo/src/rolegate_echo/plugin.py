"""The echo provider type: answers with the last user message, streamed word by word."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rolegate.plugins.base import (
    ChatRequest,
    ChatResult,
    Message,
    OnDelta,
    ProviderClient,
    ProviderType,
    RoleKind,
    TokenCount,
)
from rolegate.plugins.hookspecs import hookimpl
from rolegate.policy.schema import Provider


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


@hookimpl
def register_roles(register: Callable[[RoleKind], None]) -> None:
    register(RoleKind("summarizer", "Condenses text; owner authority.", None, "owner"))
