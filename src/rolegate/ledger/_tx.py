"""One open transaction, as the ledger's SQL sees it (both backends implement it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders; backends translate."""

    for_update: str  # " FOR UPDATE" where row locks exist, "" where the database is locked

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        """Execute; returns the number of rows affected."""
        ...

    def lock_lines(self, line_ids: Sequence[str]) -> None:
        """Serialize with every other writer on these lines until the transaction ends."""
        ...


class GroupTx(Tx, Protocol):
    """A transaction shared by a group of writes (see ``_group``): each write runs between
    ``savepoint`` and ``release``, or is undone alone by ``undo``."""

    def savepoint(self) -> None: ...

    def release(self) -> None: ...

    def undo(self) -> bool:
        """Roll back to the savepoint; False when the transaction itself is gone (the
        database rolled it back on an I/O error, or the connection broke)."""
        ...
