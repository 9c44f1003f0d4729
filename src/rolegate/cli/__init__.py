"""The `rolegate` command line. Results go to stdout, diagnostics to stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from rolegate import __version__
from rolegate.cli.dashboard import add_dashboard
from rolegate.cli.evals import add_evals
from rolegate.cli.replay import add_replay
from rolegate.cli.report import add_audit_filters, add_report
from rolegate.cli.topology import add_topology
from rolegate.errors import LedgerError, PluginError, PolicyError, RequestError
from rolegate.policy import Policy, RouteRequest, load_default_policy, load_policy, route
from rolegate.policy.loader import default_policy_text
from rolegate.policy.schema import PolicyDocument

if TYPE_CHECKING:
    from rolegate.engine.understanding import TaskReader

#: Exit code when stdout's reader closed the pipe early (128 + SIGPIPE, as a shell says).
CLOSED_PIPE = 141
EXIT_CODES = """\
exit codes:
  0    ok
  1    policy, ledger or plugin error
  2    bad request or arguments
  3    refused (route, or a budget check that does not fit)
  4    eval: not every case could be judged
  130  interrupted (Ctrl-C)
  141  stdout closed early by its reader (e.g. `rolegate audit | head -1`): output stops quietly
"""


def _load(path: str | None) -> Policy:
    return load_default_policy() if path is None else load_policy(path)


def _cmd_check(args: argparse.Namespace) -> int:
    from rolegate.server.serve import report_policy_error

    failed = False
    for path in args.policy:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            report_policy_error(path, exc)
            failed = True
            continue
        for warning in policy.warnings:
            print(warning.render(policy.source), file=sys.stderr)
        from rolegate.topology.files import file_problems

        # Model files, and each draft's vocabulary: on the machine that holds them.
        missing = [] if args.skip_files else file_problems(policy)
        for problem in missing:
            print(problem.render(policy.source), file=sys.stderr)
        if missing:
            print(f"{path}: INVALID {len(missing)} topology problem(s)")
            failed = True
            continue
        strict_fail = args.strict and policy.warnings
        status = "INVALID (warnings with --strict)" if strict_fail else "OK"
        print(f"{path}: {status} {policy.name} revision {policy.revision} {policy.hash}")
        failed = failed or bool(strict_fail)
    return 1 if failed else 0


def _cmd_route(args: argparse.Namespace) -> int:
    policy = _load(args.policy)
    request = RouteRequest(
        task=args.task,
        job=args.job,
        role=args.role,
        channel=args.channel,
        context_tokens=args.context_tokens,
        input_tokens=args.input_tokens,
        needs=tuple(args.needs or ()),
        local_only=args.local_only,
        risk=args.risk,
        max_output_tokens=args.max_output_tokens,
    )
    reader = _reader(policy)
    decision = route(request, policy, None, anyio.run(reader.read, request))
    print(decision.model_dump_json(indent=2))
    return 0 if decision.outcome != "refuse" else 3


def _reader(policy: Policy) -> TaskReader:
    """The policy's task reader without providers: the classifier, not the router model."""
    import os

    from rolegate.engine.understanding import build_reader
    from rolegate.plugins.manager import build_registry

    return build_reader(policy, build_registry(), None, os.environ, {})


def _cmd_eval_router(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rolegate.engine.evaluation import evaluate, load_labelled, render

    policy = _load(args.policy)
    rows = load_labelled(Path(args.labelled), policy)
    reader = _reader(policy)
    report = anyio.run(evaluate, policy, reader, rows)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render(report))
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    if args.policy_command == "schema":
        print(json.dumps(PolicyDocument.model_json_schema(), indent=2))
    elif args.policy_command == "show":
        if args.policy is None:
            sys.stdout.write(default_policy_text())
        else:
            print(json.dumps(json.loads(load_policy(args.policy).canonical_json), indent=2))
    elif args.policy_command == "hash":
        print(_load(args.policy).hash)
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from rolegate.plugins.manager import build_registry

    registry = build_registry(block=args.block)
    for info in registry.plugins:
        dist = info.distribution or "-"
        if info.version:
            dist += f" {info.version}"
        print(f"{info.name:<20} {dist:<28} {' '.join(info.provides) or '(nothing)'}")
    for name in registry.blocked:
        print(f"{name:<20} {'(blocked)':<28}")
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    from rolegate.engine.bootstrap import open_policy_ledger
    from rolegate.engine.budgets import budget_report
    from rolegate.engine.requests import BudgetQuery
    from rolegate.engine.store import Store

    policy = _load(args.policy)
    ledger = open_policy_ledger(policy, args.ledger)
    try:
        query = BudgetQuery(
            job=args.job,
            role=args.role,
            model=args.model,
            text=args.text,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
        )
        report = budget_report(policy, Store(policy, ledger=ledger), query)
    finally:
        ledger.close()
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        from rolegate.cli.report import print_budget

        print_budget(report)
    return 0 if report.check is None or report.check.admitted else 3


def _cmd_audit(args: argparse.Namespace) -> int:
    from rolegate.cli.report import read_audit
    from rolegate.engine.bootstrap import open_policy_ledger

    ledger = open_policy_ledger(_load(args.policy), args.ledger)
    try:
        records = read_audit(ledger, args)
    finally:
        ledger.close()
    for record in records:
        print(json.dumps(record, sort_keys=True, default=str))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here so that `check` and `route` never pay for the MCP SDK's import.
    from rolegate.server.serve import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolegate",
        description="Make a model-routing policy executable.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rolegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate and lint policy files (exit 0 ok, 1 invalid)")
    p.add_argument("policy", nargs="+")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument(
        "--skip-files",
        action="store_true",
        help="check the policy only: do not look for the servers' model files or compare "
        "drafts (on a machine that does not hold the models)",
    )
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("route", help="print the routing decision for a task as JSON")
    p.add_argument("task")
    p.add_argument("--policy", help="policy file (default: the embedded policy)")
    p.add_argument("--job")
    p.add_argument("--role")
    p.add_argument("--channel")
    p.add_argument("--context-tokens", type=int)
    p.add_argument("--input-tokens", type=int, help="exact input token count, if known")
    p.add_argument("--needs", action="append", help="a required capability (repeatable)")
    p.add_argument("--local-only", action="store_true")
    p.add_argument("--risk", choices=["low", "normal", "high"])
    p.add_argument("--max-output-tokens", type=int)
    p.set_defaults(func=_cmd_route)

    p = sub.add_parser(
        "eval-router",
        help="measure a policy's intents on labelled tasks: accuracy per intent, confusion "
        "matrix, coverage at the classifier's threshold, latency",
    )
    p.add_argument("labelled", help='JSON lines: {"task": ..., "intent": ... or null}')
    p.add_argument("--policy", help="policy file (default: the embedded policy)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd_eval_router)
    _add_tools(sub)
    return parser


def _add_tools(sub: Any) -> None:
    p = sub.add_parser("policy", help="policy utilities")
    psub = p.add_subparsers(dest="policy_command", required=True)
    for name, text in (
        ("schema", "print the JSON Schema of the policy file"),
        ("show", "print the embedded default policy, or a policy's canonical JSON"),
        ("hash", "print a policy's hash"),
    ):
        q = psub.add_parser(name, help=text)
        if name != "schema":
            q.add_argument("--policy")
    p.set_defaults(func=_cmd_policy)

    p = sub.add_parser("budget", help="spend, reservations and what is left per budget scope")
    p.add_argument("--policy", help="policy file (default: the embedded policy)")
    p.add_argument("--ledger", help="ledger URL (default: the policy's, else the SQLite file)")
    p.add_argument("--job")
    p.add_argument("--role")
    p.add_argument("--model")
    p.add_argument("--text", help="input text to count for the fit check")
    p.add_argument("--input-tokens", type=int)
    p.add_argument("--output-tokens", type=int)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_budget)

    p = sub.add_parser(
        "audit",
        help="recent audit records as JSON lines, newest first (ids, models, counts, "
        "codes; no text)",
        description="The newest audit records that pass every filter given, as JSON lines, "
        "newest first. Records carry no process or session id, so there is no filter by "
        "either (a call's reservation, not its record, names the process that made it).",
    )
    p.add_argument("--policy", help="policy file (default: the embedded policy)")
    p.add_argument("--ledger", help="ledger URL")
    add_audit_filters(p)
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("plugins", help="list plugins found, their distribution and what they add")
    p.add_argument("--block", action="append", default=[], help="block a plugin by name")
    p.set_defaults(func=_cmd_plugins)
    _add_serve(sub.add_parser("serve", help="run the MCP server (stdio by default)"))
    add_topology(sub)
    add_evals(sub)
    add_dashboard(sub)
    add_replay(sub)
    add_report(sub)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="policy file (default: the embedded policy)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token-env", help="env var holding the bearer token required over HTTP")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this Host header (and its http/https Origin), e.g. a reverse "
        "proxy's name; NAME or NAME:PORT (repeatable)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="close an HTTP connection that has not sent a complete request head in time "
        "(default: 10)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=int,
        metavar="SECONDS",
        help="close an idle HTTP keep-alive connection after this long (default: 5)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open HTTP connections at most; more are closed at once (default: 256)",
    )
    p.add_argument("--ledger", help="ledger URL (sqlite:///path or postgresql://...)")
    p.add_argument("--block", action="append", default=[], help="block a plugin by name")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except (PolicyError, RequestError, PluginError, LedgerError) as exc:
        print(str(exc), file=sys.stderr)
        return 2 if isinstance(exc, RequestError) else 1
    except BrokenPipeError:
        # The reader went away (`rolegate audit | head -1`): stop quietly. stdout goes to
        # devnull so that Python's own flush at exit does not fail again (Python docs,
        # "Note on SIGPIPE"); 141 is what a shell reports for a writer SIGPIPE ended.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return CLOSED_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return result
