"""Schema migrations: recorded once each, applied on open, upgrading ledgers made before them."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from rolegate.errors import Code, LedgerError
from rolegate.ledger import Ledger, open_ledger
from rolegate.ledger import migrations as m
from rolegate.policy.decision import ScopeUsage
from tests.ledger import workers
from tests.ledger.backends import Backend, PostgresBackend, SqliteBackend
from tests.ledger.stages import CTX, claim, finish, owner_of, refused, run_processes
from tests.ledger.workers import T0, Budgets, line

NAMES = ["0001_ledger", "0002_work", "0003_quality"]
WORK_TABLES = {
    "rolegate_critiques",
    "rolegate_decisions",
    "rolegate_escalations",
    "rolegate_stage_claims",
    "rolegate_stage_owners",
}

# The schema as rolegate created it before migrations existed (a verbatim copy: a ledger
# file made by that version must keep opening, whatever 0001 becomes in this source tree).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS rolegate_requests (
    request_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    line_ids TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released', 'expired')),
    reserved_micro BIGINT NOT NULL,
    reserved_tokens BIGINT NOT NULL,
    charged_micro BIGINT,
    charged_tokens BIGINT,
    settled_us BIGINT
);
CREATE INDEX IF NOT EXISTS rolegate_requests_open ON rolegate_requests (state, expires_us);
CREATE TABLE IF NOT EXISTS rolegate_charges (
    request_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed')),
    expires_us BIGINT,
    cost_micro BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (request_id, line_id)
);
CREATE INDEX IF NOT EXISTS rolegate_charges_window
    ON rolegate_charges (line_id, at_us, state, expires_us, cost_micro, tokens);
CREATE TABLE IF NOT EXISTS rolegate_audit (
    id {audit_id},
    at_us BIGINT NOT NULL,
    record TEXT NOT NULL
);
"""
OLD_PG_LINES = "CREATE TABLE IF NOT EXISTS rolegate_lines (line_id TEXT PRIMARY KEY)"
CAP = line("global:*:day", usd_micro=1_000)
# What the old version left behind: one open reservation of 300 and one audit record.
OLD_DATA = (
    "INSERT INTO rolegate_requests (request_id, owner, line_ids, at_us, expires_us, state,"
    f" reserved_micro, reserved_tokens) VALUES ('old', 'o', '[\"{CAP.id}\"]', 0,"
    " 9999999999999999, 'reserved', 300, 3)",
    "INSERT INTO rolegate_charges (request_id, line_id, at_us, state, expires_us, cost_micro,"
    f" tokens) VALUES ('old', '{CAP.id}', {workers.T0.timestamp() * 1_000_000:.0f},"
    " 'reserved', 9999999999999999, 300, 3)",
    'INSERT INTO rolegate_audit (at_us, record) VALUES (1, \'{"kind":"old"}\')',
)


def old_statements(serial: str) -> list[str]:
    return [s for s in OLD_SCHEMA.format(audit_id=serial).split(";") if s.strip()]


def check_upgraded(backend: Backend) -> None:
    """The old data is intact and the new tables work, after one open."""
    ledger = backend.open()
    try:
        assert [name for name, _ in backend.migrations()] == NAMES
        assert set(backend.tables()) >= WORK_TABLES
        assert ledger.snapshot(Budgets((CAP,)), T0).get(CAP.id) == ScopeUsage(0, 300, 0, 3)
        assert ledger.recent_audit(5) == [{"kind": "old"}]
        ledger.reserve(
            request_id="new", owner="t", lines=[CAP], cost_micro=700, tokens=0, now=T0,
            lease_s=60,
        )  # fmt: skip
        claim(ledger, "r1")
        finish(ledger, "r1")
        assert owner_of(ledger)["request_id"] == "r1"
    finally:
        ledger.close()


def test_a_new_ledger_records_every_migration_once(backend: Backend, ledger: Ledger) -> None:
    rows = backend.migrations()
    assert [name for name, _ in rows] == NAMES
    assert all(at > 0 for _, at in rows)
    assert set(backend.tables()) >= WORK_TABLES


def test_opening_again_is_a_no_op(backend: Backend, ledger: Ledger) -> None:
    before = backend.migrations()
    claim(ledger, "r1")
    finish(ledger, "r1")
    for _ in range(2):
        backend.open().close()
    assert backend.migrations() == before  # same rows, same applied_us: nothing re-ran
    assert owner_of(ledger)["request_id"] == "r1"


def test_an_old_sqlite_ledger_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in [*old_statements("INTEGER PRIMARY KEY"), *OLD_DATA]:
        conn.execute(statement)
    conn.close()
    backend = SqliteBackend(path)
    assert "rolegate_migrations" not in backend.tables()
    check_upgraded(backend)
    before = backend.migrations()
    backend.open().close()
    assert backend.migrations() == before


def test_an_old_postgres_schema_upgrades_in_place(pg_backend: PostgresBackend) -> None:
    pg_backend.execute(*old_statements("BIGSERIAL PRIMARY KEY"), OLD_PG_LINES, *OLD_DATA)
    assert "rolegate_migrations" not in pg_backend.tables()
    check_upgraded(pg_backend)


def test_processes_opening_a_new_ledger_at_once_migrate_it_once(backend: Backend) -> None:
    barrier, results = CTX.Barrier(8), CTX.Queue()
    reports = run_processes(workers.open_at_barrier, [(backend.url, barrier, results)] * 8, results)
    assert reports == ["ok"] * 8
    assert [name for name, _ in backend.migrations()] == NAMES


def test_a_failing_migration_leaves_the_database_as_it_was(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = m.Migration("0003_broken", ("CREATE TABLE rolegate_broken (x INTEGER)", "NOT SQL"))
    monkeypatch.setattr(m, "MIGRATIONS", (*m.MIGRATIONS, broken))
    with pytest.raises(LedgerError) as caught:
        backend.open()
    assert caught.value.code == Code.BUDGET_UNAVAILABLE
    assert backend.tables() == []  # 0001 and 0002 rolled back with it: one transaction
    monkeypatch.undo()
    backend.open().close()
    assert [name for name, _ in backend.migrations()] == NAMES


def test_a_migration_this_version_does_not_know_is_left_alone(
    backend: Backend, ledger: Ledger
) -> None:
    backend.execute("INSERT INTO rolegate_migrations (name, applied_us) VALUES ('9999_x', 1)")
    backend.open().close()
    assert [name for name, _ in backend.migrations()] == [*NAMES, "9999_x"]


def test_a_role_with_dml_rights_only_uses_a_migrated_schema(
    pg_backend: PostgresBackend,
) -> None:
    pg_backend.open().close()  # the owner migrates
    user, password = "rw_" + uuid.uuid4().hex[:12], uuid.uuid4().hex
    schema = pg_backend.role
    pg_backend._admin(
        f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
        f"GRANT USAGE ON SCHEMA {schema} TO {user}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {user}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {user}",
    )
    try:
        ledger = open_ledger(pg_backend.url_as(user, password))
        try:
            ledger.reserve(
                request_id="r", owner="t", lines=[CAP], cost_micro=1, tokens=1, now=T0,
                lease_s=60,
            )  # fmt: skip
            ledger.put_decision("d", {"k": 1}, now=T0, audit={"kind": "decision"})
            claim(ledger, "r1")
            finish(ledger, "r1")
            ledger.record_critique(
                task_id="task-1", stage=None, role="c", model="m", request_id="c",
                contract_valid=None, now=T0,
            )  # fmt: skip
            assert refused(claim, ledger, "r2").startswith("stage 'plan' of task 'task-1'")
        finally:
            ledger.close()
    finally:
        pg_backend._admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'",
            f"DROP OWNED BY {user}",
            f"DROP ROLE {user}",
        )


def test_a_role_with_dml_rights_only_is_told_to_migrate_first(
    pg_backend: PostgresBackend,
) -> None:
    pg_backend.execute(*old_statements("BIGSERIAL PRIMARY KEY"), OLD_PG_LINES, *OLD_DATA)
    user, password = "rw_" + uuid.uuid4().hex[:12], uuid.uuid4().hex
    schema = pg_backend.role
    pg_backend._admin(
        f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
        f"GRANT USAGE ON SCHEMA {schema} TO {user}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {user}",
    )
    try:
        with pytest.raises(LedgerError) as caught:
            open_ledger(pg_backend.url_as(user, password))
        assert caught.value.code == Code.BUDGET_UNAVAILABLE
        assert "needs schema migration(s) 0001_ledger, 0002_work" in caught.value.message
        assert "open it once as the schema's owner" in caught.value.message
    finally:
        pg_backend._admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'",
            f"DROP OWNED BY {user}",
            f"DROP ROLE {user}",
        )
    check_upgraded(pg_backend)  # the owner then migrates it


def test_migrations_are_uniquely_named_in_order_and_0001_is_idempotent() -> None:
    names = [migration.name for migration in m.MIGRATIONS]
    assert names == NAMES
    assert names == sorted(set(names))
    for dialect in ("sqlite", "postgres"):
        for statement in m.MIGRATIONS[0].statements(dialect):
            assert "IF NOT EXISTS" in statement
