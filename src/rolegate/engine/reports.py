"""What the audit trail says happened, summed for operators (`rolegate report`, `rolegate
audit`): calls, tokens, spend, refusals, fallbacks, escalations and consents per model, job,
role, provider, day or code, over a time window.

Pure functions over (at_us, record) pairs, plus one loader from a ledger. The audit trail
holds ids, names, counts, costs and codes, never prompt or completion text. Money stays in
integer micro-USD here; ``dollars`` and ``usd_number`` turn it into dollars at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, tzinfo
from typing import Literal, get_args

from rolegate.ledger.quality import QualityStore
from rolegate.ledger.records import from_us, to_us
from rolegate.policy.budget import MICRO_PER_USD

__all__ = [
    "AUDIT_KINDS",
    "BY",
    "NONE",
    "NO_SINCE",
    "By",
    "Report",
    "Tally",
    "day_of",
    "dollars",
    "key_of",
    "load_report",
    "select_audit",
    "summarize",
    "usd_number",
]

By = Literal["model", "job", "role", "provider", "day", "code"]
BY: tuple[str, ...] = get_args(By)
#: The group of a record that does not carry the field grouped by.
NONE = "-"
#: The lowest BIGINT: a window with no lower bound.
NO_SINCE = -(2**63)


def day_of(at_us: int, tz: tzinfo = UTC) -> str:
    """The calendar date (ISO, ``YYYY-MM-DD``) of ``at_us`` in ``tz``: exact, no float."""
    return from_us(at_us).astimezone(tz).date().isoformat()


def dollars(micro: int) -> str:
    """Micro-USD as a plain decimal for scripts, by integer arithmetic: 1234567 -> '1.234567'."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def usd_number(micro: int) -> float:
    """Micro-USD as a JSON number of dollars (exact to the micro-dollar below $10^9)."""
    return micro / MICRO_PER_USD


def _count(value: object) -> int:
    """An int field of a record; anything else (absent, bool, text) counts 0."""
    return value if type(value) is int else 0


@dataclass(slots=True)
class Tally:
    """What a group of audit records adds up to.

    ``calls``, the tokens and ``cost_micro`` are the non-evaluation provider calls;
    evaluation calls (``"evaluation": true``) count only in ``eval_calls`` and
    ``eval_cost_micro``. ``refusals``: decisions refused plus calls whose code is not OK.
    ``fallbacks``: calls made on a declared fallback (``fallback_from`` set).
    ``escalations``: escalation evaluations that moved a role up (code ESCALATE).
    Consents: the users' answers to fallback consent requests and escalation consent.
    """

    decisions: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro: int = 0
    refusals: int = 0
    fallbacks: int = 0
    escalations: int = 0
    consents_granted: int = 0
    consents_denied: int = 0
    eval_calls: int = 0
    eval_cost_micro: int = 0

    def add(self, record: Mapping[str, object]) -> bool:
        """Count one audit record; False (nothing counted) for a kind no column counts."""
        kind = record.get("kind")
        if kind == "decision":
            self.decisions += 1
            self.refusals += record.get("outcome") == "refuse"
        elif kind == "call":
            self._call(record)
        elif kind == "escalation":
            self.escalations += record.get("code") == "ESCALATE"
            self.consents_granted += record.get("consent") == "granted"
            self.consents_denied += record.get("consent") == "declined"
        elif kind == "consent":
            self.consents_granted += record.get("code") == "GRANTED"
            self.consents_denied += record.get("code") == "DECLINED"
        else:
            return False
        return True

    def _call(self, record: Mapping[str, object]) -> None:
        cost = _count(record.get("cost_micro"))
        if record.get("evaluation") is True:
            self.eval_calls += 1
            self.eval_cost_micro += cost
            return
        self.calls += 1
        self.input_tokens += _count(record.get("input_tokens"))
        self.output_tokens += _count(record.get("output_tokens"))
        self.cost_micro += cost
        self.refusals += record.get("code") != "OK"
        self.fallbacks += record.get("fallback_from") not in (None, "")

    def merge(self, other: Tally) -> None:
        for one in fields(self):
            setattr(self, one.name, getattr(self, one.name) + getattr(other, one.name))

    def as_dict(self) -> dict[str, object]:
        """The figures for JSON: money as dollars (``spend_usd``, ``eval_spend_usd``)."""
        figures: dict[str, object] = asdict(self)
        del figures["cost_micro"], figures["eval_cost_micro"]
        figures["spend_usd"] = usd_number(self.cost_micro)
        figures["eval_spend_usd"] = usd_number(self.eval_cost_micro)
        return figures


@dataclass(frozen=True, slots=True)
class Report:
    """A window's audit records summed per group (``rows``, sorted by key) and in all."""

    by: str
    since_us: int
    until_us: int | None
    rows: tuple[tuple[str, Tally], ...]
    total: Tally = field(default_factory=Tally)
    records: int = 0  # audit records counted

    def as_dict(self) -> dict[str, object]:
        def when(us: int | None) -> str | None:
            if us is None or us == NO_SINCE:
                return None
            return from_us(us).isoformat()

        return {
            "by": self.by,
            "since": when(self.since_us),
            "until": when(self.until_us),
            "records": self.records,
            "rows": [{self.by: key, **tally.as_dict()} for key, tally in self.rows],
            "total": self.total.as_dict(),
        }


def key_of(
    by: str,
    at_us: int,
    record: Mapping[str, object],
    providers: Mapping[str, str],
    tz: tzinfo = UTC,
) -> str:
    """The group a record falls in. ``provider``: the record's, else the provider the policy
    gives its model (decisions name no provider). ``day``: the record's date in ``tz``."""
    if by == "day":
        return day_of(at_us, tz)
    value = record.get(by)
    if by == "provider" and not value:
        model = record.get("model")
        value = providers.get(model) if isinstance(model, str) else None
    if value is None or value == "" or isinstance(value, bool):
        return NONE
    return str(value)


def summarize(
    rows: Iterable[tuple[int, Mapping[str, object]]],
    by: str,
    since_us: int,
    until_us: int | None,
    providers: Mapping[str, str] | None = None,
    tz: tzinfo = UTC,
) -> Report:
    """Sum (at_us, record) pairs per ``by`` group and in all; records of other kinds (not
    decision, call, escalation or consent) are skipped."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}; got {by!r}")
    groups: dict[str, Tally] = {}
    total = Tally()
    counted = 0
    for at_us, record in rows:
        one = Tally()
        if not one.add(record):
            continue
        counted += 1
        groups.setdefault(key_of(by, at_us, record, providers or {}, tz), Tally()).merge(one)
        total.merge(one)
    ordered = tuple(sorted(groups.items(), key=lambda item: item[0]))
    return Report(by, since_us, until_us, ordered, total, counted)


def load_report(
    ledger: QualityStore,
    by: str,
    since: datetime | None,
    until: datetime | None = None,
    providers: Mapping[str, str] | None = None,
    tz: tzinfo = UTC,
) -> Report:
    """The report of the audit records the ledger stored at since <= at < until."""
    since_us = NO_SINCE if since is None else to_us(since)
    until_us = None if until is None else to_us(until)
    rows = ledger.audit_rows_between(since_us, until_us)
    return summarize(rows, by, since_us, until_us, providers, tz)


AUDIT_KINDS = ("call", "consent", "decision", "escalation", "fallback", "fallback_refused")


def select_audit(
    rows: Sequence[tuple[int, Mapping[str, object]]],
    *,
    job: str | None = None,
    code: str | None = None,
    process: str | None = None,
    session: str | None = None,
    limit: int,
) -> list[tuple[int, Mapping[str, object]]]:
    """The newest ``limit`` rows (newest first) of those, in write order, whose job and
    code are the ones given and whose process is ``process`` or starts with it and a colon
    (a pid picks that process's records); a filter left None matches every record."""
    kept = [
        (at, record)
        for at, record in rows
        if job in (None, record.get("job"))
        and code in (None, record.get("code"))
        and (process is None or _of_process(record, process))
        and session in (None, record.get("session"))
    ]
    return list(reversed(kept))[:limit]


def _of_process(record: Mapping[str, object], process: str) -> bool:
    found = record.get("process")
    return isinstance(found, str) and (found == process or found.startswith(process + ":"))
