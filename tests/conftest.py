from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rolegate.policy import Policy, load_policy
from tests.support.llama import LlamaServer, llama_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "policies"


def example_path(stem: str) -> Path:
    (path,) = EXAMPLES.glob(f"{stem}*.yaml")
    return path


@pytest.fixture
def anyio_backend() -> str:
    """Every async test runs on asyncio (the MCP SDK's and the server's loop)."""
    return "asyncio"


@pytest.fixture(scope="session")
def mac_mini() -> Policy:
    return load_policy(example_path("000"))


@pytest.fixture(scope="session")
def codex_rs() -> Policy:
    return load_policy(example_path("001"))


@pytest.fixture(scope="session")
def three_role() -> Policy:
    return load_policy(example_path("002"))


@pytest.fixture(scope="session")
def sophie() -> Policy:
    return load_policy(example_path("003"))


@pytest.fixture(scope="session")
def orchestrator() -> Policy:
    return load_policy(example_path("004"))


@pytest.fixture(scope="session")
def llama() -> Iterator[LlamaServer]:
    """One real llama.cpp server for the session."""
    with llama_server() as server:
        yield server
