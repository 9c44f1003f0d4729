"""`rolegate check`, `route` and `eval-router`: a policy on this machine, no server."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from rolegate.cli.common import Call, JsonOpt, PolicyOpt, later
from rolegate.errors import PluginError, PolicyError, PolicyInvalidError, PolicyProblem
from rolegate.policy import Policy, load_default_policy, load_policy

if TYPE_CHECKING:
    from rolegate.engine.understanding import TaskReader


def load(path: str | None) -> Policy:
    return load_default_policy() if path is None else load_policy(path)


def reader(policy: Policy) -> TaskReader:
    """The policy's task reader without providers: the classifier, not the router model."""
    import os

    from rolegate.engine.understanding import build_reader
    from rolegate.plugins.manager import build_registry

    return build_reader(policy, build_registry(), None, os.environ, {})


def _check_one(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """One file checked: diagnostics on stderr as always, the verdict as a dict."""
    from rolegate.server.serve import report_policy_error

    row: dict[str, Any] = {"path": path, "valid": False, "name": None, "revision": None,
                           "hash": None, "problems": [], "topology_problems": 0}  # fmt: skip
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        report_policy_error(path, exc)
        if isinstance(exc, PolicyInvalidError):
            row["problems"] = [p.render(exc.source) for p in exc.problems]
        else:
            row["problems"] = [exc.message]
        return row
    from rolegate.topology.files import file_problems

    row.update(name=policy.name, revision=policy.revision, hash=policy.hash)
    warnings = [w for w in policy.warnings if not _plugin_provides(policy, w)]
    for warning in warnings:
        print(warning.render(policy.source), file=sys.stderr)
    # Model files, and each draft's vocabulary: on the machine that holds them.
    missing = [] if args.skip_files else file_problems(policy)
    for problem in missing:
        print(problem.render(policy.source), file=sys.stderr)
    row["problems"] = [p.render(policy.source) for p in (*missing, *warnings)]
    row["valid"] = not missing and not (args.strict and warnings)
    row["topology_problems"] = len(missing)
    return row


def _plugin_provides(policy: Policy, warning: PolicyProblem) -> bool:
    """Whether ``warning`` is the pure check's "not built in" for a provider type that an
    installed plugin does provide (the policy package cannot know; the CLI can)."""
    for pid, provider in policy.doc.providers.items():
        if warning.location == f"providers.{pid}.type":
            return provider.type in _provider_types()
    return False


@functools.cache
def _provider_types() -> frozenset[str]:
    from rolegate.plugins.manager import build_registry

    try:
        return frozenset(build_registry().providers)
    except PluginError:
        return frozenset()  # a broken plugin: the warnings stand (`rolegate plugins` says why)


def _verdict(row: dict[str, Any]) -> str | None:
    """The file's line on stdout (none when it did not load: stderr said why)."""
    if row["topology_problems"]:
        return f"{row['path']}: INVALID {row['topology_problems']} topology problem(s)"
    if row["hash"] is None:
        return None
    status = "OK" if row["valid"] else "INVALID (warnings with --strict)"
    return f"{row['path']}: {status} {row['name']} revision {row['revision']} {row['hash']}"


def _cmd_check(args: argparse.Namespace) -> int:
    rows = []
    for path in args.policy:
        row = _check_one(path, args)
        rows.append(row)
        line = None if args.json else _verdict(row)
        if line is not None:
            print(line)  # as each file is done, after its diagnostics on stderr
    if args.json:
        shown = [{k: v for k, v in row.items() if k != "topology_problems"} for row in rows]
        print(json.dumps(shown, indent=2))
    return 0 if all(row["valid"] for row in rows) else 1


def check(
    policy: Annotated[list[str], typer.Argument(help="policy files (YAML, JSON or TOML)")],
    strict: Annotated[bool, typer.Option("--strict", help="fail on warnings too")] = False,
    skip_files: Annotated[
        bool,
        typer.Option(
            "--skip-files",
            help="check the policy only: do not look for the servers' model files or compare "
            "drafts (on a machine that does not hold the models)",
        ),
    ] = False,
    json: Annotated[
        bool,
        typer.Option("--json", help="per file: path, valid, name, revision, hash, problems"),
    ] = False,
) -> Call:
    """Validate and lint policy files (exit 0 ok, 1 invalid)."""
    return later(_cmd_check, locals())


def _cmd_route(args: argparse.Namespace) -> int:
    import anyio

    from rolegate.policy import RouteRequest, route

    policy = load(args.policy)
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
    decision = route(request, policy, None, anyio.run(reader(policy).read, request))
    print(decision.model_dump_json(indent=2))
    return 0 if decision.outcome != "refuse" else 3


def route(
    task: Annotated[str, typer.Argument(help="the task, as the caller would word it")],
    policy: PolicyOpt = None,
    job: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str | None, typer.Option()] = None,
    channel: Annotated[str | None, typer.Option()] = None,
    context_tokens: Annotated[int | None, typer.Option()] = None,
    input_tokens: Annotated[
        int | None, typer.Option(help="exact input token count, if known")
    ] = None,
    needs: Annotated[
        list[str] | None, typer.Option(help="a required capability (repeatable)")
    ] = None,
    local_only: Annotated[bool, typer.Option("--local-only")] = False,
    risk: Annotated[Literal["low", "normal", "high"] | None, typer.Option()] = None,
    max_output_tokens: Annotated[int | None, typer.Option()] = None,
) -> Call:
    """Print the routing decision for a task as JSON (exit 3 when refused)."""
    return later(_cmd_route, {**locals(), "needs": needs or None})


def _cmd_eval_router(args: argparse.Namespace) -> int:
    from pathlib import Path

    import anyio

    from rolegate.engine.evaluation import Report, evaluate, load_labelled, render

    policy = load(args.policy)
    rows = load_labelled(Path(args.labelled), policy)
    examples = {text for i in policy.intents for text in i.intent.example_texts()}
    learnt = sum(row.task in examples for row in rows)
    if learnt:
        print(
            f"note: {learnt} of {len(rows)} tasks are examples of the policy's intents; the "
            "classifier has learnt them, so they measure its memory, not how it reads new "
            "tasks (measure with tasks that are not in 'examples:')",
            file=sys.stderr,
        )
    task_reader = reader(policy)

    async def measure() -> Report:
        # The examples are embedded and the models trained first: latency is per task read.
        await task_reader.warm()
        return await evaluate(policy, task_reader, rows)

    report = anyio.run(measure)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render(report))
    return 0


def eval_router(
    labelled: Annotated[
        str, typer.Argument(help='JSON lines: {"task": ..., "intent": ... or null}')
    ],
    policy: PolicyOpt = None,
    json: JsonOpt = False,
) -> Call:
    """Measure a policy's intents on labelled tasks (accuracy, confusion, coverage, latency).

    Accuracy per intent, the confusion matrix, coverage at the classifier's threshold, and
    latency."""
    return later(_cmd_eval_router, locals())


def register(app: typer.Typer) -> None:
    app.command()(check)
    app.command()(route)
    app.command("eval-router")(eval_router)
