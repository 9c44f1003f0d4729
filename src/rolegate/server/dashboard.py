"""The dashboard: ``GET /dashboard`` (one self-contained HTML page) and ``GET /dashboard.json``
(the same figures), over the engine's policy and its ledger's audit trail.

Per budget line, spend per day against its cap; decisions by outcome and code; calls and spend
per model; recent escalations and fallbacks; the active policy and what is resident. The sums
are ``engine.reports``'; the charts are inline SVG drawn here (``dashboard_svg``), with no
script, no font and nothing fetched from anywhere (the Content-Security-Policy forbids it).
The audit trail holds ids, names, counts, costs and codes, never prompt or completion text,
and the page shows nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import anyio
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rolegate.engine.budgets import scope_report
from rolegate.engine.core import PolicyEngine
from rolegate.engine.reports import NONE, day_of, summarize
from rolegate.ledger.base import Ledger
from rolegate.ledger.records import from_us, to_us
from rolegate.policy import Policy
from rolegate.policy.compiled import BudgetLine
from rolegate.server.dashboard_svg import compact_usd, render_page

__all__ = ["DASHBOARD_PATH", "dashboard_data", "dashboard_routes", "render_page"]

DASHBOARD_PATH = "/dashboard"
DEFAULT_DAYS = 14
MAX_DAYS = 92
RECENT_EVENTS = 20
CACHE_S = 5.0
"""Figures this fresh are served again: many open pages cost one read of the ledger."""
RESIDENCY_PROBE_S = 2.0
"""How long the page waits for the residency probe before it says 'unknown'."""
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Nothing may be loaded or run: the page is its own styles and inline SVG.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
Rows = Sequence[tuple[int, Mapping[str, object]]]


def _zone(policy: Policy) -> tzinfo:
    name = policy.doc.timezone
    return UTC if name is None else ZoneInfo(name)


def _int(value: object) -> int:
    """An int field of a record; anything else (absent, bool, text) counts 0."""
    return value if type(value) is int else 0


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _when(at_us: int, tz: tzinfo) -> str:
    return from_us(at_us).astimezone(tz).isoformat(timespec="seconds")


async def dashboard_data(engine: PolicyEngine, *, days: int = DEFAULT_DAYS) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (money in exact integer micro-USD).
    The ledger is read, and its records summed, in a worker thread."""
    policy, store = engine.policy, engine.store
    now = store.clock()
    snapshot = await store.snapshot()
    ledger = store.ledger
    figures = await anyio.to_thread.run_sync(lambda: _figures(policy, ledger, now, days))
    budgets = figures.pop("budgets")
    return {
        **figures,
        "budgets": [
            {**scope_report(line, now, snapshot).model_dump(), **charted}
            for line, charted in zip(policy.budgets, budgets, strict=True)
        ],
        "policy": await _policy(engine),
    }


def _figures(policy: Policy, ledger: Ledger | None, now: datetime, days: int) -> dict[str, Any]:
    tz = _zone(policy)
    today = now.astimezone(tz).date()
    first = today - timedelta(days=days - 1)
    day_list = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    since_us = to_us(datetime.combine(first, time(), tzinfo=tz))
    # Month lines chart the spend so far in each day's month: read from its first day.
    read_us = since_us
    if any(line.window == "month" for line in policy.budgets):
        read_us = min(since_us, to_us(datetime.combine(first.replace(day=1), time(), tzinfo=tz)))
    rows = [] if ledger is None else ledger.audit_rows_between(read_us)
    window = [(at, record) for at, record in rows if at >= since_us]
    providers = {mid: info.model.provider for mid, info in policy.models.items()}
    total = summarize(window, "code", since_us, None, providers, tz).total
    return {
        "generated_at": now.astimezone(tz).isoformat(timespec="seconds"),
        "window": {"days": day_list, "since": _when(since_us, tz), "timezone": str(tz)},
        "ledger": None if ledger is None else ledger.description,
        "totals": {
            **total.as_dict(),
            "spend_micro": total.cost_micro,
            "eval_spend_micro": total.eval_cost_micro,
        },
        "budgets": [
            {
                "measure": "usd" if line.usd_micro is not None else "tokens",
                "daily": daily,
                "running": _running(day_list, daily) if line.window == "month" else None,
            }
            for line, daily in _budget_days(policy, rows, day_list, tz)
        ],
        "decisions": _decisions(window),
        "models": _models(window, providers, since_us, tz),
        "events": _events(window, tz),
    }


def _released(record: Mapping[str, object]) -> bool:
    """A call that produced nothing: its reservation was released, nothing was charged
    (``accounting.settle`` audits it with no output and no cost, and a code other than OK)."""
    return (
        record.get("code") != "OK"
        and _int(record.get("output_tokens")) == 0
        and _int(record.get("cost_micro")) == 0
    )


def _budget_days(
    policy: Policy, rows: Rows, days: Sequence[str], tz: tzinfo
) -> list[tuple[BudgetLine, list[dict[str, object]]]]:
    """Per budget line, what the calls that count against it were charged each day: money
    and tokens as the ledger charges them (evaluation calls included, released calls not);
    for month lines also the spend earlier in the first day's month (``before_usd_micro``)."""
    index = {day: i for i, day in enumerate(days)}
    charged = {line.id: [[0, 0] for _ in days] for line in policy.budgets}
    before = dict.fromkeys(charged, 0)
    for at, record in rows:
        if record.get("kind") != "call" or _released(record):
            continue
        day = day_of(at, tz)
        i = index.get(day)
        cost = _int(record.get("cost_micro"))
        used = _int(record.get("input_tokens")) + _int(record.get("output_tokens"))
        lines = policy.budgets_touching(
            job=_name(record.get("job")),
            role=_name(record.get("role")),
            model=_name(record.get("model")) or "",
            provider=_name(record.get("provider")) or "",
        )
        for line in lines:
            if i is not None:
                charged[line.id][i][0] += cost
                charged[line.id][i][1] += used
            elif day < days[0] and day[:7] == days[0][:7]:
                before[line.id] += cost
    out = []
    for line in policy.budgets:
        daily: list[dict[str, object]] = [
            {"day": day, "usd_micro": cost, "tokens": used}
            for day, (cost, used) in zip(days, charged[line.id], strict=True)
        ]
        if line.window == "month":
            daily[0]["before_usd_micro"] = before[line.id]
        out.append((line, daily))
    return out


def _running(days: Sequence[str], daily: Sequence[Mapping[str, object]]) -> list[int]:
    """Month to date on each day: the spend since the first of that day's month."""
    out, month, total = [], "", 0
    for day, entry in zip(days, daily, strict=True):
        if day[:7] != month:
            month, total = day[:7], _int(entry.get("before_usd_micro"))
        total += _int(entry["usd_micro"])
        out.append(total)
    return out


_OUTCOME_ORDER = {"route": 0, "script_only": 1, "refuse": 2}


def _decisions(rows: Rows) -> list[dict[str, object]]:
    """route_task decisions per (outcome, code), routed first, then by count."""
    counts = Counter(
        (str(record.get("outcome")), str(record.get("code")))
        for _, record in rows
        if record.get("kind") == "decision"
    )
    ordered = sorted(counts.items(), key=lambda kv: (_OUTCOME_ORDER.get(kv[0][0], 3), -kv[1]))
    return [{"outcome": o, "code": c, "count": n} for (o, c), n in ordered]


def _models(
    rows: Rows, providers: Mapping[str, str], since_us: int, tz: tzinfo
) -> list[dict[str, object]]:
    """Per model that was decided on or called: the report's figures, spend in micro-USD."""
    report = summarize(rows, "model", since_us, None, providers, tz)
    out = []
    for model, tally in report.rows:
        if model == NONE or not (tally.calls or tally.decisions or tally.eval_calls):
            continue
        figures = {"model": model, "provider": providers.get(model), **tally.as_dict()}
        figures.update(spend_micro=tally.cost_micro, eval_spend_micro=tally.eval_cost_micro)
        out.append(figures)
    out.sort(key=lambda m: (-_int(m["calls"]), str(m["model"])))
    return out


def _event(
    at: str, kind: str, record: Mapping[str, object], moved: tuple[str, str]
) -> dict[str, object]:
    return {
        "at": at,
        "kind": kind,
        "id": record.get("request_id"),
        "task_id": record.get("task_id"),
        "role": record.get("role"),
        "from": record.get(moved[0]),
        "to": record.get(moved[1]),
        "code": record.get("code"),
    }


def _events(rows: Rows, tz: tzinfo) -> list[dict[str, object]]:
    """The newest escalations (that moved a role, or were refused) and fallback calls."""
    out: list[dict[str, object]] = []
    for at, record in reversed(rows):
        kind = record.get("kind")
        if kind == "escalation" and record.get("code") != "NO_ESCALATION":
            event = _event(_when(at, tz), "escalation", record, ("model", "to_model"))
            event["detail"] = record.get("fired") or record.get("consent")
            out.append(event)
        elif kind == "call" and record.get("fallback_from") not in (None, ""):
            event = _event(_when(at, tz), "fallback", record, ("fallback_from", "model"))
            event["detail"] = compact_usd(_int(record.get("cost_micro")))
            out.append(event)
        if len(out) == RECENT_EVENTS:
            break
    return out


async def _resident(engine: PolicyEngine) -> list[str] | None:
    """The tracked models loaded now (None: nothing tracked, or the probe took too long)."""
    residency = engine.residency
    if residency is None or not engine.policy.managed:
        return None
    with anyio.move_on_after(RESIDENCY_PROBE_S):
        return sorted(await residency.snapshot())
    return None


async def _policy(engine: PolicyEngine) -> dict[str, object]:
    policy = engine.policy
    doc = policy.doc
    resident = await _resident(engine)
    return {
        "name": policy.name,
        "revision": policy.revision,
        "hash": policy.hash,
        "roles": [
            {
                "role": rid,
                "model": role.model,
                "authority": role.authority,
                "fallback": list(role.fallback.models),
                "ladder": list(role.escalation.ladder),
            }
            for rid, role in sorted(doc.roles.items())
        ],
        "models": [
            {
                "model": mid,
                "provider": info.model.provider,
                "locality": info.locality,
                "premium": info.model.premium,
                "escalation_only": info.model.escalation_only,
                "tracked": mid in policy.managed,
                "resident": None
                if resident is None or mid not in policy.managed
                else mid in resident,
            }
            for mid, info in sorted(policy.models.items())
        ],
        "residency": None
        if not policy.managed
        else {"tracked": sorted(policy.managed), "resident": resident},
    }


def _days(request: Request) -> int | Response:
    given = request.query_params.get("days")
    if given is None:
        return DEFAULT_DAYS
    if given.isascii() and given.isdigit() and len(given) <= 3 and 1 <= int(given) <= MAX_DAYS:
        return int(given)
    return JSONResponse(
        {"error": "invalid_argument", "message": f"days must be a whole number 1-{MAX_DAYS}"},
        status_code=400,
        headers=HEADERS,
    )


Security = Callable[[], TransportSecuritySettings | None]


def dashboard_routes(
    engine: PolicyEngine, *, security: Security | None = None, refresh_s: int = 30
) -> list[Route]:
    """``GET /dashboard`` and ``GET /dashboard.json`` (``?days=N``, default 14).

    ``security()``, when given, returns the Host/Origin settings ``/mcp`` is checked with,
    and each request is checked the same way. A bearer token is not checked here:
    ``rolegate serve``'s ``BearerAuth`` wraps the whole app, these paths included.
    """

    cache: dict[int, tuple[float, dict[str, Any]]] = {}  # days -> (when, figures)

    async def figures(days: int) -> dict[str, Any]:
        hit = cache.get(days)
        if hit is not None and anyio.current_time() - hit[0] < CACHE_S:
            return hit[1]
        data = await dashboard_data(engine, days=days)
        cache[days] = (anyio.current_time(), data)
        return data

    async def guarded(request: Request, answer: Callable[[dict[str, Any]], Response]) -> Response:
        settings = None if security is None else security()
        if settings is not None:
            refused = await TransportSecurityMiddleware(settings).validate_request(request)
            if refused is not None:
                return refused
        days = _days(request)
        if isinstance(days, Response):
            return days
        return answer(await figures(days))

    async def page(request: Request) -> Response:
        return await guarded(
            request,
            lambda data: Response(
                render_page(data, refresh_s=refresh_s),
                media_type="text/html; charset=utf-8",
                headers=HEADERS,
            ),
        )

    async def as_json(request: Request) -> Response:
        return await guarded(request, lambda data: JSONResponse(data, headers=HEADERS))

    endpoints: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
        (DASHBOARD_PATH, page),
        (DASHBOARD_PATH + ".json", as_json),
    ]
    return [Route(path, endpoint, methods=["GET"]) for path, endpoint in endpoints]
