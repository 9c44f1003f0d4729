"""The `rolegate` command run as a user runs it (a subprocess), on ledgers seeded here."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from rolegate.ledger import open_ledger
from tests.engine.test_reports import SEED

Run = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(tmp_path: Path) -> dict[str, str]:
    """No terminal width inherited, no default ledger or cache outside ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), ROLEGATE_CACHE_DIR="off")
    return env


def seed_sqlite(path: Path, rows: Iterable[tuple[int, dict[str, object]]]) -> str:
    """A SQLite ledger holding these audit rows at their times; its URL."""
    url = f"sqlite://{path}"
    open_ledger(url).close()  # the schema, as the ledger makes it
    conn = sqlite3.connect(path)
    try:
        conn.executemany(
            "INSERT INTO rolegate_audit (at_us, record) VALUES (?, ?)",
            [(at, json.dumps(record)) for at, record in rows],
        )
        conn.commit()
    finally:
        conn.close()
    return url


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    """The URL of a SQLite ledger holding tests.engine.test_reports.SEED."""
    return seed_sqlite(tmp_path / "seeded.sqlite3", SEED)


@pytest.fixture
def rolegate(tmp_path: Path) -> Run:
    """Run `python -m rolegate ARGS...`; the finished process (text), never raising."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rolegate", *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=cli_env(tmp_path),
            timeout=120,
            check=False,
        )

    return run


def table_lines(text: str) -> list[list[str]]:
    """A rich table's body rows, in order, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def table_rows(text: str) -> dict[str, list[str]]:
    """A rich table's body rows as {first cell: the other cells}."""
    return {cells[0]: cells[1:] for cells in table_lines(text)}


def table_head(text: str) -> list[str]:
    """A rich table's column headers (its first line drawn with ┃)."""
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip().strip("┃").split("┃")]
