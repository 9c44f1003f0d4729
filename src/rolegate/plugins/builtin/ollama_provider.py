"""Built-in provider type ``ollama``: Ollama's own API via the ollama package.

Chat (streaming or not), keep_alive, model listing; usage from
prompt_eval_count / eval_count. Ollama has no tokenize endpoint, so input
counts before a call are the policy's conservative estimate.

This module only registers the type; the client (and the ollama SDK, slow to import) is
loaded when the first call needs it, so the server starts as fast as the bare SDK.
"""

from __future__ import annotations

from typing import Any

from rolegate.plugins.base import ProviderClient
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


@hookimpl
def register_embedders(register: Any) -> None:
    from rolegate.plugins.builtin.embedders import ServerEmbedderType

    register(ServerEmbedderType(OllamaProviderType()))
