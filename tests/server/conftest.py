from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp_types import ElicitResult

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.core import PolicyEngine
from rolegate.logs import configure_logging
from rolegate.policy import Policy
from rolegate.server.app import build_server
from tests.support.servers import CountingEndpoint

ERAS = ["legacy", "2026-07-28"]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    yield stream
    configure_logging("WARNING")


@pytest.fixture
def sophie_service(sophie: Policy, log_stream: io.StringIO) -> PolicyEngine:
    return build_engine(sophie, env={})


@pytest.fixture
def sophie_server(sophie_service: PolicyEngine) -> MCPServer:
    return build_server(sophie_service)


@pytest.fixture
def codex_server(codex_rs: Policy, log_stream: io.StringIO) -> MCPServer:
    return build_server(build_engine(codex_rs, env={}))


def consent_answerer(
    answer: str, asked: list[str]
) -> Callable[[Any, Any], Awaitable[ElicitResult]]:
    """An elicitation callback that records each question and accepts or declines it."""

    async def on_elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        if answer == "accept":
            return ElicitResult(action="accept", content={"switch": True})
        return ElicitResult(action="decline")

    return on_elicit


@pytest.fixture
def cloud() -> Iterator[CountingEndpoint]:
    """A stand-in 'cloud' endpoint that only counts the connections made to it."""
    endpoint = CountingEndpoint()
    yield endpoint
    endpoint.close()
