"""`rolegate serve`: load the policy (fail closed), build the server, run a transport."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from dataclasses import dataclass
from typing import Any

from rolegate.errors import PluginError, PolicyError, PolicyInvalidError, RolegateError
from rolegate.logs import configure_logging, get_logger, install_excepthooks
from rolegate.policy import Policy, load_default_policy, load_policy

# The HTTP stack (uvicorn, h11) is imported only when serving HTTP: a stdio server, which
# every desktop client starts per window, does not pay for it at start-up.
__all__ = ["load_for_serving", "serve"]


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
    get_logger().info(
        "server_start",
        transport=args.transport,
        policy=policy.name,
        policy_hash=policy.hash,
        models=len(policy.models),
        ledger=ledger.description,
    )
    if http is None:
        server.run("stdio")
    else:
        _serve_http(server, args, http)
    return 0


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


def _serve_http(server: Any, args: argparse.Namespace, http: HttpSettings) -> None:
    from rolegate.server.http import MAX_REQUEST_BODY_BYTES, BearerAuth, run_http

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
