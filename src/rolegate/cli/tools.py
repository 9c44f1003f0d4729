"""`rolegate policy`, `budget`, `audit`, `plugins` and `serve`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Annotated, Literal

import typer

from rolegate.cli.common import BlockOpt, Call, JsonOpt, LedgerOpt, PolicyOpt, later, repeated
from rolegate.cli.core import load

policy_app = typer.Typer(help="Policy utilities: schema, show, hash.")


def _cmd_policy(args: argparse.Namespace) -> int:
    from rolegate.policy import load_policy

    if args.policy_command == "schema":
        from rolegate.policy.schema import PolicyDocument

        print(json.dumps(PolicyDocument.model_json_schema(), indent=2))
    elif args.policy_command == "show":
        from rolegate.policy.loader import default_policy_text

        if args.policy is None:
            sys.stdout.write(default_policy_text())
        else:
            print(json.dumps(json.loads(load_policy(args.policy).canonical_json), indent=2))
    else:
        digest = load(args.policy).hash
        print(json.dumps({"hash": digest}) if args.json else digest)
    return 0


@policy_app.command()
def schema() -> Call:
    """Print the JSON Schema of the policy file."""
    return later(_cmd_policy, {}, policy_command="schema")


@policy_app.command()
def show(policy: Annotated[str | None, typer.Option(help="policy file")] = None) -> Call:
    """Print the embedded default policy, or a policy's canonical JSON."""
    return later(_cmd_policy, locals(), policy_command="show")


@policy_app.command("hash")
def hash_(
    policy: PolicyOpt = None,
    json: Annotated[bool, typer.Option("--json", help='print {"hash": ...}')] = False,
) -> Call:
    """Print a policy's hash."""
    return later(_cmd_policy, locals(), policy_command="hash")


def _cmd_plugins(args: argparse.Namespace) -> int:
    from rolegate.plugins.manager import build_registry

    registry = build_registry(block=args.block)
    if args.json:
        found = [
            {
                "name": i.name,
                "distribution": i.distribution,
                "version": i.version,
                "provides": list(i.provides),
                "blocked": False,
            }
            for i in registry.plugins
        ]
        blocked: list[dict[str, object]] = [
            {"name": name, "distribution": None, "version": None, "provides": [], "blocked": True}
            for name in registry.blocked
        ]
        print(json.dumps(found + blocked, indent=2))
        return 0
    for info in registry.plugins:
        dist = info.distribution or "-"
        if info.version:
            dist += f" {info.version}"
        print(f"{info.name:<20} {dist:<28} {' '.join(info.provides) or '(nothing)'}")
    for name in registry.blocked:
        print(f"{name:<20} {'(blocked)':<28}")
    return 0


def plugins(block: BlockOpt = None, json: JsonOpt = False) -> Call:
    """List plugins found, their distribution and what they add."""
    return later(_cmd_plugins, {**locals(), "block": repeated(block)})


def _cmd_budget(args: argparse.Namespace) -> int:
    from rolegate.engine.bootstrap import open_policy_ledger
    from rolegate.engine.budgets import budget_report
    from rolegate.engine.requests import BudgetQuery
    from rolegate.engine.store import Store

    policy = load(args.policy)
    ledger = open_policy_ledger(policy, args.ledger)
    try:
        query = BudgetQuery(job=args.job, role=args.role, model=args.model, text=args.text,
                            input_tokens=args.input_tokens,
                            output_tokens=args.output_tokens)  # fmt: skip
        report = budget_report(policy, Store(policy, ledger=ledger), query)
    finally:
        ledger.close()
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        from rolegate.cli.report import print_budget

        print_budget(report)
    return 0 if report.check is None or report.check.admitted else 3


def budget(
    policy: PolicyOpt = None,
    ledger: LedgerOpt = None,
    job: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    text: Annotated[str | None, typer.Option(help="input text to count for the fit check")] = None,
    input_tokens: Annotated[int | None, typer.Option()] = None,
    output_tokens: Annotated[int | None, typer.Option()] = None,
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> Call:
    """Spend, reservations and what is left per budget scope (exit 3: the check does not fit).

    With --model (and --text or --input-tokens), also check whether such a call fits now."""
    return later(_cmd_budget, locals())


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here so that `check` and `route` never pay for the MCP SDK's import.
    from rolegate.server.serve import serve as run

    return run(args)


def serve(
    policy: PolicyOpt = None,
    transport: Annotated[Literal["stdio", "http"], typer.Option()] = "stdio",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8765,
    token_env: Annotated[
        str | None, typer.Option(help="env var holding the bearer token required over HTTP")
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="also accept this Host header (and its http/https Origin), e.g. a "
            "reverse proxy's name; NAME or NAME:PORT (repeatable)",
        ),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="close an HTTP connection that has not sent a complete "
            "request head in time (default: 10)",
        ),
    ] = None,
    keep_alive_timeout: Annotated[
        int | None,
        typer.Option(
            metavar="SECONDS",
            help="close an idle HTTP keep-alive connection after this long (default: 5)",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="open HTTP connections at most; more are closed at once (default: 256)",
        ),
    ] = None,
    ledger: Annotated[
        str | None, typer.Option(help="ledger URL (sqlite:///path or postgresql://...)")
    ] = None,
    block: BlockOpt = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> Call:
    """Run the MCP server (stdio by default)."""
    params = {**locals(), "allow_host": repeated(allow_host), "block": repeated(block)}
    return later(_cmd_serve, params)


def register(app: typer.Typer) -> None:
    from rolegate.cli.report import audit

    app.add_typer(policy_app, name="policy")
    app.command()(budget)
    app.command()(audit)
    app.command()(plugins)
    app.command()(serve)
