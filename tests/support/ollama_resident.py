"""An Ollama-protocol server that keeps models resident, for the residency tests.

Why it exists: no real Ollama can run here (no package registry ships its server), and the
third-party server the other Ollama tests use, PyPI's ollama-proxy-plus, answers ``/api/ps``
with an empty list always and ignores ``keep_alive`` (it fronts a server that has no notion
of loading). So residency is tested against this one, and against a real Ollama when
OLLAMA_HOST is set.

It follows Ollama's docs/api.md, and api/types.go for ``keep_alive``:

- ``GET /`` answers "Ollama is running"; ``GET /api/tags`` lists the configured models.
- ``GET /api/ps`` lists the loaded models: name, model, size, size_vram, digest, details,
  expires_at (RFC 3339), context_length.
- ``POST /api/generate`` and ``POST /api/chat`` load the model first (taking ``load_delay_s``
  when it was not loaded; concurrent loads of one model load it once). An empty request (no
  prompt, no messages) only loads it and answers ``done_reason: "load"``; with
  ``keep_alive: 0`` it unloads it instead (``"unload"``). Otherwise they answer ``REPLY``
  (cut to ``options.num_predict`` words), as NDJSON when ``stream`` is true (the default).
- ``keep_alive``: a number is seconds, a string a Go duration ("30m", "1h30m", "0"); a
  negative value keeps the model forever; absent means ``default_keep_alive`` (Ollama: 5m).
  0 unloads the model once the request is answered. A model past its expiry is unloaded.
- An unknown model is 404 ``{"error": "model '<name>' not found"}``; a bad body is 400.

``loads``, ``unloads`` and ``requests`` (every request's path and JSON body) are there for
assertions; the server runs in a thread of the test process, so they can be read directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.servers import free_port

REPLY = "Hello from the resident test server."
FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)  # Go's time.Duration(math.MaxInt64)
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: object) -> float:
    """Seconds a model stays loaded (``inf``: forever), as Ollama's ``api.Duration`` reads it."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"unsupported keep_alive: {value!r}")
    if isinstance(value, int | float):
        return float("inf") if value < 0 else float(int(value))
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"time: invalid duration {value!r}")
    seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    return float("inf") if seconds < 0 else seconds


@dataclass
class Loaded:
    expires: float  # time.time() when it unloads by itself; inf: never
    last_used: float


@dataclass
class ResidentOllama:
    """The server's state. ``sizes``: the models it has (name -> bytes in memory)."""

    sizes: dict[str, int]
    load_delay_s: float = 0.0
    default_keep_alive: float = 300.0
    base_url: str = ""
    loads: int = 0
    unloads: int = 0
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    loaded: dict[str, Loaded] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of the requests made to ``path``, in order."""
        return [body for p, body in self.requests if p == path]

    # -- state -----------------------------------------------------------------------------

    def _expire(self) -> None:
        now = time.time()
        for name in [n for n, m in self.loaded.items() if m.expires <= now]:
            self._drop(name)

    def _drop(self, name: str) -> None:
        if self.loaded.pop(name, None) is not None:
            self.unloads += 1

    async def _load(self, name: str) -> float:
        """Load ``name`` if it is not loaded; the seconds that took."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._expire()
            if name in self.loaded:
                return 0.0
            started = time.perf_counter()
            await asyncio.sleep(self.load_delay_s)
            self.loaded[name] = Loaded(expires=float("inf"), last_used=time.time())
            self.loads += 1
            return time.perf_counter() - started

    def _keep(self, name: str, keep_alive: float) -> None:
        """The request is answered: the model stays ``keep_alive`` seconds from now."""
        if keep_alive == 0:
            self._drop(name)
        elif name in self.loaded:
            now = time.time()
            self.loaded[name] = Loaded(expires=now + keep_alive, last_used=now)

    # -- HTTP ------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/ps", self._ps, methods=["GET"]),
                Route("/api/generate", self._generate, methods=["POST"]),
                Route("/api/chat", self._chat, methods=["POST"]),
            ]
        )

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    def _describe(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "size": self.sizes[name],
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "test",
                "families": ["test"],
                "parameter_size": "1B",
                "quantization_level": "Q4_0",
            },
        }

    async def _tags(self, request: Request) -> Response:
        self.requests.append(("/api/tags", {}))
        models = [{**self._describe(n), "modified_at": "2026-01-01T00:00:00Z"} for n in self.sizes]
        return JSONResponse({"models": models})

    async def _ps(self, request: Request) -> Response:
        self.requests.append(("/api/ps", {}))
        self._expire()
        models = []
        now = datetime.now(UTC)
        for name, m in sorted(self.loaded.items(), key=lambda item: -item[1].last_used):
            left = (
                FOREVER if m.expires == float("inf") else timedelta(seconds=m.expires - time.time())
            )
            models.append(
                {
                    **self._describe(name),
                    "size_vram": self.sizes[name],
                    "expires_at": (now + left).isoformat(),
                    "context_length": 4096,
                }
            )
        return JSONResponse({"models": models})

    async def _generate(self, request: Request) -> Response:
        return await self._answer(request, "/api/generate")

    async def _chat(self, request: Request) -> Response:
        return await self._answer(request, "/api/chat")

    async def _read(self, request: Request, path: str) -> tuple[dict[str, Any], str, float]:
        """The body (kept in ``requests``), the model and keep_alive in seconds."""
        body = json.loads(await request.body())
        if not isinstance(body, dict):
            raise TypeError("the body is not a JSON object")
        self.requests.append((path, body))
        name = body.get("model") or ""
        if not name:
            raise ValueError("model is required")
        raw = body.get("keep_alive")
        return body, name, self.default_keep_alive if raw is None else parse_keep_alive(raw)

    async def _answer(self, request: Request, path: str) -> Response:
        try:
            body, name, keep_alive = await self._read(request, path)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if name not in self.sizes:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        chat = path == "/api/chat"
        empty = not (body.get("messages") if chat else body.get("prompt"))
        if empty and keep_alive == 0:
            self._drop(name)
            return JSONResponse(_chunk(name, chat, "", done_reason="unload"))
        load_s = await self._load(name)
        if empty:
            self._keep(name, keep_alive)
            return JSONResponse(_chunk(name, chat, "", done_reason="load"))
        limit = (body.get("options") or {}).get("num_predict")
        words = REPLY.split(" ")[: limit if isinstance(limit, int) and limit >= 0 else None]
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        final = _chunk(
            name,
            chat,
            "",
            done_reason="stop" if len(words) == len(REPLY.split(" ")) else "length",
            load_duration=int(load_s * 1e9),
            prompt_eval_count=_prompt_words(body, chat),
            eval_count=len(pieces),
        )
        if not body.get("stream", True):
            self._keep(name, keep_alive)
            text = {"message": {"role": "assistant", "content": "".join(pieces)}}
            return JSONResponse({**final, **(text if chat else {"response": "".join(pieces)})})

        async def lines() -> AsyncIterator[bytes]:
            try:
                for piece in pieces:
                    yield (json.dumps(_chunk(name, chat, piece)) + "\n").encode()
                    await asyncio.sleep(0)
                yield (json.dumps(final) + "\n").encode()
            finally:
                self._keep(name, keep_alive)

        return StreamingResponse(lines(), media_type="application/x-ndjson")


def _chunk(name: str, chat: bool, text: str, **extra: Any) -> dict[str, Any]:
    """One response object of /api/chat (``message``) or /api/generate (``response``)."""
    content = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    created = datetime.now(UTC).isoformat()
    return {
        "model": name,
        "created_at": created,
        **content,
        "done": "done_reason" in extra,
        **extra,
    }


def _prompt_words(body: Mapping[str, Any], chat: bool) -> int:
    if chat:
        return sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    return len(str(body.get("prompt", "")).split())


@contextmanager
def resident_ollama(
    sizes: Mapping[str, int],
    *,
    load_delay_s: float = 0.0,
    default_keep_alive: str | float = "5m",
) -> Iterator[ResidentOllama]:
    """The server on a free loopback port, in a thread, for the ``with`` block."""
    state = ResidentOllama(
        dict(sizes),
        load_delay_s=load_delay_s,
        default_keep_alive=parse_keep_alive(default_keep_alive),
    )
    port = free_port()
    config = uvicorn.Config(
        state.app(), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="resident-ollama", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the resident Ollama test server did not start on port {port}")
        time.sleep(0.01)
    state.base_url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
