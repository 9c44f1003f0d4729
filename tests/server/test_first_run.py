"""`rolegate serve` as a new user first meets it: in a terminal it says what it serves (policy,
ledger, which providers answer, what it waits for), one Ctrl-C stops it without a traceback,
and when a client starts it (pipes, no terminal) stdout carries MCP frames only and nothing
is probed."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolegate.policy import load_policy
from rolegate.server.greeting import probe_providers, provider_lines
from tests.support.servers import free_port

POLICY = """\
version: 1
name: first-run
providers:
  ollama: {{type: ollama, base_url: "http://127.0.0.1:{down}", locality: local}}
  local: {{type: openai, base_url: "http://127.0.0.1:{up}/v1", locality: local}}
models:
  llama: {{provider: ollama, name: "llama3.2:3b", context_window: 8192, reserve_tokens: 1024}}
  qwen: {{provider: local, name: qwen, context_window: 8192, reserve_tokens: 1024}}
roles:
  assistant: {{model: llama}}
defaults: {{role: assistant}}
"""


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[int]:
    """A port with an HTTP server on it (any answer counts as reachable)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def policy_file(tmp_path: Path, answering: int) -> Path:
    path = tmp_path / "first-run.yaml"
    path.write_text(POLICY.format(down=free_port(), up=answering))
    return path


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(HOME=str(home), ROLEGATE_CACHE_DIR="off", TERM="dumb")
    return env


class Terminal:
    """``python -m rolegate ARGS`` with a pseudo-terminal as its controlling terminal and its
    stdin, stdout and stderr, as when a person types the command."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: nothing but exec
            try:
                os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, "-m", "rolegate", *args], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.status: int | None = None

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def _pump(self, wait: float) -> bool:
        """Read what is there (waiting up to ``wait``); False once the terminal closed."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed its side
            return False
        self.output += data
        return bool(data)

    def expect(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            if time.monotonic() > deadline or not self._pump(0.1):
                if text in self.text:
                    break
                pytest.fail(f"{text!r} never appeared; the terminal shows:\n{self.text}")
        return self.text

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"still running {timeout:g} s after Ctrl-C:\n{self.text}")
            self._pump(0.1)
        while self._pump(0.05):  # what it wrote last
            pass
        return self.status

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -9
        os.close(self.fd)


@contextlib.contextmanager
def terminal(args: list[str], home: Path) -> Iterator[Terminal]:
    term = Terminal(args, _env(home), home)
    try:
        yield term
    finally:
        with contextlib.suppress(OSError):
            term.close()


def _assert_greeting(text: str, policy_file: Path, tmp_path: Path) -> None:
    policy = load_policy(policy_file)
    assert f"policy:   {policy_file}: first-run revision 0, 2 models" in text
    assert policy.hash in text
    assert f"ledger:   sqlite://{tmp_path}/ledger.sqlite3" in text
    assert "provider: ollama at http://127.0.0.1:" in text
    assert "(llama): not reachable (connection refused): start it with `ollama serve`" in text
    assert "provider: local (openai) at http://127.0.0.1:" in text
    assert "(qwen): reachable" in text


def test_stdio_on_a_terminal_says_what_it_serves_and_stops_on_ctrl_c(
    policy_file: Path, tmp_path: Path
) -> None:
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with terminal(["serve", "--policy", str(policy_file), "--ledger", ledger], tmp_path) as term:
        text = term.expect('"event": "server_start"')
        _assert_greeting(text, policy_file, tmp_path)
        assert "waiting for an MCP client on stdin (Claude Desktop, Cursor" in text
        # One plain block first, then the JSON logs.
        assert text.index("Ctrl-C stops it") < text.index('"event": "server_start"')
        term.send(b"\x03")
        code = term.wait()
    assert code in (0, 130), term.text
    assert "Traceback" not in term.text
    assert term.text.rstrip().endswith("rolegate: stopped")


def test_http_on_a_terminal_prints_its_mcp_url_and_stops_on_ctrl_c(
    policy_file: Path, tmp_path: Path
) -> None:
    port = free_port()
    args = ["serve", "--transport", "http", "--port", str(port), "--policy", str(policy_file)]
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with terminal([*args, "--ledger", ledger], tmp_path) as term:
        text = term.expect('"event": "http_listen"')
        _assert_greeting(text, policy_file, tmp_path)
        assert f"listening on http://127.0.0.1:{port}/mcp (Streamable HTTP)" in text
        # It said so once the port took connections.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        term.send(b"\x03")
        code = term.wait()
    assert code in (0, 130), term.text
    assert "Traceback" not in term.text


def test_started_by_a_client_stdout_carries_only_mcp_and_nothing_is_probed(
    tmp_path: Path,
) -> None:
    # The provider's port listens, so a probe would show up as a connection on it.
    with socket.create_server(("127.0.0.1", 0)) as provider:
        provider.setblocking(False)
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            POLICY.format(down=provider.getsockname()[1], up=provider.getsockname()[1])
        )
        ledger = f"sqlite:///{tmp_path}/ledger.sqlite3"
        args = ["serve", "--policy", str(policy), "--ledger", ledger]
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolegate", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(tmp_path),
            cwd=tmp_path,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            initialize = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "first-run-test", "version": "0"},
                },
            }
            proc.stdin.write(json.dumps(initialize).encode() + b"\n")
            proc.stdin.flush()
            first = json.loads(proc.stdout.readline())
            assert first["jsonrpc"] == "2.0"
            assert first["id"] == 1
            assert first["result"]["serverInfo"]["name"] == "rolegate"
            time.sleep(1.5)  # longer than a start-up probe would take
            proc.stdin.close()  # the client goes away: the server stops
            rest = proc.stdout.read()
            stderr = proc.stderr.read().decode()
            assert proc.wait(timeout=30) == 0, stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with pytest.raises(BlockingIOError):
            provider.accept()
    assert rest == b"", "stdout carries MCP frames and nothing else"
    lines = stderr.splitlines()
    assert lines, "the server logs its start"
    for line in lines:  # no greeting without a terminal: the client's log stays JSON lines
        json.loads(line)


def test_probe_reports_reachable_unreachable_and_unchecked(tmp_path: Path, answering: int) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        POLICY.format(down=free_port(), up=answering).replace(
            "models:",
            '  plugin: {type: openai, base_url: "echo://local", locality: local}\n'
            '  cloud: {type: openai, base_url: "http://127.0.0.1:9/v1", locality: cloud,\n'
            "          api_key_env: FIRST_RUN_TEST_KEY}\nmodels:",
        )
    )
    policy = load_policy(path)
    started = time.monotonic()
    found = {r.provider: r for r in probe_providers(policy, timeout=1.0)}
    assert time.monotonic() - started < 3, "providers are probed at once, not one by one"
    assert (found["ollama"].reachable, found["ollama"].detail) == (False, "connection refused")
    assert found["local"].reachable is True
    assert found["plugin"].reachable is None
    lines = "\n".join(provider_lines(policy, str(path), list(found.values())))
    assert "plugin (openai) at echo://local: not checked (echo:// URL)" in lines
    assert "cloud (openai) at http://127.0.0.1:9/v1: not reachable" in lines
    assert "set FIRST_RUN_TEST_KEY to use it" in lines
