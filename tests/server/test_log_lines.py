"""Every stderr line of a running server is one JSON object, and caller text never reaches it:
not through rolegate's events, nor through library records (the SDK, httpx, uvicorn, asyncio),
their tracebacks, or Python warnings."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from rolegate.logs import OMITTED, JsonLineHandler, get_logger
from tests.server.conftest import ERAS

pytestmark = pytest.mark.anyio

MARKER = "SECRET-CALLER-TEXT-7f3a"

POLICY = """
version: 1
name: log-lines-test
providers:
  echo: {type: echo, base_url: "echo://", locality: local}
models:
  echo-1: {provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512,
           streaming: {internal: true}}
roles:
  parrot: {model: echo-1}
"""

M = MARKER
BAD_MESSAGES: list[Any] = [
    [{"role": M, "content": M}],
    [{M: M}],
    [{"role": "user", "content": M, M: M}],
    [{"role": "user", "content": {M: M}}],
    [M],
    M,
    {"role": "user", "content": M},
    [[M]],
]

# (tool, arguments): every free-text and name argument carries the marker.
HOSTILE_CALLS: list[tuple[str, dict[str, Any]]] = [
    (M, {M: M}),  # unknown tool
    ("run_role", {"role": M, "prompt": M}),  # unknown role
    ("run_role", {"role": "parrot", "prompt": M, "system": M}),  # succeeds: the echo answers
    ("run_role", {"role": "parrot", "prompt": M, "job": M, "channel": M}),
    ("run_role", {"role": "parrot", "prompt": M, "task_id": M, "stage": M}),
    ("run_role", {"role": "parrot", "prompt": M, "decision_id": M}),
    ("run_role", {"role": "parrot", "prompt": M, "max_output_tokens": M}),  # bad type
    ("run_role", {"role": "parrot", "prompt": {M: M}, "local_only": M}),  # bad types
    ("run_role", {"role": [M], "prompt": M}),
    ("run_role", {"role": "parrot", "prompt": f"{M} " * 50_000}),  # over the prompt limit
    *[("run_role", {"role": "parrot", "messages": bad}) for bad in BAD_MESSAGES],
    ("route_task", {"task": M, "job": M, "role": M, "channel": M, "needs": [M], "risk": M}),
    ("route_task", {"task": M, "context_tokens": M}),
    ("route_task", {"task": M, M: M}),  # unexpected argument
    ("route_task", {"task": f"{M} " * 50_000}),
    ("check_budget", {"role": M, "model": M, "job": M, "text": M}),
    ("check_budget", {"role": "parrot", "text": M, "input_tokens": M}),
    ("escalate", {"role": M, "reason": M}),
    ("escalate", {"role": "parrot", "reason": M, "confidence": M}),
]


def _write_policy(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return policy


def serve_argv(tmp_path: Path) -> list[str]:
    ledger = f"sqlite:///{tmp_path}/l.sqlite3"
    return ["serve", "--policy", str(_write_policy(tmp_path)), "--ledger", ledger]


def assert_json_lines_without_marker(stderr: str) -> list[dict[str, Any]]:
    assert MARKER not in stderr
    events: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line[:300]!r}")
        assert isinstance(event, dict), line[:300]
        events.append(event)
    return events


async def _attempt(call: Any) -> None:
    with contextlib.suppress(MCPError):  # a protocol error is a fine answer to a hostile call
        await call


@pytest.mark.parametrize("era", ERAS)
async def test_hostile_stdio_session_logs_only_json_and_no_caller_text(
    tmp_path: Path, era: str
) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "rolegate", *serve_argv(tmp_path)]
    )
    with tempfile.TemporaryFile("w+") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=era) as client:
            for tool, args in HOSTILE_CALLS:
                await _attempt(client.call_tool(tool, args))
            await _attempt(client.read_resource(f"rolegate://tasks/{M}"))
            await _attempt(client.read_resource(f"{M.lower()}://{M}"))
            await _attempt(client.get_prompt(M, {M: M}))
            # The server survived all of it.
            tools = await client.list_tools()
            echoed = await client.call_tool("run_role", {"role": "parrot", "prompt": "one two"})
        errlog.seek(0)
        stderr = errlog.read()
    assert tools.tools
    assert not echoed.is_error, echoed.content
    events = assert_json_lines_without_marker(stderr)
    assert any(e.get("event") == "server_start" for e in events), stderr[:2000]
    assert sum(e.get("event") == "tool_call" for e in events) >= len(HOSTILE_CALLS) // 2


def _read_until_id(proc: subprocess.Popen[bytes], wanted: int, timeout_s: float) -> None:
    """Read JSON-RPC lines from the server's stdout until the response with id ``wanted``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    buffer = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        for line in buffer.split(b"\n"):
            try:
                if json.loads(line).get("id") == wanted:
                    return
            except (ValueError, AttributeError):
                continue
    pytest.fail(f"no response with id {wanted} within {timeout_s:g} s")


def test_malformed_json_rpc_on_stdio_logs_only_json_and_no_caller_text(tmp_path: Path) -> None:
    """Bytes that are not MCP at all: invalid JSON, wrong shapes, unknown methods."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": M, "version": M},
        },
    }
    junk = [
        json.dumps(init),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        f"{{not json {M}",
        json.dumps([M, {M: M}]),
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": M, "params": {M: M}}),
        json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": M}),
        json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": [M]}}),
        json.dumps({"jsonrpc": M, "id": {M: M}, "method": "ping"}),
        json.dumps({"jsonrpc": "2.0", "id": 5, "result": M}),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {M: M}}),
        json.dumps({"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": M}}),
        json.dumps({"jsonrpc": "2.0", "id": 99, "method": "ping"}),
    ]
    with tempfile.TemporaryFile("w+b") as errlog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolegate", *serve_argv(tmp_path), "--log-level", "DEBUG"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write("".join(line + "\n" for line in junk).encode())
            proc.stdin.flush()
            _read_until_id(proc, 99, timeout_s=60)
            proc.stdin.close()
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        errlog.seek(0)
        stderr = errlog.read().decode()
    assert_json_lines_without_marker(stderr)


# Runs the real CLI, but warns (with caller-like text) once logging is configured: a stand-in
# for a library warning raised while the server runs.
WARNING_LAUNCHER = """
import sys, warnings
import rolegate.server.serve as serve
configure = serve.configure_logging
def configure_then_warn(*args, **kwargs):
    configure(*args, **kwargs)
    warnings.warn("SECRET-CALLER-TEXT-7f3a in a warning", UserWarning, stacklevel=1)
serve.configure_logging = configure_then_warn
from rolegate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_python_warning_in_the_server_is_one_json_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", WARNING_LAUNCHER, *serve_argv(tmp_path)],
        stdin=subprocess.DEVNULL,  # EOF at once: the stdio server starts, then stops
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = proc.stderr.decode()
    assert proc.stdout == b""
    events = assert_json_lines_without_marker(stderr)
    (warning,) = [e for e in events if e.get("logger") == "py.warnings"]
    assert warning["warning_category"] == "UserWarning"
    assert warning["level"] == "warning"


# -- unit tests against the in-process configuration (the log_stream fixture) --------------


def _fail(exc: Exception) -> None:
    raise exc


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return assert_json_lines_without_marker(stream.getvalue())


def test_library_records_keep_only_their_template(log_stream: io.StringIO) -> None:
    logging.getLogger("httpx").warning("HTTP Request: %s", MARKER)
    logging.getLogger("mcp.server.x").warning(f"Invalid Host header: {MARKER}")
    logging.getLogger("uvicorn.error").error(MARKER)
    logging.getLogger("asyncio").error({"text": MARKER})
    (httpx, sdk, uvicorn, asyncio_) = _lines(log_stream)
    assert httpx["event"] == "HTTP Request: %s"
    assert httpx["logger"] == "httpx"
    assert httpx["level"] == "warning"
    assert "timestamp" in httpx
    for event in (sdk, uvicorn, asyncio_):
        assert event["event"] == OMITTED


def test_an_exception_logged_as_the_message_keeps_its_type_and_errno(
    log_stream: io.StringIO,
) -> None:
    logging.getLogger("uvicorn.error").error(OSError(98, f"Address in use {MARKER}"))
    (event,) = _lines(log_stream)
    assert event["event"] == OMITTED
    assert event["error_type"] == "OSError"
    assert event["errno"] == 98


def test_library_exceptions_keep_only_the_type(log_stream: io.StringIO) -> None:
    try:
        _fail(ValueError(f"bad input {MARKER}"))
    except ValueError:
        logging.getLogger("mcp.x").exception("handler failed for %s", MARKER)
        logging.getLogger("mcp.x").exception(f"handler failed for {MARKER}")
    (templated, omitted) = _lines(log_stream)
    assert templated == {
        "event": "handler failed for %s",
        "error_type": "ValueError",
        "level": "error",
        "logger": "mcp.x",
        "timestamp": templated["timestamp"],
    }
    assert omitted["event"] == OMITTED
    assert omitted["error_type"] == "ValueError"
    assert "Traceback" not in log_stream.getvalue()


def test_rolegate_exceptions_render_only_the_type(log_stream: io.StringIO) -> None:
    try:
        _fail(KeyError(MARKER))
    except KeyError:
        get_logger().exception("ledger_failed", request_id="r1")
    (event,) = _lines(log_stream)
    assert event["event"] == "ledger_failed"
    assert event["error_type"] == "KeyError"
    assert event["level"] == "error"
    assert event["logger"] == "rolegate"
    assert "exc_info" not in event
    assert "exception" not in event


def test_warnings_become_json_without_their_message(log_stream: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated {MARKER}", DeprecationWarning, stacklevel=1)
    (event,) = _lines(log_stream)
    assert event["logger"] == "py.warnings"
    assert event["warning_category"] == "DeprecationWarning"


def test_a_record_that_fails_to_format_is_one_json_line() -> None:
    """logging's default handleError would print a traceback with the record's arguments."""

    class Failing(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise RuntimeError(MARKER)

    stream = io.StringIO()
    handler = JsonLineHandler(stream)
    handler.setFormatter(Failing())
    handler.handle(logging.makeLogRecord({"name": "mcp.x", "msg": "%s", "args": (MARKER,)}))
    (event,) = _lines(stream)
    assert event == {"event": "log_record_dropped", "level": "error", "logger": "mcp.x"}
