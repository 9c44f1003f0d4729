"""Spend that could not be committed is kept on disk until the ledger takes it.

A provider call that ran has been paid for. If the ledger cannot be written afterwards, the
charge (request id, cost, tokens, the call's audit record: ids and counts, never text) is
written to one file in the spool directory, fsync'd, and committed on the next admission
once the ledger answers again; the commit is idempotent by request id, so a charge spooled
by two processes, or drained twice, counts once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from rolegate.errors import LedgerError, RolegateError
from rolegate.ledger import Ledger, SqliteLedger, default_path
from rolegate.logs import get_logger

log = get_logger()


def spool_dir_for(ledger: Ledger) -> Path:
    """Beside a SQLite ledger file; for a database, in the user's data directory."""
    if isinstance(ledger, SqliteLedger):
        return ledger.path.with_name(ledger.path.name + ".spool")
    digest = hashlib.sha256(ledger.description.encode()).hexdigest()[:16]
    return default_path().parent / "spool" / digest


class Spool:
    """One directory of uncommitted charges, one fsync'd file each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(
        self,
        request_id: str,
        *,
        cost_micro: int,
        tokens: int,
        at: datetime,
        audit: Mapping[str, object],
    ) -> Path:
        """Write the charge durably; raises OSError if even that is impossible."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{request_id}.json"
        temp = final.with_suffix(".tmp")
        body = json.dumps(
            {
                "request_id": request_id,
                "cost_micro": cost_micro,
                "tokens": tokens,
                "at": at.isoformat(),
                "audit": dict(audit),
            },
            sort_keys=True,
            default=str,
        ).encode()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        return final

    def pending(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []

    def drain(self, ledger: Ledger) -> int:
        """Commit every spooled charge the ledger takes now; returns how many."""
        done = 0
        for path in self.pending():
            try:
                entry = json.loads(path.read_text())
                ledger.commit(
                    entry["request_id"],
                    cost_micro=int(entry["cost_micro"]),
                    tokens=int(entry["tokens"]),
                    now=datetime.fromisoformat(entry["at"]),
                    audit={**entry["audit"], "spooled": True},
                )
            except FileNotFoundError:
                continue  # another process drained it first
            except LedgerError:
                return done  # still down: try again at the next admission
            except (RolegateError, ValueError, KeyError, TypeError) as exc:
                # The ledger answers but cannot take this charge (e.g. it was replaced and
                # no longer knows the reservation): set it aside for a person, loudly.
                self._quarantine(path, exc)
                continue
            path.unlink(missing_ok=True)
            done += 1
        if done:
            log.info("spool_drained", charges=done)
        return done

    def _quarantine(self, path: Path, exc: Exception) -> None:
        aside = self.directory / "quarantine"
        aside.mkdir(exist_ok=True)
        os.replace(path, aside / path.name)
        log.error(
            "spool_entry_quarantined",
            file=str(aside / path.name),
            error_type=type(exc).__name__,
            code=str(getattr(exc, "code", "")),
        )
