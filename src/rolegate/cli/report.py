"""`rolegate report` (what the audit trail adds up to), and the terminal views of `rolegate
budget` and the filters of `rolegate audit`. Tables go to stdout through rich (imported when
a table is drawn: `check` and `route` never pay for it); `--json` and `--csv` are for
scripts. Money is shown in dollars, never micro-dollars."""

from __future__ import annotations

import argparse
import csv as csv_text
import io
import json as json_text
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from rolegate.cli.common import Call, LedgerOpt, PolicyOpt, SinceOpt, UntilOpt, later
from rolegate.cli.replay import _sqlite_file, parse_when
from rolegate.engine.reports import By
from rolegate.errors import Code, RequestError
from rolegate.policy.budget import usd, utcnow

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from rolegate.engine.reports import Report, Tally
    from rolegate.engine.results import BudgetReport, ScopeReport
    from rolegate.ledger import Ledger

#: The table's width when stdout is no terminal and COLUMNS is unset (rich would take 80).
_PIPE_WIDTH = 160
_BAR = 20
_COLUMNS = (
    ("decisions", "decisions"), ("calls", "calls"), ("input_tokens", "input tok"),
    ("output_tokens", "output tok"), ("spend_usd", "spend"), ("refusals", "refusals"),
    ("fallbacks", "fallbacks"), ("escalations", "escalations"),
    ("consents_granted", "granted"), ("consents_denied", "denied"),
    ("eval_calls", "eval calls"), ("eval_spend_usd", "eval spend"),
)  # fmt: skip
TOTAL = "(total)"


def console() -> Console:
    """stdout as rich sees it: no markup or emoji codes (names are shown as they are)."""
    from rich.console import Console

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(
        file=sys.stdout,
        width=_PIPE_WIDTH if piped else None,
        markup=False,
        emoji=False,
        highlight=False,
    )


def count(text: str) -> int:
    """A whole number >= 0 (--limit), refused as a bad argument otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise typer.BadParameter(f"{text!r} is not a whole number >= 0")
    return value


def window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """--since and --until (7d, 12h, ISO...) as times; --until must come after --since."""
    now = utcnow()
    start = None if since is None else parse_when(since, now, "--since")
    end = None if until is None else parse_when(until, now, "--until")
    if start is not None and end is not None and end <= start:
        raise RequestError("--until must be later than --since", code=Code.INVALID_ARGUMENT)
    return start, end


# -- rolegate report -------------------------------------------------------------------------


def _open_recorded(url: str | None) -> Ledger:
    """The ledger, never created by a read: a SQLite file that does not exist is an error."""
    from rolegate.ledger import open_ledger

    found = _sqlite_file(url)
    if found is not None and not found.is_file():
        raise RequestError(f"no ledger at {found}: nothing was recorded to report on")
    return open_ledger(url)


def _cmd_report(args: argparse.Namespace) -> int:
    from rolegate.engine.reports import load_report
    from rolegate.policy import load_default_policy, load_policy

    since, until = window(args.since, args.until)
    policy = load_default_policy() if args.policy is None else load_policy(args.policy)
    providers = {name: model.provider for name, model in policy.doc.models.items()}
    ledger = _open_recorded(args.ledger or policy.doc.ledger)
    try:
        report = load_report(ledger, args.by, since, until, providers)
    finally:
        ledger.close()
    if args.json:
        print(json_text.dumps(report.as_dict(), indent=2))
    elif args.csv:
        sys.stdout.write(report_csv(report))
    else:
        console().print(report_table(report))
    return 0


def report(
    since: SinceOpt = "7d",
    until: UntilOpt = None,
    by: Annotated[By, typer.Option(help="group by")] = "model",
    policy: PolicyOpt = None,
    ledger: LedgerOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    csv: Annotated[bool, typer.Option("--csv", help="print the rows and a total as CSV")] = False,
) -> Call:
    """Spend, tokens, calls, refusals, fallbacks, escalations, consents from the audit trail.

    Sum what the ledger's audit trail recorded in a window, per model, job, role, provider,
    day (UTC) or code: decisions, provider calls, input and output tokens, spend, refusals
    (decisions refused and calls that did not end OK), fallbacks (calls on a declared
    fallback), escalations (moves up a ladder), consents (granted/denied), and evaluation
    calls with their spend, kept apart from the rest. The audit trail holds no prompt or
    completion text."""
    if json and csv:
        # argparse's mutually exclusive group said it this way; scripts may match on it.
        raise typer.BadParameter("not allowed with argument --json", param_hint="--csv")
    return later(_cmd_report, locals())


def _cells(tally: Tally) -> list[str]:
    figures = tally.as_dict()
    cells = []
    for name, _ in _COLUMNS:
        if name == "spend_usd":
            cells.append(usd(tally.cost_micro))
        elif name == "eval_spend_usd":
            cells.append(usd(tally.eval_cost_micro))
        else:
            cells.append(f"{figures[name]:,}")
    return cells


def _moment(at_us: int) -> str:
    from rolegate.ledger.records import from_us

    return from_us(at_us).strftime("%Y-%m-%d %H:%M UTC")


def report_table(report: Report) -> Table:
    """The report as a rich table: one row per group, then the total."""
    from rich.table import Table

    from rolegate.engine.reports import NO_SINCE

    since = "the start" if report.since_us == NO_SINCE else _moment(report.since_us)
    until = "now" if report.until_us is None else _moment(report.until_us)
    table = Table(
        title=f"audit trail by {report.by}, {since} to {until} ({report.records:,} records)",
        caption=None if report.records else "no audit records in the window",
    )
    table.add_column(report.by)
    for _, head in _COLUMNS:
        table.add_column(head, justify="right")
    for i, (key, tally) in enumerate(report.rows):
        table.add_row(key, *_cells(tally), end_section=i == len(report.rows) - 1)
    table.add_row("total", *_cells(report.total), style="bold")
    return table


def report_csv(report: Report) -> str:
    """A header, one line per group and a last line for the total (key ``(total)``);
    money as plain dollars (``0.004200``)."""
    from rolegate.engine.reports import dollars

    buffer = io.StringIO()
    writer = csv_text.writer(buffer, lineterminator="\n")
    writer.writerow([report.by, *(name for name, _ in _COLUMNS)])
    for key, tally in [*report.rows, (TOTAL, report.total)]:
        figures: Mapping[str, object] = {
            **tally.as_dict(),
            "spend_usd": dollars(tally.cost_micro),
            "eval_spend_usd": dollars(tally.eval_cost_micro),
        }
        writer.writerow([key, *(figures[name] for name, _ in _COLUMNS)])
    return buffer.getvalue()


# -- rolegate budget -------------------------------------------------------------------------


def usage_bar(spent: int, reserved: int, cap: int | None, width: int = _BAR) -> str:
    """Spent (█) then reserved (▒) against the cap, the rest free (░), and the share used."""
    if cap is None:
        return "no cap"
    used = spent + reserved
    if cap <= 0:
        return "█" * width + (" cap 0" if used else " 0%")
    full = min(width, spent * width // cap)
    upto = max(full, min(width, used * width // cap))
    return "█" * full + "▒" * (upto - full) + "░" * (width - upto) + f" {used * 100 // cap}%"


def _resets(scope: ScopeReport) -> str:
    if scope.resets_at is None:
        return "slides"
    return datetime.fromisoformat(scope.resets_at).strftime("%Y-%m-%d %H:%M %Z")


def _measures(scope: ScopeReport) -> list[list[str]]:
    """One row of cells (spent, reserved, cap, left, bar) per cap the line has: dollars,
    tokens (a line with neither cap shows its dollars)."""
    rows = []
    if scope.cap_usd_micro is not None or scope.cap_tokens is None:
        cap, left = scope.cap_usd_micro, scope.left_usd_micro
        rows.append([
            usd(scope.spent_usd_micro), usd(scope.reserved_usd_micro),
            "-" if cap is None else usd(cap), "-" if left is None else usd(left),
            usage_bar(scope.spent_usd_micro, scope.reserved_usd_micro, cap),
        ])  # fmt: skip
    if scope.cap_tokens is not None:
        tokens, left_tokens = scope.cap_tokens, scope.left_tokens

        def tok(n: int | None) -> str:
            return "-" if n is None else f"{n:,} tok"

        rows.append([
            tok(scope.spent_tokens), tok(scope.reserved_tokens), tok(tokens), tok(left_tokens),
            usage_bar(scope.spent_tokens, scope.reserved_tokens, tokens),
        ])  # fmt: skip
    return rows


def budget_table(report: BudgetReport) -> Table:
    """One row per budget line and cap: window, reset time, money in dollars, and a bar."""
    from rich.table import Table

    ref = report.policy
    table = Table(
        title=f"budgets of {ref.name} revision {ref.revision} ({report.ledger})",
        caption=None if report.scopes else "the policy has no budget lines",
    )
    for head in ("line", "window", "resets"):
        table.add_column(head)
    for head in ("spent", "reserved", "cap", "left"):
        table.add_column(head, justify="right")
    table.add_column("spent+reserved of cap")
    for scope in report.scopes:
        for i, cells in enumerate(_measures(scope)):
            named = [scope.id, scope.window, _resets(scope)] if i == 0 else ["", "", ""]
            table.add_row(*named, *cells)
    return table


def print_budget(report: BudgetReport) -> None:
    out = console()
    out.print(budget_table(report))
    check = report.check
    if check is not None:
        verdict = "fits" if check.admitted else "refused"
        out.print(
            f"check {check.model}: {verdict} {check.code}: {check.message} "
            f"({check.input_tokens:,} input tokens, {check.token_method})",
            soft_wrap=True,
        )


# -- rolegate audit --------------------------------------------------------------------------


def _cmd_audit(args: argparse.Namespace) -> int:
    from rolegate.engine.bootstrap import open_policy_ledger
    from rolegate.policy import load_default_policy, load_policy

    policy = load_default_policy() if args.policy is None else load_policy(args.policy)
    ledger = open_policy_ledger(policy, args.ledger)
    try:
        rows = read_audit(ledger, args)
    finally:
        ledger.close()
    for at_us, record in rows:
        # 'at': when the ledger wrote it (UTC); the record itself holds no time.
        stamped = {**record, "at": _utc(at_us)}
        print(json_text.dumps(stamped, sort_keys=True, default=str))
    return 0


def _utc(at_us: int) -> str:
    from rolegate.ledger.records import from_us

    return from_us(at_us).isoformat(timespec="microseconds").replace("+00:00", "Z")


def audit(
    policy: PolicyOpt = None,
    ledger: Annotated[str | None, typer.Option(help="ledger URL")] = None,
    since: Annotated[
        str | None, typer.Option(help="7d, 12h, 30m or an ISO date/time (default: no bound)")
    ] = None,
    until: UntilOpt = None,
    kind: Annotated[
        str | None,
        typer.Option(help="call, consent, decision, escalation, fallback or fallback_refused"),
    ] = None,
    job: Annotated[str | None, typer.Option(help="records of this job only")] = None,
    code: Annotated[
        str | None,
        typer.Option(help="records with this code only (OK, ROUTED, BUDGET_EXHAUSTED...)"),
    ] = None,
    process: Annotated[
        str | None,
        typer.Option(help="one server process's records: its pid, or the record's whole 'process'"),
    ] = None,
    session: Annotated[
        str | None,
        typer.Option(
            help="one MCP session's records: the record's 'session' (Streamable HTTP's "
            "mcp-session-id, or a connection label)"
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(parser=count, metavar="<int>", help="newest records to print")
    ] = 50,
) -> Call:
    """Recent audit records as JSON lines, newest first (ids, models, counts, codes; no text).

    The newest audit records that pass every filter given, as JSON lines, newest first.
    Records name the server process that wrote them (over stdio, one MCP window) and, for
    tool calls, the MCP session they came in on."""
    return later(_cmd_audit, locals())


def read_audit(ledger: Ledger, args: argparse.Namespace) -> list[tuple[int, Mapping[str, object]]]:
    """The newest ``--limit`` records (newest first) that pass the filters, each with the
    time it was written (microseconds since the epoch)."""
    from rolegate.engine.reports import AUDIT_KINDS, NO_SINCE, select_audit
    from rolegate.ledger.records import to_us

    if args.kind is not None and args.kind not in AUDIT_KINDS:
        raise RequestError(
            f"--kind {args.kind!r} is not a kind of audit record; the kinds are "
            f"{', '.join(AUDIT_KINDS)}",
            code=Code.INVALID_ARGUMENT,
        )
    filters = (args.since, args.until, args.kind, args.job, args.code, args.process, args.session)
    if all(value is None for value in filters):
        return list(ledger.recent_audit_rows(args.limit))
    since, until = window(args.since, args.until)
    rows = ledger.audit_rows_between(
        NO_SINCE if since is None else to_us(since),
        None if until is None else to_us(until),
        args.kind,
    )
    return select_audit(
        rows,
        job=args.job,
        code=args.code,
        process=args.process,
        session=args.session,
        limit=args.limit,
    )
