"""`rolegate replay`: what a policy change would have done to the recorded decisions."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlsplit

import typer

from rolegate.cli.common import Call, LedgerOpt, SinceOpt, UntilOpt, later
from rolegate.errors import Code, LedgerError, PolicyError, RequestError
from rolegate.policy.budget import usd, utcnow

if TYPE_CHECKING:
    from rolegate.engine.replay import ReplayReport

_SPAN = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORMS = "use a span back from now (7d, 12h, 30m) or an ISO date/time (2025-03-01T12:00Z)"


def parse_when(text: str, now: datetime, flag: str) -> datetime:
    """'7d', '12h', '30m', '45s', '2w' back from ``now``, or an ISO date/time (UTC if naive)."""
    span = _SPAN.fullmatch(text.strip())
    try:
        if span is not None:
            return now - timedelta(seconds=int(span.group(1)) * _UNIT_S[span.group(2)])
        moment = datetime.fromisoformat(text.strip())
    except OverflowError:
        raise RequestError(
            f"{flag} {text!r} reaches past year 1; give a shorter span", code=Code.INVALID_ARGUMENT
        ) from None
    except ValueError:
        raise RequestError(
            f"{flag} {text!r} is no time: {_FORMS}", code=Code.INVALID_ARGUMENT
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _sqlite_file(url: str | None) -> Path | None:
    """The SQLite file a ledger URL names (None: not a SQLite URL)."""
    if url is None:
        from rolegate.ledger import default_path

        return default_path()
    if not url.lower().startswith("sqlite:"):
        return None
    path = unquote(urlsplit(url).path)
    return Path("/" + path.lstrip("/")) if path.startswith("//") else Path(path)


def _report(args: argparse.Namespace) -> ReplayReport:
    from rolegate.engine.replay import load_replay
    from rolegate.ledger import open_ledger
    from rolegate.policy import load_policy

    now = utcnow()
    since = parse_when(args.since, now, "--since")
    until = None if args.until is None else parse_when(args.until, now, "--until")
    if until is not None and until <= since:
        raise RequestError("--until must be later than --since", code=Code.INVALID_ARGUMENT)
    policy = load_policy(args.policy)
    url = args.ledger or policy.doc.ledger
    found = _sqlite_file(url)
    if found is not None and not found.is_file():
        # Opening would create it: replay never writes, and there is nothing to replay.
        raise RequestError(f"no ledger at {found}: nothing was recorded to replay")
    ledger = open_ledger(url)
    try:
        return load_replay(policy, ledger, since, until)
    finally:
        ledger.close()


def _cmd_replay(args: argparse.Namespace) -> int:
    try:
        report = _report(args)
    except (PolicyError, RequestError, LedgerError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        sys.stdout.write(render(report, show=args.show))
    return 0


def replay(
    policy: Annotated[str, typer.Option(metavar="NEW.yaml", help="the new policy")],
    since: SinceOpt = "7d",
    until: UntilOpt = None,
    ledger: LedgerOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
    show: Annotated[
        int, typer.Option(metavar="N", help="changed decisions to list (--json lists all)")
    ] = 20,
) -> Call:
    """What a policy change would have done to the recorded decisions (no model calls).

    Re-decide the route_task decisions recorded in the ledger under a new policy and print
    what would change: routes moved, refusals added or removed, cost per
    job/role/model/provider and per budget line of the new policy, and which of its budget
    caps would have been hit.

    It never calls a model and never writes to the ledger. The task text was never stored,
    so tasks are not classified again: each keeps its recorded intent. Runs are costed from
    their calls' real tokens at the new prices; decisions never run at their worst case
    (estimated). Budget windows count only the replayed period (spend before --since is not
    known)."""
    return later(_cmd_replay, locals())


# -- text ----------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], numeric: int) -> list[str]:
    """Aligned columns; the last ``numeric`` columns are right-aligned."""
    cells = [[str(c) for c in row] for row in [head, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    first = len(head) - numeric
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if i >= first else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(parts).rstrip())
    return lines


def _signed(micro: int) -> str:
    return ("+" if micro > 0 else "") + usd(micro)


def _summary(report: ReplayReport) -> list[str]:
    window = report.window
    changed = report.total - report.unchanged
    out = [
        f"replay of {report.total} decision(s) from {window.since or 'the start'} to "
        f"{window.until or 'now'} under {report.policy.name} revision {report.policy.revision}"
        f" ({report.policy.hash})",
        f"{report.unchanged} unchanged, {changed} changed; {report.run} run (costed from their "
        f"calls' tokens), {report.estimated} costed at worst case (never run), "
        f"{report.approximate} approximate (recorded without the request)",
    ]
    if report.skipped:
        out.append(f"{report.skipped} record(s) skipped: not a readable decision")
    return out


def _moves(report: ReplayReport) -> list[str]:
    if not report.moved:
        return ["routes moved: none"]
    rows = [(m.from_model, m.to_model, m.count) for m in report.moved]
    return ["routes moved", *_table(("from", "to", "decisions"), rows, 1)]


def _refusals(report: ReplayReport) -> list[str]:
    codes = sorted({*report.refusals_added, *report.refusals_removed})
    if not codes:
        return ["refusals: no change"]
    rows = [(c, report.refusals_added.get(c, 0), report.refusals_removed.get(c, 0)) for c in codes]
    return ["refusals", *_table(("code", "added", "removed"), rows, 2)]


def _costs(report: ReplayReport) -> list[str]:
    rows = [
        (scope, target, usd(d.old_micro), usd(d.new_micro), _signed(d.delta_micro))
        for scope, targets in report.cost.items()
        for target, d in targets.items()
    ]
    return ["cost per scope", *_table(("scope", "target", "old", "new", "delta"), rows, 3)]


def _caps(report: ReplayReport) -> list[str]:
    if not report.caps_hit:
        return ["budget caps hit: none"]
    rows = [(c.line, c.window, c.first_at, c.refused_after, c.diverted) for c in report.caps_hit]
    head = ("line", "window", "first hit", "refused", "diverted")
    return ["budget caps hit", *_table(head, rows, 2)]


def _changes(report: ReplayReport, show: int) -> list[str]:
    if not report.changes or show <= 0:
        return []
    shown = report.changes[:show]
    rows = [
        (c.at, c.decision_id, _side(c.old), _side(c.new), "~" if c.approximate else "")
        for c in shown
    ]
    more = (
        f" (first {show} of {len(report.changes)}; --json lists all)"
        if len(report.changes) > show
        else ""
    )
    return [
        f"changed decisions{more}",
        *_table(("at", "decision", "old", "new", "approx"), rows, 0),
    ]


def _side(end: Any) -> str:
    if end.outcome == "route":
        return f"route {end.model}"
    return f"{end.outcome} {end.code}"


def render(report: ReplayReport, *, show: int = 20) -> str:
    """The report as text: summary, moves, refusal changes, cost per scope, caps hit."""
    blocks = [
        _summary(report), _moves(report), _refusals(report), _costs(report), _caps(report),
        _changes(report, show),
    ]  # fmt: skip
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"
