"""The two ledger backends as test fixtures: a fresh store per test, and ways to break it.

Plain picklable dataclasses: child processes (spawn) receive them as arguments.
"""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from rolegate.ledger import Ledger, open_ledger

PG_ENV = "ROLEGATE_TEST_PG_URL"


@dataclass(frozen=True)
class SqliteBackend:
    path: Path
    kind: Literal["sqlite"] = "sqlite"

    @property
    def url(self) -> str:
        return f"sqlite://{self.path}"

    def short_timeout_url(self) -> str:
        return f"{self.url}?busy_timeout=0.3"

    def open(self) -> Ledger:
        return open_ledger(self.url)

    def request_states(self) -> dict[str, str]:
        """Every request row, read directly (white box): id -> state."""
        conn = sqlite3.connect(self.path)
        try:
            return dict(conn.execute("SELECT request_id, state FROM rolegate_requests"))
        finally:
            conn.close()

    @contextmanager
    def hold_write_lock(self, line_id: str) -> Iterator[None]:
        """Another client keeps the writer's lock (here: the database's) and never lets go."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()

    @contextmanager
    def unreachable(self) -> Iterator[None]:
        """The ledger file is moved away and a directory takes its place."""
        away = self.path.with_name(self.path.name + ".away")
        self.path.rename(away)
        self.path.mkdir()
        try:
            yield
        finally:
            self.path.rmdir()
            away.rename(self.path)

    def make_unwritable(self) -> None:
        """Every file write of this process fails (EFBIG), as on a full or read-only disk.

        chmod cannot do it: the tests may run as root. Call it in a child process only.
        """
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))

    def migrations(self) -> list[tuple[str, int]]:
        """(name, applied_us) of every row of rolegate_migrations, by name."""
        conn = sqlite3.connect(self.path)
        try:
            return list(conn.execute("SELECT name, applied_us FROM rolegate_migrations ORDER BY 1"))
        finally:
            conn.close()

    def tables(self) -> list[str]:
        """The rolegate_* tables that exist, by name."""
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name LIKE 'rolegate%' ORDER BY 1"
            )
            return [str(r[0]) for r in rows]
        finally:
            conn.close()

    def execute(self, *statements: str) -> None:
        """Raw SQL on the ledger's database, outside the ledger (white box)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    def destroy(self) -> None:
        return None  # tmp_path is cleaned up by pytest


@dataclass(frozen=True)
class PostgresBackend:
    """A fresh schema owned by a fresh login role, per test; the ledger connects as that role."""

    admin_url: str
    role: str
    password: str
    kind: Literal["postgres"] = "postgres"

    @classmethod
    def create(cls, admin_url: str) -> PostgresBackend:
        backend = cls(admin_url, "rg_" + uuid.uuid4().hex[:12], uuid.uuid4().hex)
        backend._admin(
            f"CREATE ROLE {backend.role} LOGIN PASSWORD '{backend.password}'",
            f"CREATE SCHEMA {backend.role} AUTHORIZATION {backend.role}",
        )
        return backend

    def _url(self, options: str) -> str:
        parts = urlsplit(self.admin_url)
        host = parts.netloc.rsplit("@", 1)[-1]
        query = "&".join(q for q in (parts.query, "options=" + quote(options)) if q)
        netloc = f"{self.role}:{self.password}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    @property
    def url(self) -> str:
        return self._url(f"-c search_path={self.role}")

    def url_as(self, role: str, password: str) -> str:
        """The URL for another login role, on this backend's schema."""
        parts = urlsplit(self.url)
        netloc = f"{role}:{password}@{parts.netloc.rsplit('@', 1)[-1]}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def short_timeout_url(self) -> str:
        return self._url(f"-c search_path={self.role} -c lock_timeout=300")

    def open(self) -> Ledger:
        return open_ledger(self.url)

    def _admin(self, *statements: str) -> list[tuple[object, ...]]:
        import psycopg

        rows: list[tuple[object, ...]] = []
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for statement in statements:
                cur = conn.execute(statement)
                rows = cur.fetchall() if cur.description else []
        return rows

    def request_states(self) -> dict[str, str]:
        rows = self._admin(f"SELECT request_id, state FROM {self.role}.rolegate_requests")
        return {str(r[0]): str(r[1]) for r in rows}

    def migrations(self) -> list[tuple[str, int]]:
        rows = self._admin(
            f"SELECT name, applied_us FROM {self.role}.rolegate_migrations ORDER BY 1"
        )
        return [(str(r[0]), int(str(r[1]))) for r in rows]

    def tables(self) -> list[str]:
        rows = self._admin(
            "SELECT tablename FROM pg_tables WHERE schemaname = "
            f"'{self.role}' AND tablename LIKE 'rolegate%' ORDER BY 1"
        )
        return [str(r[0]) for r in rows]

    def execute(self, *statements: str) -> None:
        """Raw SQL as the backend's own role, on its schema (white box)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    @contextmanager
    def hold_write_lock(self, line_id: str) -> Iterator[None]:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {self.role}.rolegate_lines VALUES (%s) ON CONFLICT DO NOTHING",
                [line_id],
            )
            with conn.transaction():
                conn.execute(
                    f"SELECT 1 FROM {self.role}.rolegate_lines WHERE line_id = %s FOR UPDATE",
                    [line_id],
                )
                yield

    @contextmanager
    def unreachable(self) -> Iterator[None]:
        """The ledger's sessions are killed and its role may not log in until restored."""
        self._admin(
            f"ALTER ROLE {self.role} NOLOGIN",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.role}'",
        )
        try:
            yield
        finally:
            self._admin(f"ALTER ROLE {self.role} LOGIN")

    def drop_sessions(self) -> None:
        """What a server restart or failover does to the ledger's idle connections."""
        self._admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.role}'"
        )

    def make_unwritable(self) -> None:
        """The ledger's role keeps SELECT but loses every write privilege."""
        self._admin(
            f"REVOKE INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {self.role} FROM {self.role}"
        )

    def destroy(self) -> None:
        self._admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.role}'",
            f"DROP SCHEMA IF EXISTS {self.role} CASCADE",
            f"DROP ROLE IF EXISTS {self.role}",
        )


Backend = SqliteBackend | PostgresBackend


def ci_is_set() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def make_postgres() -> PostgresBackend:
    """A fresh PostgreSQL backend; skips the test without one (fails it under CI)."""
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
