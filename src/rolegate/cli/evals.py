"""`rolegate eval` (run a suite on a role's candidate models) and `rolegate evidence` (what
the ledger holds: a run's results, or the evidence the quality rules see)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import anyio
import typer

from rolegate.cli.common import BlockOpt, Call, Format, LedgerOpt, PolicyOpt, later, repeated
from rolegate.policy import Policy, load_default_policy, load_policy

#: What `run_suite` calls after each case: (cases done, cases in all, the judged case).
OnCase = Callable[[int, int, Any], None]
#: Exit code when some cases could not be judged (a refusal or a failed call).
NOT_ALL_JUDGED = 4


def _policy(path: str | None) -> Policy:
    return load_default_policy() if path is None else load_policy(path)


def _line(done: int, total: int, judged: Any) -> str:
    row = judged.row
    shown = row.outcome.upper() + (f" {row.code}" if row.code else "")
    ms = "" if row.latency_ms is None else f"{row.latency_ms:,.0f} ms"
    why = f"  ({judged.reason})" if judged.reason and row.outcome != "pass" else ""
    width = len(str(total))
    return f"[{done:>{width}}/{total}] {row.model}  {row.case_id}  {shown}  {ms}{why}"


def _progress(done: int, total: int, judged: Any) -> None:
    print(_line(done, total, judged), file=sys.stderr, flush=True)


@contextmanager
def _reporting(quiet: bool) -> Iterator[OnCase | None]:
    """Per-case progress on stderr: a rich bar on a terminal (cases that did not pass are
    still listed above it), else one line per case, which logs and scripts can read."""
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        yield _progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("eval", total=None)

        def advance(done: int, total: int, judged: Any) -> None:
            row = judged.row
            bar.update(task, completed=done, total=total,
                       description=f"{row.model} {row.case_id}")  # fmt: skip
            if row.outcome != "pass":
                bar.console.print(_line(done, total, judged), markup=False, highlight=False)

        yield advance


def _cmd_eval(args: argparse.Namespace) -> int:
    from rolegate.engine.bootstrap import build_engine, open_policy_ledger
    from rolegate.evals.report import as_csv, as_json, summarize, table
    from rolegate.evals.runner import candidate_models, run_suite
    from rolegate.evals.suites import load_suite, validate_suite
    from rolegate.logs import configure_logging
    from rolegate.plugins.manager import build_registry

    configure_logging(args.log_level)  # one log line per call would bury the progress lines
    policy = _policy(args.policy)
    registry = build_registry(block=args.block)
    suite = load_suite(args.suite)
    validate_suite(suite, registry.checkers, policy.doc.contracts)
    ledger = open_policy_ledger(policy, args.ledger)
    engine = build_engine(policy, ledger=ledger, registry=registry)
    models = candidate_models(engine, args.role, _split(args.models))
    run_id = "eval_" + uuid.uuid4().hex[:16]
    print(f"eval {run_id}: suite {suite.name} ({len(suite.cases)} cases) x {len(models)} "
          f"model(s) {', '.join(models)}, role {args.role}", file=sys.stderr)  # fmt: skip

    async def go(progress: OnCase | None) -> Any:
        try:
            return await run_suite(engine, ledger, suite, registry.checkers, role=args.role,
                                   models=models, job=args.job, run_id=run_id,
                                   progress=progress)  # fmt: skip
        finally:
            await engine.aclose()

    try:
        with _reporting(args.quiet) as progress:
            outcome = anyio.run(go, progress)
    except KeyboardInterrupt:
        print(f"interrupted: the results so far are stored under {run_id} "
              f"(rolegate evidence --run {run_id})", file=sys.stderr)  # fmt: skip
        return 130
    finally:
        ledger.close()
    rows = [j.row for j in outcome.results]
    summaries = summarize(rows, models)
    if args.format == "json":
        print(as_json(outcome.run, summaries, rows))
    elif args.format == "csv":
        sys.stdout.write(as_csv(rows))
    else:
        print(table(outcome.run, summaries))
    return NOT_ALL_JUDGED if any(r.outcome in ("error", "refused") for r in rows) else 0


def _split(models: list[str] | None) -> list[str]:
    return [m.strip() for group in models or () for m in group.split(",") if m.strip()]


def _cmd_evidence(args: argparse.Namespace) -> int:
    from rolegate.engine.bootstrap import open_policy_ledger

    policy = _policy(args.policy)
    ledger = open_policy_ledger(policy, args.ledger)
    try:
        if args.run:
            return _show_run(ledger, args.run, args.format)
        return _show_evidence(policy, ledger, args.suite, args.format)
    finally:
        ledger.close()


def _show_run(ledger: Any, run_id: str, fmt: str) -> int:
    from rolegate.errors import Code, RequestError
    from rolegate.evals.report import as_csv, as_json, summarize, table

    run = ledger.eval_run(run_id)
    if run is None:
        raise RequestError(f"no eval run {run_id!r} in this ledger", code=Code.INVALID_ARGUMENT)
    rows = ledger.eval_results(run_id)
    summaries = summarize(rows, run.models)
    if fmt == "json":
        print(as_json(run, summaries, rows))
    elif fmt == "csv":
        sys.stdout.write(as_csv(rows))
    else:
        print(table(run, summaries))
    return 0


def _show_evidence(policy: Policy, ledger: Any, suites: list[str] | None, fmt: str) -> int:
    from rolegate.policy.quality import qualifies, rules

    wanted = {r.suite: r for r in rules(policy)}
    names = suites or sorted(wanted) or sorted({r.suite for r in ledger.eval_runs(None, 200)})
    out: list[dict[str, object]] = []
    for name in names:
        rule = wanted.get(name)
        for e in ledger.evidence(name, None):
            low, high = e.interval()
            out.append({"suite": name, "model": e.model, "passed": e.passed, "cases": e.cases,
                        "pass_rate": round(e.pass_rate, 4), "interval": [round(low, 4),
                        round(high, 4)], "qualifies": None if rule is None else
                        qualifies(rule, e)})  # fmt: skip
    if fmt == "json":
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'suite':<20} {'model':<28} {'passed':>12} {'rate':>7} {'95% CI':>11}  qualifies")
    for row in out:
        rate, (low, high) = row["pass_rate"], row["interval"]  # type: ignore[misc]
        mark = {None: "-", True: "yes", False: "no"}[row["qualifies"]]  # type: ignore[index]
        print(f"{row['suite']:<20} {row['model']:<28} {row['passed']}/{row['cases']:<7} "
              f"{rate:>7.1%} {low:>5.0%}-{high:<5.0%}  {mark}")  # fmt: skip
    return 0


def eval_(
    suite: Annotated[
        str, typer.Argument(help="suite file (YAML or JSON), e.g. examples/evals/math.yaml")
    ],
    role: Annotated[str, typer.Option(help="the role whose prompt path the cases use")],
    models: Annotated[
        list[str] | None,
        typer.Option(help="a,b,c (repeatable; default: the role's model and candidates)"),
    ] = None,
    job: Annotated[
        str | None, typer.Option(help="run under this job (its allowlist, budgets, local_only)")
    ] = None,
    policy: PolicyOpt = None,
    ledger: LedgerOpt = None,
    block: BlockOpt = None,
    format: Format = "table",
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress on stderr")] = False,
    log_level: Annotated[str, typer.Option(help="rolegate's logs on stderr")] = "WARNING",
) -> Call:
    """Run an eval suite on a role's candidate models, results to the ledger (exit 4: unjudged).

    Each case runs through the normal run path; exit 4 when some cases could not be judged.
    Progress goes to stderr: a progress bar on a terminal, else one line per case."""
    return later(_cmd_eval, {**locals(), "block": repeated(block)})


def evidence(
    policy: PolicyOpt = None,
    ledger: Annotated[str | None, typer.Option(help="ledger URL")] = None,
    suite: Annotated[list[str] | None, typer.Option(help="only this suite (repeatable)")] = None,
    run: Annotated[
        str | None, typer.Option(help="one eval run's results (its id, printed by `rolegate eval`)")
    ] = None,
    format: Format = "table",
) -> Call:
    """The quality evidence in the ledger, per suite and model, or one run."""
    return later(_cmd_evidence, {**locals(), "suite": suite or None})


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
    app.command()(evidence)
