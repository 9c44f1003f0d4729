"""Embedding models on model servers: ``/v1/embeddings`` (OpenAI, vLLM, llama.cpp's server
with ``--embeddings``, LM Studio) and Ollama's ``/api/embed``.

Each is registered under its provider type by that type's built-in plugin; the SDKs are
imported when the first embedder is made. Errors map to ProviderError codes through the
same tables the chat clients use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rolegate.errors import Code, ProviderError
from rolegate.plugins.builtin.errors import ollama_errors, openai_errors, to_provider_error
from rolegate.plugins.retry import with_retries
from rolegate.policy.schema import Provider


def _check(vectors: Sequence[Sequence[float]], texts: Sequence[str], what: str) -> None:
    if len(vectors) != len(texts) or any(len(v) == 0 for v in vectors):
        raise ProviderError(
            f"{what}: asked for {len(texts)} embedding(s), got {len(vectors)} usable",
            code=Code.BAD_RESPONSE,
        )


class OpenAIEmbedder:
    def __init__(
        self, config: Provider, model: str, api_key: str | None, transport: Any = None
    ) -> None:
        import httpx2
        import openai

        self.config = config
        self.model = model
        self.id = f"openai:{config.base_url}:{model}"
        self._errors = openai_errors()
        timeout = httpx2.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._http = httpx2.AsyncClient(transport=transport, timeout=timeout)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=api_key or "unused",
            max_retries=0,
            timeout=timeout,
            http_client=self._http,
        )

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        async def attempt() -> Sequence[Sequence[float]]:
            try:
                resp = await self._client.embeddings.create(
                    model=self.model, input=list(texts), encoding_format="float"
                )
            except self._errors.handled as exc:
                raise to_provider_error(
                    self._errors, exc, model=self.model, base_url=self.config.base_url
                ) from exc
            ordered = sorted(resp.data, key=lambda d: d.index)
            vectors = [d.embedding for d in ordered]
            _check(vectors, texts, self.model)
            return vectors

        return await with_retries(
            attempt, model=self.model, retries=self.config.max_retries,
            timeout_s=self.config.timeout_s,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


class OllamaEmbedder:
    def __init__(
        self, config: Provider, model: str, api_key: str | None, transport: Any = None
    ) -> None:
        import httpx
        import ollama

        self.config = config
        self.model = model
        self.id = f"ollama:{config.base_url}:{model}"
        self._errors = ollama_errors()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        kwargs: dict[str, Any] = {
            "timeout": httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            "headers": headers,
        }
        if transport is not None:
            kwargs["transport"] = transport
        self._client = ollama.AsyncClient(host=config.base_url, **kwargs)

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        async def attempt() -> Sequence[Sequence[float]]:
            try:
                resp = await self._client.embed(model=self.model, input=list(texts))
            except self._errors.handled as exc:
                raise to_provider_error(
                    self._errors, exc, model=self.model, base_url=self.config.base_url
                ) from exc
            vectors = [list(v) for v in resp.embeddings]
            _check(vectors, texts, self.model)
            return vectors

        return await with_retries(
            attempt, model=self.model, retries=self.config.max_retries,
            timeout_s=self.config.timeout_s,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]
