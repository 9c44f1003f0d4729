"""The Streamable HTTP listener's limits: Host/Origin checks, bearer auth, connection caps.

Everything here runs before the MCP SDK sees a request, so none of it may be unbounded:
a connection that never finishes its request head is closed after ``header_timeout``, one
that never finishes its body after ``BODY_TIMEOUT_S``; an idle keep-alive connection after
``keep_alive``; connections over ``max_connections`` are closed as soon as they are
accepted; request bodies over ``MAX_REQUEST_BODY_BYTES`` get 413.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
from collections.abc import Sequence
from typing import Any, cast

import h11
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

DEFAULT_HEADER_TIMEOUT_S = 10.0
"""A connection must send a complete request head within this many seconds."""
DEFAULT_KEEP_ALIVE_S = 5
"""An idle keep-alive connection is closed after this many seconds (uvicorn's setting)."""
DEFAULT_MAX_CONNECTIONS = 256
"""Open connections at most; one more is closed at once, so file descriptors stay bounded."""
BODY_TIMEOUT_S = 30.0
"""Once the head is in, the rest of the request body must arrive within this many seconds."""
MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024
"""Larger request bodies get 413 (the SDK's RequestBodyLimitMiddleware; its default is 4 MiB)."""
GRACEFUL_SHUTDOWN_S = 5
"""On SIGTERM, open streams get this long to finish before the server exits."""

LOOPBACK_NAMES = {"localhost"}
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_HOST_NAME = re.compile(r"^[A-Za-z0-9._\-]+$")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _split_host(name: str) -> tuple[str, int | None]:
    """``name`` as it appears in a Host header (IPv6 in brackets) and its port, if any.
    Raises ValueError for anything that is not a host name or address."""
    text = name.strip()
    port: str | None = None
    if text.startswith("["):
        address, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host name: {name!r}")
        port = rest[1:] if rest else None
        ipaddress.IPv6Address(address)
        host = f"[{address}]"
    elif text.count(":") > 1:
        ipaddress.IPv6Address(text)
        host = f"[{text}]"
    else:
        host, sep, port_text = text.partition(":")
        port = port_text if sep else None
        if not _HOST_NAME.match(host):
            raise ValueError(f"not a host name: {name!r}")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a port: {name!r}")
    return host, int(port)


def transport_security(
    bind: str, port: int, allow_hosts: Sequence[str] = ()
) -> TransportSecuritySettings:
    """DNS-rebinding protection for every bind, not only the SDK's three loopback names.

    Allowed Host headers: the bind host on ``port`` (and on any port); ``localhost``,
    ``127.0.0.1`` and ``[::1]`` on ``port`` when the bind is loopback or a wildcard address
    (0.0.0.0 and :: accept loopback connections too); each ``allow_hosts`` name as given, or
    on any port when it has none. Allowed Origins: ``http://`` + each of those, and also
    ``https://`` for ``allow_hosts`` (a TLS-terminating reverse proxy).
    """
    host, _ = _split_host(bind)
    hosts = [f"{host}:{port}", f"{host}:*"]
    if is_loopback(bind) or _is_unspecified(bind):
        hosts += [f"{name}:{port}" for name in LOOPBACK_HOSTS]
    origins = [f"http://{h}" for h in hosts]
    for name in allow_hosts:
        extra, extra_port = _split_host(name)
        entries = [f"{extra}:{extra_port}"] if extra_port else [extra, f"{extra}:*"]
        hosts += entries
        origins += [f"{scheme}://{entry}" for entry in entries for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(dict.fromkeys(hosts)),
        allowed_origins=list(dict.fromkeys(origins)),
    )


class BearerAuth:
    """Pure-ASGI middleware: 401 unless ``Authorization: Bearer <token>`` matches.

    It wraps the whole app, so every path needs the token: ``/mcp`` and ``/metrics`` alike
    (a Prometheus scrape config sends it with ``authorization: {credentials_file: ...}``)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                body = b'{"error":"unauthorized","message":"send Authorization: Bearer <token>"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="rolegate"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines on what the client owes, and a connection cap.

    uvicorn's keep-alive timer only runs between requests while no byte has arrived, so a
    client that sends nothing before its first request, half a request head, or half a body
    would hold its connection (and a file descriptor) forever. Here a deadline runs whenever
    the server is waiting for the client: ``header_timeout`` while h11 waits for a complete
    request head (from ``connection_made``, and again after each response), then
    ``body_timeout`` while it waits for the rest of the body. It stops once the request is
    fully received, so long responses (SSE streams) are never cut. Use
    :func:`limited_protocol` to set the limits.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.deadline: asyncio.TimerHandle | None = None
        self.deadline_state: type[h11.IDLE] | type[h11.SEND_BODY] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Over the cap: close before reading a byte. No log line, so a flood of
            # connections cannot also flood the logs.
            self.connections.discard(self)
            transport.abort()
            return
        self._sync_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._sync_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_deadline()

    def _sync_deadline(self) -> None:
        """Run a deadline while h11 waits for the client's head or body; stop it otherwise."""
        state = self.conn.their_state
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel_deadline()
        elif state is not self.deadline_state:
            self._cancel_deadline()
            timeout = self.header_timeout if state is h11.IDLE else self.body_timeout
            self.deadline = self.loop.call_later(timeout, self._deadline_passed)
            self.deadline_state = state

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = None
        self.deadline_state = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        self.deadline_state = None
        if not self.transport.is_closing():
            # abort, not close: nothing is owed to this client, and a client that does not
            # read would otherwise keep the socket open while the write buffer drains.
            # connection_lost then tells a running request that the client is gone.
            self.transport.abort()


def limited_protocol(
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: float = BODY_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these limits, for ``uvicorn.run(http=...)``."""
    if not header_timeout > 0 or not body_timeout > 0:
        raise ValueError("timeouts must be positive")
    if max_connections < 1:
        raise ValueError("the connection cap must be at least 1")
    limits = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
    }
    return cast(
        "type[GuardedH11Protocol]", type("GuardedH11Protocol", (GuardedH11Protocol,), limits)
    )


def run_http(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    keep_alive: int = DEFAULT_KEEP_ALIVE_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve ``app`` with uvicorn under these limits until SIGINT/SIGTERM."""
    if keep_alive < 1:
        raise ValueError("the keep-alive timeout must be at least 1 second")
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=limited_protocol(header_timeout=header_timeout, max_connections=max_connections),
        ws="none",
        # Requests get 503 once every connection slot is taken (uvicorn counts open
        # connections and running requests against this).
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # No uvicorn handlers: its records reach rolegate's JSON handler on the root logger.
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
