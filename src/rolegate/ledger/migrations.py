"""Every change to the ledger's schema, as an ordered list of named migrations.

A database records the migrations it has had in ``rolegate_migrations``; opening a ledger
applies the missing ones, in order, inside one write transaction (SQLite: BEGIN IMMEDIATE;
PostgreSQL: under an advisory lock), recording each. A migration, once released, never
changes: a new change is a new migration at the end of the list.

``0001_ledger`` is the schema rolegate had before this table existed; its statements are
all ``CREATE ... IF NOT EXISTS``, so a ledger created then (tables present, no migrations
table) upgrades cleanly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from rolegate.ledger._tx import Tx

Dialect = Literal["sqlite", "postgres"]

#: The autoincrementing key of append-only tables, per dialect.
_SERIAL: dict[Dialect, str] = {"sqlite": "INTEGER PRIMARY KEY", "postgres": "BIGSERIAL PRIMARY KEY"}

MIGRATIONS_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS rolegate_migrations ("
    "name TEXT PRIMARY KEY, applied_us BIGINT NOT NULL)"
)

# BIGINT has INTEGER affinity in SQLite, so one DDL serves both; only the serial key differs.
_LEDGER = (
    """CREATE TABLE IF NOT EXISTS rolegate_requests (
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
)""",
    "CREATE INDEX IF NOT EXISTS rolegate_requests_open ON rolegate_requests (state, expires_us)",
    """CREATE TABLE IF NOT EXISTS rolegate_charges (
    request_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed')),
    expires_us BIGINT,
    cost_micro BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (request_id, line_id)
)""",
    """CREATE INDEX IF NOT EXISTS rolegate_charges_window
    ON rolegate_charges (line_id, at_us, state, expires_us, cost_micro, tokens)""",
    """CREATE TABLE IF NOT EXISTS rolegate_audit (
    id {serial},
    at_us BIGINT NOT NULL,
    record TEXT NOT NULL
)""",
)
# PostgreSQL only: one row per budget line, locked by the writers on that line.
_LINES = "CREATE TABLE IF NOT EXISTS rolegate_lines (line_id TEXT PRIMARY KEY)"

_WORK = (
    """CREATE TABLE IF NOT EXISTS rolegate_decisions (
    decision_id TEXT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    record TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS rolegate_stage_owners (
    task_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    authority TEXT NOT NULL,
    contract_valid BOOLEAN,
    replaced TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    PRIMARY KEY (task_id, stage)
)""",
    """CREATE TABLE IF NOT EXISTS rolegate_stage_claims (
    task_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    expires_us BIGINT NOT NULL,
    PRIMARY KEY (task_id, stage)
)""",
    """CREATE TABLE IF NOT EXISTS rolegate_escalations (
    task_id TEXT NOT NULL,
    role TEXT NOT NULL,
    step BIGINT NOT NULL,
    provenance_id TEXT NOT NULL,
    from_model TEXT,
    to_model TEXT,
    fired TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    consent TEXT,
    at_us BIGINT NOT NULL,
    PRIMARY KEY (task_id, role, step)
)""",
    """CREATE TABLE IF NOT EXISTS rolegate_critiques (
    id {serial},
    task_id TEXT NOT NULL,
    stage TEXT,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    contract_valid BOOLEAN,
    at_us BIGINT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS rolegate_critiques_task ON rolegate_critiques (task_id, id)",
)

# Eval runs and their per-case results (and live contract checks): the quality evidence
# ``QualityStore.evidence`` counts. DOUBLE PRECISION has REAL affinity in SQLite. The
# at_us indexes serve the history reads of policy replay (decisions and audit by time).
_QUALITY = (
    """CREATE TABLE IF NOT EXISTS rolegate_eval_runs (
    run_id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    suite_hash TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    job TEXT NULL,
    models TEXT NOT NULL,
    cases BIGINT NOT NULL,
    owner TEXT NOT NULL,
    started_us BIGINT NOT NULL,
    finished_us BIGINT NULL
)""",
    "CREATE INDEX IF NOT EXISTS rolegate_eval_runs_suite ON rolegate_eval_runs (suite, started_us)",
    """CREATE TABLE IF NOT EXISTS rolegate_eval_results (
    id {serial},
    run_id TEXT NULL,
    suite TEXT NOT NULL,
    case_id TEXT NOT NULL,
    model TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('eval', 'live')),
    outcome TEXT NOT NULL CHECK (outcome IN ('pass', 'fail', 'error', 'refused')),
    score DOUBLE PRECISION NULL,
    latency_ms DOUBLE PRECISION NULL,
    ttft_ms DOUBLE PRECISION NULL,
    input_tokens BIGINT NULL,
    output_tokens BIGINT NULL,
    cost_micro BIGINT NOT NULL DEFAULT 0,
    code TEXT NULL,
    at_us BIGINT NOT NULL
)""",
    """CREATE INDEX IF NOT EXISTS rolegate_eval_results_case
    ON rolegate_eval_results (suite, model, case_id, id)""",
    "CREATE INDEX IF NOT EXISTS rolegate_eval_results_run ON rolegate_eval_results (run_id)",
    "CREATE INDEX IF NOT EXISTS rolegate_decisions_at ON rolegate_decisions (at_us)",
    "CREATE INDEX IF NOT EXISTS rolegate_audit_at ON rolegate_audit (at_us)",
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One named schema change; its statements per dialect (``{serial}`` is filled in)."""

    name: str
    common: tuple[str, ...]
    postgres_only: tuple[str, ...] = ()

    def statements(self, dialect: Dialect) -> list[str]:
        extra = self.postgres_only if dialect == "postgres" else ()
        return [sql.format(serial=_SERIAL[dialect]) for sql in (*self.common, *extra)]


#: In the order they are applied. Append only; never edit or reorder a released one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_ledger", _LEDGER, postgres_only=(_LINES,)),
    Migration("0002_work", _WORK),
    Migration("0003_quality", _QUALITY),
)


def has_migrations_table(tx: Tx, dialect: Dialect) -> bool:
    """Without DDL and without failing: reading a missing table aborts a PG transaction."""
    if dialect == "postgres":
        found = tx.rows("SELECT to_regclass('rolegate_migrations') IS NOT NULL")
        return bool(found[0][0])
    found = tx.rows(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rolegate_migrations'"
    )
    return bool(found)


def applied(tx: Tx, dialect: Dialect) -> dict[str, int]:
    """Migration name -> when it was applied (microseconds since the epoch)."""
    if not has_migrations_table(tx, dialect):
        return {}
    return {
        str(name): int(at)
        for name, at in tx.rows("SELECT name, applied_us FROM rolegate_migrations")
    }


def pending(tx: Tx, dialect: Dialect) -> list[Migration]:
    """The migrations this database has not had yet, in order (reads only)."""
    done = applied(tx, dialect)
    return [m for m in MIGRATIONS if m.name not in done]


def migrate(tx: Tx, dialect: Dialect) -> list[str]:
    """Apply every missing migration in order, recording each; returns their names.

    The caller holds the schema lock (SQLite's write lock, or PostgreSQL's advisory lock)
    so the list read here cannot change before this transaction commits. A name this code
    does not know (written by a newer rolegate) is left alone.
    """
    tx.run(MIGRATIONS_TABLE_DDL)
    missing = pending(tx, dialect)
    for migration in missing:
        for statement in migration.statements(dialect):
            tx.run(statement)
        tx.run(
            "INSERT INTO rolegate_migrations (name, applied_us) VALUES (?, ?)",
            [migration.name, time.time_ns() // 1000],
        )
    return [m.name for m in missing]
