"""The budget ledger: reservations and spend per budget line, exact across processes, and
the work store (stage owners, escalations, decisions) and the quality store (eval runs,
results, evidence) in the same database.

``open_ledger(None)`` opens the default SQLite file; ``sqlite:///abs/path`` another file;
``postgresql://...`` a database shared across machines (needs ``psycopg``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from rolegate.errors import LedgerError
from rolegate.ledger.base import (
    BudgetExhaustedError,
    EvalResult,
    EvalRun,
    HasBudgets,
    Ledger,
    QualityStore,
    Reservation,
    WorkStore,
    default_owner,
)
from rolegate.ledger.memory import MemoryWork
from rolegate.ledger.sqlite import DEFAULT_BUSY_TIMEOUT_S, SqliteLedger, default_path

_FORMS = "use sqlite:///ABSOLUTE/PATH or postgresql://USER@HOST:PORT/DB"


def open_ledger(url: str | None) -> Ledger:
    """Open (creating if needed) the ledger at ``url``; None means the default SQLite file.

    ``sqlite:`` URLs accept ``?busy_timeout=SECONDS`` (default 30). Raises LedgerError
    (BUDGET_UNAVAILABLE) when the URL is unusable or the ledger cannot be opened.
    """
    if url is None:
        return SqliteLedger(default_path())
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        return _open_sqlite(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from rolegate.ledger.postgres import PostgresLedger
        except ImportError as exc:
            raise LedgerError(
                "a postgresql:// ledger needs psycopg: pip install 'psycopg[binary]>=3.2'"
            ) from exc
        return PostgresLedger(url)
    raise LedgerError(f"unknown ledger URL scheme {scheme or url!r}: {_FORMS}")


def _open_sqlite(url: str) -> SqliteLedger:
    parts = urlsplit(url)
    path = unquote(parts.path)
    if path.startswith("//"):  # SQLAlchemy's spelling of an absolute path: sqlite:////abs/path
        path = "/" + path.lstrip("/")
    if parts.netloc or not path.startswith("/") or path in ("/", "/:memory:"):
        raise LedgerError(
            f"bad SQLite ledger URL {url!r}: it must name an absolute file path, shared by "
            f"every rolegate process (no :memory:); {_FORMS}"
        )
    options = dict(parse_qsl(parts.query))
    timeout = DEFAULT_BUSY_TIMEOUT_S
    if "busy_timeout" in options:
        try:
            timeout = float(options.pop("busy_timeout"))
        except ValueError as exc:
            raise LedgerError(f"busy_timeout in {url!r} must be a number of seconds") from exc
    if options:
        raise LedgerError(f"unknown SQLite ledger option(s) {sorted(options)} in {url!r}")
    return SqliteLedger(Path(path), busy_timeout_s=timeout)


__all__ = [
    "BudgetExhaustedError",
    "EvalResult",
    "EvalRun",
    "HasBudgets",
    "Ledger",
    "MemoryWork",
    "QualityStore",
    "Reservation",
    "SqliteLedger",
    "WorkStore",
    "default_owner",
    "default_path",
    "open_ledger",
]
