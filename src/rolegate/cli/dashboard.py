"""`rolegate dashboard`: the dashboard page of `rolegate serve --transport http`, for a local
ledger, served on loopback only (no token: nothing but this machine can reach it)."""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import typer

from rolegate.cli.common import BlockOpt, Call, LedgerOpt, PolicyOpt, later, repeated

DEFAULT_PORT = 8766


def _engine(policy: Any, ledger: Any, block: list[str]) -> Any:
    """The engine as `rolegate serve` builds it (so that residency is probed); without
    provider plugins, one that only reads the ledger (residency then shows as unknown)."""
    from rolegate.engine.bootstrap import build_engine
    from rolegate.engine.core import PolicyEngine
    from rolegate.engine.store import Store
    from rolegate.errors import PluginError, RolegateError

    try:
        return build_engine(policy, block=block, ledger=ledger)
    except (RolegateError, PluginError) as exc:
        print(f"rolegate: {exc}; residency will show as unknown", file=sys.stderr)
        return PolicyEngine(policy, Store(policy, ledger=ledger))


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from rolegate.cli.report import _open_recorded
    from rolegate.logs import configure_logging
    from rolegate.policy import load_default_policy, load_policy
    from rolegate.server.dashboard import DASHBOARD_PATH, dashboard_routes
    from rolegate.server.http import is_loopback, run_http, transport_security

    if not is_loopback(args.host):
        print(
            f"rolegate: the dashboard listens on loopback only, not {args.host}; to share it, "
            "run `rolegate serve --transport http --token-env VAR` (it serves /dashboard too)",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.port < 65536:
        print(f"rolegate: --port {args.port} is not a port", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    security = transport_security(args.host, args.port)
    policy = load_default_policy() if args.policy is None else load_policy(args.policy)
    ledger = _open_recorded(args.ledger or policy.doc.ledger)
    engine = _engine(policy, ledger, args.block)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await engine.aclose()
            ledger.close()

    async def home(_: Any) -> RedirectResponse:
        return RedirectResponse(DASHBOARD_PATH)

    routes = [
        Route("/", home, methods=["GET"]),
        *dashboard_routes(engine, security=lambda: security),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    url = f"http://{args.host}:{args.port}{DASHBOARD_PATH}"
    print(f"rolegate dashboard: {url} (policy {policy.name}, {policy.hash}; ledger "
          f"{ledger.description}); Ctrl-C stops it", flush=True)  # fmt: skip
    if args.open:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    run_http(app, host=args.host, port=args.port)
    return 0


def dashboard(
    policy: PolicyOpt = None,
    ledger: LedgerOpt = None,
    host: Annotated[str, typer.Option(help="a loopback address")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    open: Annotated[
        bool, typer.Option("--open", help="open the page in the default browser")
    ] = False,
    block: BlockOpt = None,
    log_level: Annotated[str, typer.Option()] = "WARNING",
) -> Call:
    """Serve the dashboard of a local ledger on loopback (spend, decisions, models, policy).

    Serve the dashboard on this machine only: spend per day against each budget cap,
    decisions by outcome and code, calls and spend per model, recent escalations and
    fallbacks, and the active policy (hash, roles, models, what is resident), from the
    ledger's audit trail. The page redraws itself every 30 seconds; /dashboard.json has the
    same figures. The audit trail holds no prompt or completion text, and neither does the
    page. To see a server's dashboard from elsewhere, use `rolegate serve --transport http`
    (behind its bearer token)."""
    return later(_cmd_dashboard, {**locals(), "block": repeated(block)})
