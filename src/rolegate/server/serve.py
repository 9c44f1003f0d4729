"""`rolegate serve`: load the policy (fail closed), build the server, run a transport."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from typing import Any

from rolegate.errors import PluginError, PolicyError, RolegateError
from rolegate.policy import Policy, load_default_policy, load_policy
from rolegate.server.logs import configure_logging, get_logger

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """Pure-ASGI middleware: 401 unless ``Authorization: Bearer <token>`` matches."""

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


def load_for_serving(path: str | None) -> Policy | None:
    from rolegate.server.cli import report_policy_error

    try:
        return load_default_policy() if path is None else load_policy(path)
    except PolicyError as exc:
        report_policy_error(path or "<embedded default policy>", exc)
        print("rolegate: refusing to start with an invalid policy", file=sys.stderr)
        return None


def serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    token: str | None = None
    if args.transport == "http":
        if args.token_env:
            token = os.environ.get(args.token_env)
            if not token:
                print(
                    f"rolegate: --token-env {args.token_env} is set but the variable is empty",
                    file=sys.stderr,
                )
                return 2
        if not is_loopback(args.host) and token is None:
            print(
                f"rolegate: refusing to listen on {args.host} without a bearer token: anyone who "
                "can reach it could spend your budget. Pass --token-env VAR (and set VAR), or "
                "bind 127.0.0.1.",
                file=sys.stderr,
            )
            return 2
    policy = load_for_serving(args.policy)
    if policy is None:
        return 1
    from rolegate.server.bootstrap import build_service, open_policy_ledger

    try:
        ledger = open_policy_ledger(policy, args.ledger)
        service = build_service(policy, block=args.block, ledger=ledger)
    except (RolegateError, PluginError) as exc:
        print(f"rolegate: {exc}", file=sys.stderr)
        return 1
    from rolegate.server.app import build_server

    server = build_server(service)
    log = get_logger()
    log.info(
        "server_start",
        transport=args.transport,
        policy=policy.name,
        policy_hash=policy.hash,
        models=len(policy.models),
        ledger=ledger.description,
    )
    if args.transport == "stdio":
        server.run("stdio")
        return 0
    import uvicorn

    app: Any = server.streamable_http_app(host=args.host)
    if token is not None:
        app = BearerAuth(app, token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
