"""Built-in provider type ``openai``: any server speaking the OpenAI chat API.

OpenAI, vLLM, llama.cpp's server, LM Studio, DeepSeek, Moonshot/Kimi and
OpenRouter. Uses the openai SDK's AsyncOpenAI (its own retries off: rolegate
retries only before any byte arrived). Exact input-token counts come from
llama.cpp's /apply-template + /tokenize where the server offers them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx2
import openai

from rolegate.errors import Code, ProviderError
from rolegate.plugins.base import (
    ChatRequest,
    ChatResult,
    Message,
    OnDelta,
    TokenCount,
)
from rolegate.plugins.builtin.errors import openai_errors, to_provider_error
from rolegate.plugins.retry import with_retries
from rolegate.policy.schema import Provider

ERRORS = openai_errors()


class OpenAIClient:
    def __init__(
        self,
        config: Provider,
        api_key: str | None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        timeout = httpx2.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._http = httpx2.AsyncClient(transport=transport, timeout=timeout)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=api_key or "unused",
            max_retries=0,
            timeout=timeout,
            http_client=self._http,
        )
        root = config.base_url.rstrip("/")
        self._server_root = root.removesuffix("/v1")
        self._can_tokenize: bool | None = None

    async def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult:
        async def attempt() -> ChatResult:
            state = _StreamState()
            try:
                if request.stream:
                    return await self._stream(request, on_delta, state)
                return await self._once(request)
            except ERRORS.handled as exc:
                raise to_provider_error(
                    ERRORS,
                    exc,
                    model=request.model,
                    base_url=self.config.base_url,
                    received=state.received,
                    chunks=state.deltas,
                    output_tokens=state.output_tokens,
                ) from exc

        return await with_retries(
            attempt,
            model=request.model,
            retries=self.config.max_retries,
            timeout_s=request.timeout_s,
        )

    async def _once(self, request: ChatRequest) -> ChatResult:
        resp = await self._client.chat.completions.create(**_params(request))
        if not resp.choices:
            raise ProviderError(f"{request.model}: response had no choices", code=Code.BAD_RESPONSE)
        choice = resp.choices[0]
        usage = resp.usage
        return ChatResult(
            text=choice.message.content or "",
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            finish_reason=choice.finish_reason,
            streamed=False,
        )

    async def _stream(
        self, request: ChatRequest, on_delta: OnDelta | None, state: _StreamState
    ) -> ChatResult:
        params = _params(request)
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        stream = await self._client.chat.completions.create(**params)
        # `async with` closes the HTTP response, so a cancelled caller stops the upstream work.
        async with stream:
            async for chunk in stream:
                state.received = True
                if chunk.usage is not None:
                    state.input_tokens = chunk.usage.prompt_tokens
                    state.output_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    delta = choice.delta.content if choice.delta else None
                    if choice.finish_reason:
                        state.finish = choice.finish_reason
                    if delta:
                        if state.ttft is None:
                            state.ttft = time.perf_counter() - started
                        state.parts.append(delta)
                        state.deltas += 1
                        if on_delta is not None:
                            await on_delta(delta)
        return ChatResult(
            text="".join(state.parts),
            input_tokens=state.input_tokens,
            output_tokens=state.output_tokens,
            finish_reason=state.finish,
            ttft_s=state.ttft,
            streamed=True,
        )

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> TokenCount | None:
        """Exact count via llama.cpp's /apply-template + /tokenize; None elsewhere."""
        if self._can_tokenize is False:
            return None
        payload = {"messages": [{"role": m.role, "content": m.content} for m in messages]}
        try:
            templ = await self._http.post(f"{self._server_root}/apply-template", json=payload)
            if templ.status_code != 200:
                self._can_tokenize = False
                return None
            prompt = templ.json()["prompt"]
            tok = await self._http.post(
                f"{self._server_root}/tokenize",
                json={"content": prompt, "add_special": True, "parse_special": True},
            )
            if tok.status_code != 200:
                self._can_tokenize = False
                return None
            tokens = tok.json()["tokens"]
        except (httpx2.HTTPError, KeyError, ValueError, TypeError):
            return None
        self._can_tokenize = True
        return TokenCount(tokens=len(tokens), exact=True)

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """Vectors from ``/v1/embeddings`` (OpenAI, vLLM, llama.cpp with --embeddings)."""

        async def attempt() -> list[list[float]]:
            try:
                resp = await self._client.embeddings.create(
                    model=model, input=list(texts), encoding_format="float"
                )
            except ERRORS.handled as exc:
                raise to_provider_error(
                    ERRORS, exc, model=model, base_url=self.config.base_url
                ) from exc
            return [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]

        return await with_retries(
            attempt, model=model, retries=self.config.max_retries, timeout_s=self.config.timeout_s
        )

    async def list_models(self) -> list[str]:
        try:
            page = await self._client.models.list()
        except ERRORS.handled as exc:
            raise to_provider_error(ERRORS, exc, model=None, base_url=self.config.base_url) from exc
        return sorted(m.id for m in page.data)

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


class _StreamState:
    __slots__ = ("deltas", "finish", "input_tokens", "output_tokens", "parts", "received", "ttft")

    def __init__(self) -> None:
        self.received = False
        self.parts: list[str] = []
        self.deltas = 0
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.finish: str | None = None
        self.ttft: float | None = None


def _params(request: ChatRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_output_tokens,
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.json_schema is not None:
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": request.json_schema},
        }
    params.update(request.extra)
    return params
