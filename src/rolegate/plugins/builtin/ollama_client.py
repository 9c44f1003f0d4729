"""Built-in provider type ``ollama``: Ollama's own API via the ollama package.

Chat (streaming or not), keep_alive, model listing; usage from
prompt_eval_count / eval_count. Ollama has no tokenize endpoint, so input
counts before a call are the policy's conservative estimate.

Residency (``ResidencyClient``): ``/api/ps`` lists the loaded models; an empty
``/api/generate`` request loads a model (``keep_alive`` sets how long it stays) and
``keep_alive: 0`` unloads it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
import ollama

from rolegate.plugins.base import (
    ChatRequest,
    ChatResult,
    Message,
    OnDelta,
    ResidentModel,
    TokenCount,
)
from rolegate.plugins.builtin.errors import ollama_errors, to_provider_error
from rolegate.plugins.retry import with_retries
from rolegate.policy.schema import Provider

ERRORS = ollama_errors()
T = TypeVar("T")


def wire_keep_alive(value: str | None) -> str | int | None:
    """``keep_alive`` as Ollama reads it. A bare number ('-1', '300') must go as a JSON
    number of seconds (negative: forever): a string goes through Go's time.ParseDuration,
    which refuses a number without a unit (HTTP 400 "missing unit in duration")."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value  # '30m', '-1h', '500ms': a Go duration


class OllamaClient:
    def __init__(
        self,
        config: Provider,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        kwargs: dict[str, Any] = {
            "timeout": httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            "headers": headers,
        }
        if transport is not None:
            kwargs["transport"] = transport
        self._client = ollama.AsyncClient(host=config.base_url, **kwargs)

    async def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult:
        async def attempt() -> ChatResult:
            received = [0]
            try:
                if request.stream:
                    return await self._stream(request, on_delta, received)
                return await self._once(request)
            except ERRORS.handled as exc:
                raise to_provider_error(
                    ERRORS,
                    exc,
                    model=request.model,
                    base_url=self.config.base_url,
                    received=received[0] > 0,
                    chunks=received[0],
                ) from exc

        return await with_retries(
            attempt,
            model=request.model,
            retries=self.config.max_retries,
            timeout_s=request.timeout_s,
        )

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": request.max_output_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "options": options,
        }
        if request.keep_alive is not None:
            kwargs["keep_alive"] = wire_keep_alive(request.keep_alive)
        if request.json_schema is not None:
            kwargs["format"] = request.json_schema
        return kwargs

    async def _once(self, request: ChatRequest) -> ChatResult:
        resp = await self._client.chat(**self._kwargs(request), stream=False)
        return ChatResult(
            text=resp.message.content or "",
            input_tokens=resp.prompt_eval_count,
            output_tokens=resp.eval_count,
            finish_reason=resp.done_reason,
            streamed=False,
        )

    async def _stream(
        self, request: ChatRequest, on_delta: OnDelta | None, received: list[int]
    ) -> ChatResult:
        started = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        input_tokens = output_tokens = None
        finish: str | None = None
        stream: AsyncIterator[ollama.ChatResponse] = await self._client.chat(
            **self._kwargs(request), stream=True
        )
        try:
            async for chunk in stream:
                received[0] += 1
                delta = chunk.message.content if chunk.message else None
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    parts.append(delta)
                    if on_delta is not None:
                        await on_delta(delta)
                if chunk.done:
                    input_tokens, output_tokens = chunk.prompt_eval_count, chunk.eval_count
                    finish = chunk.done_reason
        finally:
            # Closing the generator closes the HTTP response: upstream generation stops.
            await stream.aclose()  # type: ignore[attr-defined]
        return ChatResult(
            text="".join(parts),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            finish_reason=finish,
            ttft_s=ttft,
            streamed=True,
        )

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> TokenCount | None:
        return None

    async def _mapped(self, call: Callable[[], Awaitable[T]], model: str | None) -> T:
        """``call()``, its SDK errors mapped to ProviderError (``model`` None: no model)."""
        try:
            return await call()
        except ERRORS.handled as exc:
            raise to_provider_error(
                ERRORS, exc, model=model, base_url=self.config.base_url
            ) from exc

    async def _retried(self, call: Callable[[], Awaitable[T]], model: str | None) -> T:
        """``_mapped`` under the retry rule, within the provider's timeout."""
        return await with_retries(
            lambda: self._mapped(call, model),
            model=model if model is not None else self.config.base_url,
            retries=self.config.max_retries,
            timeout_s=self.config.timeout_s,
        )

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """Vectors from Ollama's ``/api/embed``."""
        resp = await self._retried(
            lambda: self._client.embed(model=model, input=list(texts)), model
        )
        return [list(v) for v in resp.embeddings]

    async def list_models(self) -> list[str]:
        listing = await self._mapped(self._client.list, None)
        return sorted(m.model for m in listing.models if m.model)

    async def resident_models(self) -> list[ResidentModel]:
        listing = await self._retried(self._client.ps, None)
        return [
            ResidentModel(
                name=name,
                size_bytes=None if m.size is None else int(m.size),
                vram_bytes=None if m.size_vram is None else int(m.size_vram),
                expires_at=None if m.expires_at is None else m.expires_at.isoformat(),
            )
            for m in listing.models
            if (name := m.name or m.model)
        ]

    async def load(self, model: str, keep_alive: str | None) -> None:
        """An empty generate request: Ollama loads the model and generates nothing."""
        await self._retried(
            lambda: self._client.generate(model=model, keep_alive=wire_keep_alive(keep_alive)),
            model,
        )

    async def unload(self, model: str) -> None:
        await self._retried(lambda: self._client.generate(model=model, keep_alive=0), model)

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]
