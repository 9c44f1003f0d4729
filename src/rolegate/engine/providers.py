"""Provider clients, one per provider of the policy, and the slots calls queue for.

Clients are created on first use from the provider plugins' types and closed together by
``aclose`` (the server's lifespan calls it). Each model has ``max_concurrency`` slots; local
models of a weight class (heavy, light) also share the policy's lane for that class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import anyio

from rolegate.errors import Code, ProviderError
from rolegate.plugins.base import Message, ProviderClient
from rolegate.plugins.manager import Registry
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo


class ProviderPool:
    """Clients, model slots and weight lanes for one server process."""

    def __init__(
        self,
        policy: Policy,
        registry: Registry,
        *,
        env: Mapping[str, str] | None = None,
        transports: Mapping[str, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.env = os.environ if env is None else env
        # Injected transports (tests, proxies) per provider name; never hidden defaults.
        self.transports = dict(transports or {})
        self._clients: dict[str, ProviderClient] = {}
        self._slots = {
            mid: anyio.CapacityLimiter(info.model.max_concurrency)
            for mid, info in policy.models.items()
        }
        lanes = policy.doc.lanes
        self._lanes = {
            name: anyio.CapacityLimiter(limit)
            for name, limit in (("heavy", lanes.heavy), ("light", lanes.light))
            if limit is not None
        }

    def missing_provider_types(self) -> list[str]:
        types = {p.type for p in self.policy.doc.providers.values()}
        return sorted(types - set(self.registry.providers))

    def client(self, provider: str) -> ProviderClient:
        found = self._clients.get(provider)
        if found is not None:
            return found
        config = self.policy.doc.providers[provider]
        ptype = self.registry.providers.get(config.type)
        if ptype is None:
            raise ProviderError(
                f"no plugin provides provider type {config.type!r} (provider {provider!r})",
                code=Code.PROVIDER_UNAVAILABLE,
            )
        api_key = None
        if config.api_key_env is not None:
            api_key = self.env.get(config.api_key_env)
            if not api_key:
                raise ProviderError(
                    f"provider {provider!r} needs an API key: set {config.api_key_env}",
                    code=Code.PROVIDER_UNAVAILABLE,
                )
        client = ptype.create(config, api_key=api_key, transport=self.transports.get(provider))
        self._clients[provider] = client
        return client

    @property
    def open_providers(self) -> list[str]:
        """The providers whose clients are open now."""
        return sorted(self._clients)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def slot(self, info: ModelInfo) -> anyio.CapacityLimiter:
        return self._slots[info.id]

    def lane(self, info: ModelInfo) -> AbstractAsyncContextManager[None]:
        lane = self._lanes.get(info.model.weight) if info.locality == "local" else None
        return lane if lane is not None else nullcontext()

    async def count(
        self, info: ModelInfo, messages: list[Message], *, server: bool = True
    ) -> tuple[int, bool]:
        """Input tokens for admission, counted once per call: with the model's offline
        tokenizer when the policy names one; from the server for ``tokenizer: server``;
        else the calibrated estimate, replaced by the server's exact count only when the
        estimate does not fit and the server is local (cloud servers get text only in the
        admitted call). Real usage from the provider replaces either once the call is done.
        ``server`` False: the model's server is not loaded, so the estimate stands.
        """
        settings = self.policy.doc.token_estimate
        text = "\n".join(m.content for m in messages)
        overhead = settings.overhead_tokens * len(messages)
        tokenizer = info.model.tokenizer
        counter = self.policy.counters.get(tokenizer)
        if counter.exact:
            return counter.count(text, overhead), True
        estimate = counter.count(text, overhead)
        limit = info.max_input_tokens
        over = limit is not None and estimate > limit and info.locality == "local"
        if server and (tokenizer == "server" or (tokenizer is None and over)):
            client = self.client(info.model.provider)
            exact = await client.count_tokens(info.model.name, messages)
            if exact is not None:
                return exact.tokens, True
        return estimate, False

    async def probe(self, model: str) -> bool:
        """Is the model's server reachable? A short model listing, for ask-first fallbacks."""
        info = self.policy.models[model]
        connect = self.policy.doc.providers[info.model.provider].connect_timeout_s
        try:
            with anyio.fail_after(connect):
                await self.client(info.model.provider).list_models()
        except (ProviderError, TimeoutError):
            return False
        return True

    def timeout_s(self, info: ModelInfo) -> float:
        return info.model.timeout_s or self.policy.doc.providers[info.model.provider].timeout_s
