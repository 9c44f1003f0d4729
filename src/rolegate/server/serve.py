"""`rolegate serve`: load the policy (fail closed), build the server, run a transport.

Started from a terminal (stderr is a TTY), it first says in a few plain lines what it serves:
the policy, the ledger, which providers answer right now, and what it is waiting for. Started
by an MCP client, stderr is the client's MCP log and carries JSON lines only, as before, and
nothing is probed. stdout carries MCP frames and nothing else, in both cases.

Ctrl-C (or SIGTERM) stops either transport, once, without a traceback: stdio exits 130 (143
for SIGTERM) once the server's own shutdown has closed the provider clients and the ledger;
HTTP exits 0 after uvicorn's graceful shutdown.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from rolegate.errors import PluginError, PolicyError, PolicyInvalidError, RolegateError
from rolegate.logs import configure_logging, get_logger, install_excepthooks
from rolegate.policy import Policy, load_default_policy, load_policy
from rolegate.server.greeting import STOP_LINE, Greeting, intro_lines, is_tty

# The HTTP stack (uvicorn, h11) is imported only when serving HTTP: a stdio server, which
# every desktop client starts per window, does not pay for it at start-up.
__all__ = ["load_for_serving", "serve"]

STOP_GRACE_S = 5.0
"""After Ctrl-C, the server's shutdown gets this long before the process exits anyway."""


def report_policy_error(path: str, exc: PolicyError) -> None:
    """Print a policy error as `rolegate check` and `rolegate serve` both show it."""
    if isinstance(exc, PolicyInvalidError):
        for problem in exc.problems:
            print(problem.render(exc.source), file=sys.stderr)
        print(f"{path}: INVALID ({len(exc.problems)} error(s))", file=sys.stderr)
    else:
        print(exc.message, file=sys.stderr)
        print(f"{path}: INVALID", file=sys.stderr)


def load_for_serving(path: str | None) -> Policy | None:
    try:
        return load_default_policy() if path is None else load_policy(path)
    except PolicyError as exc:
        report_policy_error(path or "<embedded default policy>", exc)
        print("rolegate: refusing to start with an invalid policy", file=sys.stderr)
        return None


class StartupError(Exception):
    """A flag or setting the server cannot start with: printed, exit code 2."""


def serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    install_excepthooks()
    greeting = Greeting(sys.stderr) if is_tty(sys.stderr) else None
    try:
        return _serve(args, greeting)
    except KeyboardInterrupt:
        # Ctrl-C before a transport took the signal over (loading, building the engine).
        if greeting is not None:
            greeting.say("", "rolegate: stopped")
        return 128 + signal.SIGINT


def _serve(args: argparse.Namespace, greeting: Greeting | None) -> int:
    http: HttpSettings | None = None
    if args.transport == "http":
        try:
            http = _http_settings(args)
        except StartupError as exc:
            print(f"rolegate: {exc}", file=sys.stderr)
            return 2
    policy = load_for_serving(args.policy)
    if policy is None:
        return 1
    from rolegate.engine.bootstrap import build_engine, open_policy_ledger
    from rolegate.server.app import build_server

    try:
        ledger = open_policy_ledger(policy, args.ledger)
    except RolegateError as exc:
        print(f"rolegate: {exc}", file=sys.stderr)
        return 1
    try:
        engine = build_engine(policy, block=args.block, ledger=ledger)
    except (RolegateError, PluginError) as exc:
        ledger.close()
        print(f"rolegate: {exc}", file=sys.stderr)
        return 1
    # The server's lifespan closes the provider clients and this ledger when it stops.
    server = build_server(engine, close_ledger=True)
    # The policy, the compiled patterns and the SDK live as long as the process: keep them out
    # of the collector's way, so full collections on the request path stay short.
    gc.freeze()

    def log_start() -> None:
        get_logger().info(
            "server_start",
            transport=args.transport,
            policy=policy.name,
            policy_hash=policy.hash,
            models=len(policy.models),
            ledger=ledger.description,
        )
        if http is not None:
            _log_http_listen(args, http)

    if greeting is None:
        log_start()
    else:
        # The static lines now; the providers and what it waits for from a background thread
        # once they answered (<= PROBE_TIMEOUT_S), then the JSON logs. The transport starts
        # at once: the check never delays the first request.
        greeting.say(*intro_lines(policy, args.policy, ledger.description, args.transport))
        waiting = _waiting_lines(args, http)
        listen = None if http is None else (args.host, args.port)
        greeting.start(policy, args.policy, waiting, listen=listen, then=log_start)
    if http is None:
        code = _run_stdio(server, greeting)
        if greeting is not None:
            greeting.say("rolegate: stdin closed: stopped")
        return code
    _serve_http(server, args, http)
    if greeting is not None:
        greeting.say("", "rolegate: stopped")
    return 0


# ---------------------------------------------------------------------------------------------
# stdio: one Ctrl-C stops it


def _run_stdio(server: Any, greeting: Greeting | None) -> int:
    """Serve MCP on stdin/stdout until EOF (0), SIGINT (130) or SIGTERM (143).

    The SDK reads stdin in a worker thread that cannot be cancelled, so after a signal its
    shutdown would wait for one more line on stdin (or for ever on a terminal). Here the
    server itself is cancelled, its lifespan closes the provider clients and the ledger, and
    then the process exits without waiting for that read. A second signal, or a shutdown that
    takes longer than STOP_GRACE_S, exits at once.
    """
    if sys.platform == "win32":  # no loop signal handlers: the SDK's own run
        server.run("stdio")
        return 0
    import anyio
    from mcp.server.stdio import stdio_server

    stopping: list[int] = []

    def exit_now() -> None:
        signum = stopping[0]
        get_logger().info("server_stop", signal=signal.Signals(signum).name)
        if greeting is not None and signum == signal.SIGINT:
            greeting.say("rolegate: stopped")
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    async def on_signals(signals: Any, scope: anyio.CancelScope) -> None:
        async for signum in signals:
            if stopping:
                exit_now()
            stopping.append(int(signum))
            if greeting is not None:
                greeting.say("")  # off the line the terminal echoed ^C on
            timer = threading.Timer(STOP_GRACE_S, exit_now)
            timer.daemon = True
            timer.start()
            scope.cancel()

    async def main() -> None:
        # The SDK's run_stdio_async, with a hook after the server's shutdown.
        low = server._lowlevel_server
        async with anyio.create_task_group() as group:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                group.start_soon(on_signals, signals, group.cancel_scope)
                async with stdio_server() as (read, write):
                    try:
                        await low.run(read, write, low.create_initialization_options())
                    finally:
                        if stopping:
                            exit_now()
                group.cancel_scope.cancel()  # stdin closed: the client is gone

    anyio.run(main)
    return 0


# ---------------------------------------------------------------------------------------------
# Streamable HTTP


@dataclass(frozen=True)
class HttpSettings:
    limits: HttpLimits
    security: Any  # TransportSecuritySettings
    token: str | None


def _http_settings(args: argparse.Namespace) -> HttpSettings:
    from rolegate.server.http import is_loopback, transport_security

    limits = _http_limits(args)
    problem = _check_http_limits(limits)
    if problem is not None:
        raise StartupError(problem)
    try:
        security = transport_security(args.host, args.port, args.allow_host or ())
    except ValueError as exc:
        raise StartupError(f"--host/--allow-host: {exc}") from None
    token: str | None = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise StartupError(f"--token-env {args.token_env} is set but the variable is empty")
    if not is_loopback(args.host) and token is None:
        raise StartupError(
            f"refusing to listen on {args.host} without a bearer token: anyone who can reach "
            "it could spend your budget. Pass --token-env VAR (and set VAR), or bind 127.0.0.1."
        )
    return HttpSettings(limits, security, token)


def _log_http_listen(args: argparse.Namespace, http: HttpSettings) -> None:
    from rolegate.server.http import MAX_REQUEST_BODY_BYTES

    limits = http.limits
    get_logger().info(
        "http_listen",
        host=args.host,
        port=args.port,
        allowed_hosts=http.security.allowed_hosts,
        header_timeout_s=limits.header_timeout,
        keep_alive_s=limits.keep_alive,
        max_connections=limits.max_connections,
        max_body_bytes=MAX_REQUEST_BODY_BYTES,
        bearer_token=http.token is not None,
    )


def _serve_http(server: Any, args: argparse.Namespace, http: HttpSettings) -> None:
    from rolegate.server.http import MAX_REQUEST_BODY_BYTES, BearerAuth, run_http

    limits = http.limits
    app: Any = server.streamable_http_app(
        host=args.host,
        transport_security=http.security,
        max_request_body_size=MAX_REQUEST_BODY_BYTES,
    )
    if http.token is not None:
        app = BearerAuth(app, http.token)
    run_http(
        app,
        host=args.host,
        port=args.port,
        header_timeout=limits.header_timeout,
        keep_alive=limits.keep_alive,
        max_connections=limits.max_connections,
    )


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float
    keep_alive: int
    max_connections: int


def _http_limits(args: argparse.Namespace) -> HttpLimits:
    """The HTTP flags, with http.py's defaults for those not given (the CLI leaves them None
    so that `rolegate check` never imports the HTTP stack just for its defaults)."""

    def given(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    from rolegate.server.http import (
        DEFAULT_HEADER_TIMEOUT_S,
        DEFAULT_KEEP_ALIVE_S,
        DEFAULT_MAX_CONNECTIONS,
    )

    return HttpLimits(
        header_timeout=float(given("header_timeout", DEFAULT_HEADER_TIMEOUT_S)),
        keep_alive=int(given("keep_alive_timeout", DEFAULT_KEEP_ALIVE_S)),
        max_connections=int(given("max_connections", DEFAULT_MAX_CONNECTIONS)),
    )


def _check_http_limits(limits: HttpLimits) -> str | None:
    if not limits.header_timeout > 0:  # also rejects NaN
        return "--header-timeout must be a positive number of seconds"
    if limits.keep_alive < 1:
        return "--keep-alive-timeout must be at least 1 second"
    if limits.max_connections < 1:
        return "--max-connections must be at least 1"
    return None


# ---------------------------------------------------------------------------------------------
# The greeting on a terminal


def _waiting_lines(args: argparse.Namespace, http: HttpSettings | None) -> list[str]:
    if http is not None:
        lines = [f"  listening on http://{_url_host(args.host)}:{args.port}/mcp (Streamable HTTP)"]
        if http.token is not None:
            lines.append(f"  clients must send: Authorization: Bearer ${args.token_env}")
        return [*lines, STOP_LINE]
    if is_tty(sys.stdin):
        return [
            "  waiting for an MCP client on stdin (Claude Desktop, Cursor, VS Code, ...):",
            "  a client starts `rolegate serve` itself, from its MCP config (this terminal",
            "  is not one: see examples/clients/ in rolegate's repository).",
            STOP_LINE,
        ]
    return ["  serving the MCP client on stdin/stdout", STOP_LINE]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
