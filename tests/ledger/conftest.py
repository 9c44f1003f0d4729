from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rolegate.ledger import Ledger, MemoryWork, WorkStore
from tests.ledger.backends import Backend, PostgresBackend, SqliteBackend, make_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty ledger store per test, on each backend."""
    made: Backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    if request.param == "postgres":
        made = make_postgres()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def pg_backend() -> Iterator[PostgresBackend]:
    """For the few behaviours only a database server has (sessions, roles)."""
    made = make_postgres()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def ledger(backend: Backend) -> Iterator[Ledger]:
    opened = backend.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def work(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkStore]:
    """A fresh, empty work store: in memory, and in a ledger on each backend."""
    if request.param == "memory":
        yield MemoryWork()
        return
    made: Backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    if request.param == "postgres":
        made = make_postgres()
    try:
        opened = made.open()
        try:
            yield opened
        finally:
            opened.close()
    finally:
        made.destroy()
