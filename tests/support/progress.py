"""A progress callback for MCP tool calls that keeps every message it receives."""

from __future__ import annotations

import anyio


class Progress:
    """Records progress messages; with ``cancel`` and ``after``, cancels that scope once
    ``after`` messages have arrived (a client giving up mid-stream)."""

    def __init__(self, cancel: anyio.CancelScope | None = None, after: int = 0) -> None:
        self.messages: list[str | None] = []
        self._cancel, self._after = cancel, after

    async def __call__(self, done: float, total: float | None, message: str | None) -> None:
        self.messages.append(message)
        if self._cancel is not None and len(self.messages) == self._after:
            self._cancel.cancel()

    @property
    def text(self) -> str:
        return "".join(m or "" for m in self.messages)
