"""`rolegate serve --transport http` limits, against the real process on a loopback port:
Host/Origin checks on every bind, request-head and keep-alive deadlines, a cap on open
connections, and a bounded request body. Every loop here is bounded in count and time, and
only 127.0.0.0/8 addresses are used."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request
from uvicorn.server import ServerState

from rolegate.cli import parse_args
from rolegate.server.http import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    MAX_REQUEST_BODY_BYTES,
    limited_protocol,
    transport_security,
)
from tests.support.servers import free_port

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@dataclass
class Served:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    def post_init(self, **headers: str) -> int:
        response = httpx2.post(self.url, json=INIT, headers={**ACCEPT, **headers}, timeout=10)
        return response.status_code


def loopback_alias_available(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def serving(tmp_path: Path, *extra: str, host: str = "127.0.0.1") -> Iterator[Served]:
    port = free_port()
    stderr = tmp_path / f"stderr-{port}.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rolegate",
                "serve",
                "--transport",
                "http",
                "--host",
                host,
                "--port",
                str(port),
                "--ledger",
                f"sqlite:///{tmp_path}/l.sqlite3",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    served = Served(host, port, proc, stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {stderr.read_text()[-2000:]}")
            try:
                httpx2.get(served.url, timeout=1)
                break
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail("server did not start in 30 s")
                time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # Whatever the clients sent, the server's stderr stayed JSON lines with no Host value.
    text = stderr.read_text()
    assert "evil.example" not in text
    for line in text.splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line[:300]


def is_open(sock: socket.socket) -> bool:
    """True while the server has neither closed nor reset this connection (non-blocking)."""
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return bool(data)


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Wait at most ``within_s`` for the server to close the connection (EOF or reset)."""
    sock.settimeout(within_s)
    try:
        while True:  # bounded: each recv waits at most within_s; the server sends nothing
            if sock.recv(4096) == b"":
                return True
    except (ConnectionResetError, ConnectionAbortedError):
        return True
    except TimeoutError:
        return False


def open_idle(host: str, port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection((host, port), timeout=5) for _ in range(count)]


# -- Host and Origin ------------------------------------------------------------------------


def test_foreign_host_is_rejected_on_a_non_default_loopback_bind(tmp_path: Path) -> None:
    host = "127.0.0.2"
    if not loopback_alias_available(host):
        pytest.skip(f"{host} is not routed to the loopback interface here")
    with serving(tmp_path, "--allow-host", "proxy.example", host=host) as served:
        port = served.port
        assert served.post_init(Host="evil.example") in (403, 421)
        assert served.post_init(Host=f"evil.example:{port}") in (403, 421)
        assert served.post_init(Origin="http://evil.example") in (403, 421)
        assert served.post_init(Host=f"{host}:{port}", Origin="http://evil.example") == 403
        assert served.post_init() == 200  # Host: 127.0.0.2:PORT
        assert served.post_init(Host=f"localhost:{port}") == 200
        assert served.post_init(Origin=f"http://{host}:{port}") == 200
        assert served.post_init(Host="proxy.example", Origin="https://proxy.example") == 200


def _status_for(settings: Any, host: str, origin: str | None = None) -> int | None:
    headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    request = Request({"type": "http", "method": "POST", "path": "/mcp", "headers": headers})

    async def check() -> int | None:
        response = await TransportSecurityMiddleware(settings).validate_request(
            request, is_post=True
        )
        return None if response is None else response.status_code

    return anyio.run(check)


@pytest.mark.parametrize(
    ("bind", "good_host"),
    [
        ("127.0.0.1", "127.0.0.1:8765"),
        ("127.0.0.2", "127.0.0.2:8765"),
        ("localhost", "localhost:8765"),
        ("::1", "[::1]:8765"),
        ("0.0.0.0", "localhost:8765"),
        ("::", "127.0.0.1:8765"),
        ("10.1.2.3", "10.1.2.3:8765"),
        ("192.168.1.20", "proxy.example"),
    ],
)
def test_every_bind_gets_host_and_origin_checks(bind: str, good_host: str) -> None:
    """Without starting a server: the settings serve builds for binds the tests must not
    listen on (0.0.0.0, LAN addresses); a foreign Host gets 421 and a foreign Origin 403."""
    settings = transport_security(bind, 8765, ["proxy.example"])
    assert settings.enable_dns_rebinding_protection
    assert _status_for(settings, "evil.example") == 421
    assert _status_for(settings, "evil.example:8765") == 421
    assert _status_for(settings, good_host) is None
    assert _status_for(settings, good_host, origin="http://evil.example") == 403
    assert _status_for(settings, good_host, origin=f"http://{good_host}") is None
    assert _status_for(settings, "proxy.example:443", origin="https://proxy.example") is None


def test_loopback_names_only_for_loopback_and_wildcard_binds() -> None:
    lan = transport_security("10.1.2.3", 8765)
    assert lan.allowed_hosts == ["10.1.2.3:8765", "10.1.2.3:*"]
    assert lan.allowed_origins == ["http://10.1.2.3:8765", "http://10.1.2.3:*"]
    assert "localhost:8765" in transport_security("127.0.0.2", 8765).allowed_hosts
    pinned = transport_security("127.0.0.1", 8765, ["proxy.example:8443"])
    assert "proxy.example:8443" in pinned.allowed_hosts
    assert "proxy.example:*" not in pinned.allowed_hosts
    assert "https://proxy.example:8443" in pinned.allowed_origins


@pytest.mark.parametrize("name", ["", "evil example", "http://x", "a/b", "x:99999", "[::1"])
def test_bad_allow_host_is_refused(name: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the input
        transport_security("127.0.0.1", 8765, [name])


def test_bad_allow_host_stops_start_up(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "rolegate", "serve", "--transport", "http"),
            *("--allow-host", "a/b", "--port", str(free_port())),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 2
    assert "--allow-host" in proc.stderr


# -- deadlines and caps ---------------------------------------------------------------------


def test_idle_and_half_sent_connections_are_closed_after_the_header_timeout(
    tmp_path: Path,
) -> None:
    timeout_s = 3.0
    extra = ("--header-timeout", str(timeout_s), "--max-connections", "400")
    with serving(tmp_path, *extra) as served:
        started = time.monotonic()
        idle = open_idle(served.host, served.port, 300)
        half = socket.create_connection((served.host, served.port), timeout=5)
        half.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n".encode())
        try:
            # While all 301 are held open, a normal MCP request is still served.
            assert served.post_init() == 200
            assert time.monotonic() - started < timeout_s, "too slow to prove anything"
            assert all(is_open(s) for s in [*idle, half])
            wait = timeout_s + 5
            assert closed_by_server(half, within_s=wait)
            assert all(closed_by_server(s, within_s=wait) for s in idle)
            assert time.monotonic() - started >= timeout_s * 0.9
            assert served.post_init() == 200
        finally:
            for s in [*idle, half]:
                s.close()


def test_keep_alive_connection_is_closed_when_idle(tmp_path: Path) -> None:
    with (
        serving(tmp_path, "--keep-alive-timeout", "1", "--header-timeout", "30") as served,
        socket.create_connection((served.host, served.port), timeout=5) as sock,
    ):
        body = json.dumps(INIT).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        sock.settimeout(10)
        assert sock.recv(12).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert closed_by_server(sock, within_s=10)
        assert time.monotonic() - started < 8


def test_connections_over_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    cap = 50
    extra = ("--max-connections", str(cap), "--header-timeout", "30")
    with serving(tmp_path, *extra) as served:
        time.sleep(0.5)  # the start-up probe's connection is gone by now
        idle = open_idle(served.host, served.port, cap)
        try:
            time.sleep(0.5)
            assert all(is_open(s) for s in idle)
            with socket.create_connection((served.host, served.port), timeout=5) as extra_conn:
                started = time.monotonic()
                assert closed_by_server(extra_conn, within_s=5)
                assert time.monotonic() - started < 2
            assert all(is_open(s) for s in idle)
        finally:
            for s in idle:
                s.close()
        # Once the idle ones are gone, requests are served again (the server notices their
        # close asynchronously: retry a few times within a bounded time).
        deadline = time.monotonic() + 10
        status = 0
        for _ in range(50):
            status = served.post_init()
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200


# -- the protocol in-process, on a fake transport (deadlines too short for a real server) -----


class FakeTransport:
    """Just enough of an asyncio transport for uvicorn's h11 protocol."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.written = b""
        self.aborted = False
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8765)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written += data

    def _lose(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def close(self) -> None:
        self._lose()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


async def slow_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, then streams a response for 1.2 s (like an SSE stream)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(12):
        await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b".", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def connect(state: ServerState, **limits: Any) -> tuple[Any, FakeTransport]:
    config = uvicorn.Config(slow_app, log_config=None, lifespan="off")
    protocol_class = limited_protocol(**limits)
    protocol = protocol_class(config, state, {}, asyncio.get_running_loop())
    transport = FakeTransport(protocol)
    protocol.connection_made(transport)
    return protocol, transport


FAST = {"header_timeout": 0.4, "body_timeout": 0.4, "max_connections": 2}


@pytest.mark.anyio
async def test_protocol_deadlines_for_head_and_body_but_not_for_the_response() -> None:
    state = ServerState()
    _, silent = connect(state, **FAST)
    protocol, half_body = connect(state, **FAST)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
    protocol, complete = connect(state, **{**FAST, "max_connections": 3})
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.6)
    assert silent.aborted  # no request head within 0.4 s
    assert half_body.aborted  # a head, then not the whole body within 0.4 s
    assert not complete.aborted  # its response is still streaming, past both deadlines
    assert complete.written.startswith(b"HTTP/1.1 200")
    end = b"0\r\n\r\n"  # the last chunk
    for _ in range(150):  # at most 3 s
        if complete.written.endswith(end):
            break
        await asyncio.sleep(0.02)
    assert complete.written.endswith(end)
    assert not complete.aborted
    await asyncio.sleep(0.8)
    assert complete.aborted  # idle again and no new request head within 0.4 s
    assert not state.connections


@pytest.mark.anyio
async def test_protocol_closes_connections_over_the_cap_at_once() -> None:
    state = ServerState()
    kept = [connect(state, **{**FAST, "header_timeout": 30})[1] for _ in range(2)]
    _, over = connect(state, **FAST)
    assert over.aborted
    assert not any(t.aborted for t in kept)
    await asyncio.sleep(0)
    assert len(state.connections) == 2
    for transport in kept:
        transport.close()
    await asyncio.sleep(0)
    assert not state.connections


def _status_line(host: str, port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        if body:
            with contextlib.suppress(OSError):  # the server may answer before reading it all
                sock.sendall(body)
        sock.settimeout(30)
        return sock.recv(64).split(b"\r\n", 1)[0]


def test_request_body_is_bounded_at_8_mib(tmp_path: Path) -> None:
    assert MAX_REQUEST_BODY_BYTES == 8 * 1024 * 1024
    with serving(tmp_path) as served:

        def head(size: int) -> bytes:
            return (
                f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
                "Content-Type: application/json\r\n"
                "Accept: application/json, text/event-stream\r\n"
                f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
            ).encode()

        too_big = MAX_REQUEST_BODY_BYTES + 1
        assert b" 413 " in _status_line(served.host, served.port, head(too_big))
        # 5 MiB: over the SDK's default of 4 MiB, under ours. Not JSON-RPC, but not 413.
        body = b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
        status = _status_line(served.host, served.port, head(len(body)), body)
        assert status.startswith(b"HTTP/1.1 ")
        assert b" 413 " not in status


def test_cli_help_states_the_defaults_http_py_uses() -> None:
    args = parse_args(["serve"])
    assert args.allow_host == []
    assert (args.header_timeout, args.keep_alive_timeout, args.max_connections) == (None,) * 3
    shown = subprocess.run(
        [sys.executable, "-m", "rolegate", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "400"},  # one line per option: no wrapped phrases
    )
    text = " ".join(shown.stdout.split())
    assert f"(default: {DEFAULT_HEADER_TIMEOUT_S:g})" in text
    assert f"(default: {DEFAULT_KEEP_ALIVE_S})" in text
    assert f"(default: {DEFAULT_MAX_CONNECTIONS})" in text
