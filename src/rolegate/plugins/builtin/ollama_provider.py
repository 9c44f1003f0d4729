"""Built-in provider type ``ollama``: Ollama's own API via the ollama package.

Chat (streaming or not), keep_alive, model listing; usage from
prompt_eval_count / eval_count. Ollama has no tokenize endpoint, so input
counts before a call are the policy's conservative estimate.

This module only registers the type; the client (and the ollama SDK, slow to import) is
loaded when the first call needs it, so the server starts as fast as the bare SDK.
"""

from __future__ import annotations

from typing import Any

from rolegate.plugins.base import Embedder, ProviderClient
from rolegate.plugins.hookspecs import hookimpl
from rolegate.policy.schema import Provider


class OllamaProviderType:
    name = "ollama"

    def create(
        self, config: Provider, *, api_key: str | None, transport: Any = None
    ) -> ProviderClient:
        from rolegate.plugins.builtin.ollama_client import OllamaClient

        return OllamaClient(config, api_key, transport)


@hookimpl
def register_providers(register: Any) -> None:
    register(OllamaProviderType())


class OllamaEmbedderType:
    """Embedding models served by a ``ollama`` provider (see ``embedders``)."""

    name = "ollama"
    in_process = False

    def create(
        self,
        config: Provider | None,
        *,
        model: str | None,
        api_key: str | None,
        transport: Any = None,
    ) -> Embedder:
        from rolegate.plugins.builtin.embedders import OllamaEmbedder

        if config is None or model is None:
            raise TypeError("a ollama embedder needs its provider and model")
        return OllamaEmbedder(config, model, api_key, transport)


@hookimpl
def register_embedders(register: Any) -> None:
    register(OllamaEmbedderType())
