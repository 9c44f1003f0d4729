"""Built-in provider type ``openai``: any server speaking the OpenAI chat API.

OpenAI, vLLM, llama.cpp's server, LM Studio, DeepSeek, Moonshot/Kimi and
OpenRouter. Uses the openai SDK's AsyncOpenAI (its own retries off: rolegate
retries only before any byte arrived). Exact input-token counts come from
llama.cpp's /apply-template + /tokenize where the server offers them.

This module only registers the type; the client (and the openai SDK, slow to import) is
loaded when the first call needs it, so the server starts as fast as the bare SDK.
"""

from __future__ import annotations

from typing import Any

from rolegate.plugins.base import ProviderClient
from rolegate.plugins.hookspecs import hookimpl
from rolegate.policy.schema import Provider


class OpenAIProviderType:
    name = "openai"

    def create(
        self, config: Provider, *, api_key: str | None, transport: Any = None
    ) -> ProviderClient:
        import httpx2

        from rolegate.plugins.builtin.openai_client import OpenAIClient

        if transport is not None and not isinstance(transport, httpx2.AsyncBaseTransport):
            raise TypeError(f"the openai provider needs an httpx2 transport, not {transport!r}")
        return OpenAIClient(config, api_key, transport)


@hookimpl
def register_providers(register: Any) -> None:
    register(OpenAIProviderType())


@hookimpl
def register_embedders(register: Any) -> None:
    from rolegate.plugins.builtin.embedders import ServerEmbedderType

    register(ServerEmbedderType(OpenAIProviderType()))
