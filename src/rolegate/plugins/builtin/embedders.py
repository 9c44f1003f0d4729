"""Embedding models on model servers, through the provider's own client: ``/v1/embeddings``
(OpenAI, vLLM, llama.cpp's server with ``--embeddings``, LM Studio) and Ollama's
``/api/embed``.

``ServerEmbedderType`` wraps a provider type whose clients can embed; each built-in provider
plugin registers one under its own type name. The client (its SDK, timeouts, transport,
retries and error table) is the one chat calls use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from rolegate.errors import Code, ProviderError
from rolegate.plugins.base import Embedder, ProviderType
from rolegate.policy.schema import Provider


@runtime_checkable
class EmbeddingClient(Protocol):
    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


class ServerEmbedder:
    """One embedding model on one provider."""

    def __init__(self, client: EmbeddingClient, model: str, embedder_id: str) -> None:
        self.client = client
        self.model = model
        self.id = embedder_id

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        vectors = await self.client.embed(self.model, texts)
        if len(vectors) != len(texts) or any(len(v) == 0 for v in vectors):
            raise ProviderError(
                f"{self.model}: asked for {len(texts)} embedding(s), got {len(vectors)} usable",
                code=Code.BAD_RESPONSE,
            )
        return vectors

    async def aclose(self) -> None:
        await self.client.aclose()


class ServerEmbedderType:
    """Embedders for the policy providers of ``provider_type`` (named after it)."""

    in_process = False

    def __init__(self, provider_type: ProviderType) -> None:
        self.name = provider_type.name
        self._provider_type = provider_type

    def create(
        self,
        config: Provider | None,
        *,
        model: str | None,
        api_key: str | None,
        transport: Any = None,
    ) -> Embedder:
        if config is None or model is None:
            raise TypeError(f"a {self.name} embedder needs its provider and model")
        client = self._provider_type.create(config, api_key=api_key, transport=transport)
        if not isinstance(client, EmbeddingClient):
            raise TypeError(f"{self.name} clients cannot embed")
        return ServerEmbedder(client, model, f"{self.name}:{config.base_url}:{model}")
