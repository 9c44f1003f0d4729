from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolegate.ledger import Ledger
from tests.ledger.backends import PG_ENV, Backend, PostgresBackend, SqliteBackend, ci_is_set


def _postgres() -> PostgresBackend:
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        message = (
            f"{PG_ENV} is not set, so the PostgreSQL ledger tests cannot run: "
            f'export {PG_ENV}="$(scripts/setup_postgres.sh)"'
        )
        if ci_is_set():
            pytest.fail(message + " (CI is set: a skipped backend is not a pass)")
        pytest.skip(message)
    return PostgresBackend.create(admin_url)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty ledger store per test, on each backend."""
    made: Backend = SqliteBackend(tmp_path / "ledger.sqlite3")
    if request.param == "postgres":
        made = _postgres()
    try:
        yield made
    finally:
        made.destroy()


@pytest.fixture
def pg_backend() -> Iterator[PostgresBackend]:
    """For the few behaviours only a database server has (sessions, roles)."""
    made = _postgres()
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
