"""The ollama client's residency calls (``ResidencyClient``): what the server holds, load, unload.

`resident` is tests/support/ollama_resident.py, an Ollama-protocol server that keeps models
loaded as docs/api.md says (ollama-proxy-plus cannot: its /api/ps is always empty and it
ignores keep_alive); `real` is a real Ollama when OLLAMA_HOST is set. What only the test
server can show (the request bodies, load counts, delays) is checked on it alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from rolegate.errors import Code, ProviderError
from rolegate.plugins.base import ChatRequest, Message, ResidencyClient, ResidentModel
from rolegate.plugins.builtin.ollama_client import OllamaClient
from rolegate.plugins.builtin.openai_client import OpenAIClient
from rolegate.policy.schema import Provider
from tests.support.ollama import real_ollama
from tests.support.ollama_resident import ResidentOllama, resident_ollama
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio

SIZES = {"tiny:1b": 1_300_000_000, "other:3b": 3_400_000_000}
UNKNOWN = "rolegate-no-such-model:0b"


@dataclass
class Target:
    base_url: str
    model: str
    server: ResidentOllama | None = None  # the test server, when it is the target


@pytest.fixture(scope="module")
def server() -> Iterator[ResidentOllama]:
    with resident_ollama(SIZES) as state:
        yield state


@pytest.fixture(params=["resident", "real"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "real":
        real = real_ollama()
        found = Target(real.base_url, real.model)
    else:
        state: ResidentOllama = request.getfixturevalue("server")
        found = Target(state.base_url, "tiny:1b", state)
    anyio.run(unload_ours, found)
    if found.server is not None:
        found.server.requests.clear()
        found.server.loads = found.server.unloads = 0
    return found


async def unload_ours(target: Target) -> None:
    """Start from nothing loaded: every model on the test server (shared by the module's
    tests), only the target model on a real Ollama."""
    async with make_client(target.base_url) as client:
        for m in await client.resident_models():
            if target.server is not None or m.name == target.model:
                await client.unload(m.name)


class make_client:
    """An OllamaClient for ``base_url``, closed on exit."""

    def __init__(self, base_url: str, **config: float) -> None:
        provider = Provider(type="ollama", base_url=base_url, locality="local", **config)
        self.client = OllamaClient(provider, None)

    async def __aenter__(self) -> OllamaClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def named(models: list[ResidentModel], name: str) -> ResidentModel | None:
    return next((m for m in models if m.name == name), None)


def expires_in(model: ResidentModel) -> timedelta:
    assert model.expires_at is not None
    return datetime.fromisoformat(model.expires_at) - datetime.now(UTC)


def test_the_ollama_client_is_a_residency_client() -> None:
    config = Provider(type="ollama", base_url="http://127.0.0.1:1", locality="local")
    assert isinstance(OllamaClient(config, None), ResidencyClient)
    openai = Provider(type="openai", base_url="http://127.0.0.1:1/v1", locality="local")
    assert not isinstance(OpenAIClient(openai, None), ResidencyClient)


async def test_nothing_is_resident_at_first(target: Target) -> None:
    async with make_client(target.base_url) as client:
        models = await client.resident_models()
    if target.server is not None:
        assert models == []
    else:
        assert named(models, target.model) is None


async def test_a_loaded_model_is_listed_with_its_size(target: Target) -> None:
    async with make_client(target.base_url) as client:
        await client.load(target.model, "10m")
        model = named(await client.resident_models(), target.model)
    assert model is not None
    if target.server is not None:
        assert (model.size_bytes, model.vram_bytes) == (SIZES["tiny:1b"],) * 2
        assert target.server.loads == 1
    else:
        assert model.size_bytes is not None
        assert model.size_bytes > 0
        assert model.vram_bytes is not None
        assert 0 <= model.vram_bytes <= model.size_bytes
    assert timedelta(minutes=9) < expires_in(model) <= timedelta(minutes=10)


async def test_a_chat_loads_the_model_too(target: Target) -> None:
    request = ChatRequest(
        model=target.model,
        messages=[Message("user", "Say hi.")],
        max_output_tokens=8,
        timeout_s=120,
        keep_alive="7m",
    )
    async with make_client(target.base_url) as client:
        result = await client.chat(request)
        model = named(await client.resident_models(), target.model)
    assert result.text
    assert model is not None
    assert timedelta(minutes=6) < expires_in(model) <= timedelta(minutes=7)
    if target.server is not None:
        assert target.server.loads == 1
        assert result.text == "Hello from the resident test server."


async def test_an_unloaded_model_is_gone(target: Target) -> None:
    async with make_client(target.base_url) as client:
        await client.load(target.model, None)
        assert named(await client.resident_models(), target.model) is not None
        await client.unload(target.model)
        assert named(await client.resident_models(), target.model) is None
    if target.server is not None:
        assert (target.server.loads, target.server.unloads) == (1, 1)
        assert target.server.bodies("/api/generate")[-1] == {
            "model": target.model,
            "stream": False,
            "keep_alive": 0,
        }


async def test_keep_alive_reaches_the_server(target: Target) -> None:
    async with make_client(target.base_url) as client:
        await client.load(target.model, "30m")
        thirty = named(await client.resident_models(), target.model)
        await client.load(target.model, "-1m")  # negative: forever
        forever = named(await client.resident_models(), target.model)
    assert thirty is not None
    assert forever is not None
    assert timedelta(minutes=29) < expires_in(thirty) <= timedelta(minutes=30)
    assert expires_in(forever) > timedelta(days=365 * 100)
    if target.server is not None:
        first, second = target.server.bodies("/api/generate")
        # An empty generate request: no prompt, so the server only loads the model.
        assert first == {"model": target.model, "stream": False, "keep_alive": "30m"}
        assert second["keep_alive"] == "-1m"
        assert target.server.loads == 1  # already loaded: the second call only re-timed it


async def test_without_keep_alive_the_server_default_applies(server: ResidentOllama) -> None:
    async with make_client(server.base_url) as client:
        await client.unload("other:3b")
        server.requests.clear()
        await client.load("other:3b", None)
        model = named(await client.resident_models(), "other:3b")
        await client.unload("other:3b")
    assert server.bodies("/api/generate")[0] == {"model": "other:3b", "stream": False}
    assert model is not None
    assert model.size_bytes == SIZES["other:3b"]
    assert timedelta(minutes=4) < expires_in(model) <= timedelta(minutes=5)  # Ollama's 5m


async def test_a_model_leaves_when_its_keep_alive_runs_out(target: Target) -> None:
    async with make_client(target.base_url) as client:
        await client.load(target.model, "1s")
        with anyio.fail_after(30):
            while named(await client.resident_models(), target.model) is not None:
                await anyio.sleep(0.2)


async def test_an_unreachable_server_is_unavailable() -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    async with make_client(gone, max_retries=0) as client:
        for call in (
            client.resident_models,
            lambda: client.load("tiny:1b", "5m"),
            lambda: client.unload("tiny:1b"),
        ):
            with pytest.raises(ProviderError) as caught:
                await call()
            assert caught.value.code == Code.PROVIDER_UNAVAILABLE
            assert f"cannot reach {gone}" in caught.value.message


async def test_loading_an_unknown_model_is_the_servers_404(target: Target) -> None:
    async with make_client(target.base_url, max_retries=1) as client:
        with pytest.raises(ProviderError) as caught:
            await client.load(UNKNOWN, "5m")
    err = caught.value
    assert err.code == Code.PROVIDER_ERROR
    assert err.answered  # the server answered: never retried, no fallback as if it were down
    assert err.message.startswith(f"{UNKNOWN}: server answered HTTP 404: ")
    assert "not found" in err.message
    if target.server is not None:
        assert len(target.server.bodies("/api/generate")) == 1


async def test_a_slow_load_gets_the_providers_timeout() -> None:
    with resident_ollama(SIZES, load_delay_s=1.0) as slow:
        async with make_client(slow.base_url, timeout_s=5, connect_timeout_s=0.2) as client:
            await client.load("tiny:1b", "5m")  # longer than the connect timeout: fine
            assert named(await client.resident_models(), "tiny:1b") is not None
        async with make_client(slow.base_url, timeout_s=0.3, max_retries=0) as client:
            with pytest.raises(ProviderError) as caught:
                await client.load("other:3b", "5m")
    assert caught.value.code == Code.PROVIDER_TIMEOUT
