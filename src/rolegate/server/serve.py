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
import errno
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from rolegate import __version__
from rolegate.errors import PluginError, PolicyError, PolicyInvalidError, RolegateError
from rolegate.logs import configure_logging, get_logger, install_excepthooks
from rolegate.policy import Policy, load_default_policy, load_policy

# The HTTP stack (uvicorn, h11) is imported only when serving HTTP: a stdio server, which
# every desktop client starts per window, does not pay for it at start-up.
__all__ = ["load_for_serving", "probe_providers", "serve"]

PROBE_TIMEOUT_S = 1.0
"""How long the start-up check waits for each provider (all are checked at once)."""
STOP_GRACE_S = 5.0
"""After Ctrl-C, the server's shutdown gets this long before the process exits anyway."""
LISTEN_WAIT_S = 10.0
"""How long the terminal greeting waits for the HTTP port to accept before saying so."""


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
    greeting = Greeting(sys.stderr) if _is_tty(sys.stderr) else None
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


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Greeting:
    """Plain lines on stderr for a person at a terminal, written under the log handler's lock
    so that they never interleave with a JSON line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def say(self, *lines: str) -> None:
        handlers = logging.getLogger().handlers
        lock = handlers[0].lock if handlers and handlers[0].lock is not None else None
        if lock is not None:
            lock.acquire()
        try:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away: nothing to tell
        finally:
            if lock is not None:
                lock.release()

    def start(
        self,
        policy: Policy,
        policy_path: str | None,
        waiting: Sequence[str],
        *,
        listen: tuple[str, int] | None,
        then: Callable[[], None],
    ) -> threading.Thread:
        """Check the providers (and the HTTP port) in the background, then say the rest."""

        def run() -> None:
            listening = threading.Event()
            waiter = None
            if listen is not None:
                waiter = threading.Thread(target=_wait_for_port, args=(*listen, listening))
                waiter.daemon = True
                waiter.start()
            lines = provider_lines(policy, policy_path, probe_providers(policy))
            if waiter is not None:
                waiter.join(LISTEN_WAIT_S)
            if listen is not None and not listening.is_set():
                self.say(*lines, f"  NOT listening on port {listen[1]}: see the log below")
            else:
                self.say(*lines, *waiting)
            then()

        thread = threading.Thread(target=run, name="rolegate-greeting", daemon=True)
        thread.start()
        return thread


def intro_lines(
    policy: Policy, policy_path: str | None, ledger: str | None, transport: str
) -> list[str]:
    where = "embedded default policy" if policy_path is None else policy_path
    models = len(policy.models)
    return [
        f"rolegate {__version__}: MCP server over {transport}",
        f"  policy:   {where}: {policy.name} revision {policy.revision}, "
        f"{models} model{'s' if models != 1 else ''}",
        f"            {policy.hash}",
        f"  ledger:   {ledger or 'none'}",
    ]


STOP_LINE = "  Ctrl-C stops it. Logs follow, as JSON lines."


def _waiting_lines(args: argparse.Namespace, http: HttpSettings | None) -> list[str]:
    if http is not None:
        lines = [f"  listening on http://{_url_host(args.host)}:{args.port}/mcp (Streamable HTTP)"]
        if http.token is not None:
            lines.append(f"  clients must send: Authorization: Bearer ${args.token_env}")
        return [*lines, STOP_LINE]
    if _is_tty(sys.stdin):
        return [
            "  waiting for an MCP client on stdin (Claude Desktop, Cursor, VS Code, ...):",
            "  a client starts `rolegate serve` itself, from its MCP config (this terminal",
            "  is not one: see examples/clients/ in rolegate's repository).",
            STOP_LINE,
        ]
    return ["  serving the MCP client on stdin/stdout", STOP_LINE]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _wait_for_port(host: str, port: int, done: threading.Event) -> None:
    """Set ``done`` once ``host:port`` accepts a connection (within LISTEN_WAIT_S)."""
    target = host.strip("[]")
    if target in ("0.0.0.0", ""):
        target = "127.0.0.1"
    elif target == "::":
        target = "::1"
    deadline = time.monotonic() + LISTEN_WAIT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((target, port), timeout=0.25):
                done.set()
                return
        except OSError:
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Can the providers be reached right now?


@dataclass(frozen=True)
class Reach:
    """What the start-up check found for one provider. ``reachable`` None: not checked."""

    provider: str
    base_url: str
    reachable: bool | None
    detail: str


def probe_providers(policy: Policy, timeout: float = PROBE_TIMEOUT_S) -> list[Reach]:
    """Each provider's ``base_url``, asked once over HTTP, all at once, each for at most
    ``timeout`` seconds. Any HTTP answer counts as reachable (the check sends no key and
    names no model: it is not the provider's API call). Non-HTTP URLs (a plugin's own
    scheme) are not checked.

    Not ``engine.consent.Probes``: that one lists a model's models through the provider's
    client inside the server's event loop, answers only yes or no, needs the API key, and
    retries; this check runs before (and beside) the loop, in threads, and says why."""
    providers = policy.doc.providers
    found: dict[str, Reach] = {}

    def check(name: str, url: str) -> None:
        found[name] = _probe(name, url, timeout)

    threads = []
    for name, config in providers.items():
        scheme = urlsplit(config.base_url).scheme.lower()
        if scheme not in ("http", "https"):
            found[name] = Reach(name, config.base_url, None, f"not checked ({scheme}:// URL)")
            continue
        thread = threading.Thread(target=check, args=(name, config.base_url), daemon=True)
        thread.start()
        threads.append(thread)
    # A name lookup is not covered by the HTTP timeout: never wait much past it.
    deadline = time.monotonic() + timeout + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        found.get(name) or Reach(name, p.base_url, False, f"no answer within {timeout:g} s")
        for name, p in providers.items()
    ]


def _probe(name: str, url: str, timeout: float) -> Reach:
    import httpx

    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            client.get(url)
    except httpx.TimeoutException:
        return Reach(name, url, False, f"no answer within {timeout:g} s")
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return Reach(name, url, False, _why(exc))
    return Reach(name, url, True, "reachable")


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
}


def _why(exc: BaseException) -> str:
    seen: BaseException | None = exc
    for _ in range(8):  # the OSError is a few causes down: httpx <- httpcore <- socket
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, OSError) and seen.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "host name not found"
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


def provider_lines(policy: Policy, policy_path: str | None, found: Sequence[Reach]) -> list[str]:
    """One line per provider: where, reachable or why not, and what to do about it."""
    doc = policy.doc
    lines = []
    for reach in found:
        config = doc.providers[reach.provider]
        models = [mid for mid, m in doc.models.items() if m.provider == reach.provider]
        used = ", ".join(models[:3]) + (f" and {len(models) - 3} more" if len(models) > 3 else "")
        kind = "" if config.type == reach.provider else f" ({config.type})"
        head = f"  provider: {reach.provider}{kind} at {reach.base_url}"
        if used:
            head += f" ({used})"
        if reach.reachable is None:
            text = reach.detail
        elif reach.reachable:
            text = "reachable"
        else:
            text = f"not reachable ({reach.detail})"
            hint = _hint(policy, policy_path, reach.provider)
            if hint:
                text += f": {hint}"
        if config.api_key_env and not os.environ.get(config.api_key_env):
            text += f"; set {config.api_key_env} to use it"
        lines.append(f"{head}: {text}")
    return lines


def _hint(policy: Policy, policy_path: str | None, provider: str) -> str:
    doc = policy.doc
    config = doc.providers[provider]
    if config.locality == "cloud":
        return "check the network and the provider's base_url"
    if config.type == "ollama":
        return "start it with `ollama serve`"
    managed = any(m.server is not None for m in doc.models.values() if m.provider == provider)
    if managed:
        where = f" --policy {policy_path}" if policy_path else ""
        return f"`rolegate up{where}` starts its llama.cpp server"
    if config.type == "openai":
        return "start the OpenAI-compatible server (llama.cpp, vLLM, LM Studio) it names"
    return f"start the {config.type} server it names"
