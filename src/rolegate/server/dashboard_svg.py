"""The dashboard's rendering from plain data: the HTML page (``render_page``, from what
``dashboard.dashboard_data`` returns) and its charts as inline SVG, drawn on the server.

No script and no library: each chart is one ``<svg class="chart">`` whose colours come from
the page's CSS (so it follows the light or dark scheme). Every bar is a ``<rect class="bar">``
with ``data-label`` and ``data-value`` (the exact integer it stands for) and a ``<title>``
for its tooltip; a bar is drawn only for a value above zero. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from rolegate.policy.budget import MICRO_PER_USD, usd

__all__ = ["Bar", "compact_usd", "day_chart", "hbar_chart", "render_page", "tokens"]

Fmt = Callable[[int], str]

_W = 640  # every chart's viewBox width; the page scales it to its column
_LEFT = 64  # room for the y axis labels of a day chart
_TOP, _BOTTOM = 14, 26
_PLOT_H = 150
CAP_IN_SCALE = 4
"""A day chart's scale reaches its cap when the cap is at most this many times the most
used; above that the bars would be slivers, and the cap is named instead of drawn."""


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def compact_usd(micro: int) -> str:
    """Micro-USD for an axis or a bar's end, rounded by integer arithmetic: '$1,234.57',
    '$0.0042' below a cent, '$0' for nothing."""
    if micro == 0:
        return "$0"
    sign, micro = ("-", -micro) if micro < 0 else ("", micro)
    if micro < MICRO_PER_USD // 100:
        tenths = (micro + 50) // 100  # hundredths of a cent
        return f"{sign}$0.{tenths:04d}"
    cents = (micro + 5_000) // 10_000
    return f"{sign}${cents // 100:,}.{cents % 100:02d}"


def tokens(count: int) -> str:
    """A token or call count: '12,345'."""
    return f"{count:,}"


def _num(value: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def _scale_top(largest: int) -> int:
    """The value at the top of a chart: a round number a little above ``largest``."""
    if largest <= 0:
        return 1
    step = 1
    while step * 10 <= largest:
        step *= 10
    for mult in (1, 2, 2.5, 5, 10):
        top = int(step * mult)
        if top >= largest * 1.05:
            return top
    return step * 10


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a horizontal bar chart: ``tone`` is a CSS class (its colour)."""

    label: str
    value: int
    tone: str = "tone-0"
    note: str = ""  # appended to the value at the bar's end (e.g. spend beside calls)


def _svg(kind: str, title: str, width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg class="chart {kind}" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>' + "".join(body) + "</svg>"
    )


def hbar_chart(kind: str, title: str, bars: Sequence[Bar], fmt: Fmt) -> str:
    """A horizontal bar chart: one row per bar, its label on the left, its value at its end.
    The longest bar spans the plot; an empty chart says so."""
    row, label_w, value_w = 24, 210, 150
    height = max(1, len(bars)) * row + 8
    body: list[str] = []
    if not bars:
        body.append(f'<text class="empty" x="8" y="{row - 6}">nothing recorded</text>')
    top = max((bar.value for bar in bars), default=0) or 1
    plot_w = _W - label_w - value_w
    for i, bar in enumerate(bars):
        y = 4 + i * row
        text = fmt(bar.value) + (f"  {bar.note}" if bar.note else "")
        body.append(
            f'<text class="label" x="{label_w - 8}" y="{y + 16}" text-anchor="end">'
            f"{_e(_clip(bar.label))}</text>"
        )
        width = plot_w * bar.value / top
        if bar.value > 0:
            body.append(
                f'<rect class="bar {_e(bar.tone)}" x="{label_w}" y="{y + 3}" '
                f'width="{_num(max(width, 1.5))}" height="{row - 8}" rx="3" '
                f'data-label="{_e(bar.label)}" data-value="{bar.value}">'
                f"<title>{_e(bar.label)}: {_e(text)}</title></rect>"
            )
        body.append(
            f'<text class="value" x="{_num(label_w + width + 6)}" y="{y + 16}">{_e(text)}</text>'
        )
    return _svg(kind, title, _W, height, body)


def _clip(label: str, most: int = 28) -> str:
    return label if len(label) <= most else label[: most - 1] + "…"


def day_chart(
    kind: str,
    title: str,
    days: Sequence[str],
    values: Sequence[int],
    fmt: Fmt,
    *,
    cap: int | None = None,
    running: Sequence[int] | None = None,
) -> str:
    """One bar per day (``values``), a dashed cap line at ``cap`` (or, for a cap far above
    everything, its value in the corner), and, when ``running`` is given (month windows: the
    spend so far in each day's month), a line of it against the cap. Bars of days over the
    cap are drawn in the warning colour."""
    n = max(1, len(days))
    slot = (_W - _LEFT - 8) / n
    used = max([*values, *(running or ()), 0])
    # A cap far above what was used would flatten every bar: it is then named, not drawn.
    in_scale = cap is not None and (used == 0 or cap <= CAP_IN_SCALE * used)
    top = _scale_top(max(used, cap or 0) if in_scale else used)
    base = _TOP + _PLOT_H

    def y_of(value: int) -> float:
        return base - _PLOT_H * value / top

    body: list[str] = []
    for tick in (0, top // 2, top):
        y = _num(y_of(tick))
        body.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - 8}" y1="{y}" y2="{y}"/>')
        body.append(
            f'<text class="axis" x="{_LEFT - 6}" y="{y}" dy="4" text-anchor="end">'
            f"{_e(fmt(tick))}</text>"
        )
    every = max(1, round(n / 7))
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        x = _LEFT + i * slot
        if value > 0:
            height = base - y_of(value)
            over = cap is not None and running is None and value > cap
            body.append(
                f'<rect class="bar{" over" if over else ""}" x="{_num(x + slot * 0.15)}" '
                f'y="{_num(base - height)}" width="{_num(slot * 0.7)}" height="{_num(height)}" '
                f'data-label="{_e(day)}" data-value="{value}">'
                f"<title>{_e(day)}: {_e(fmt(value))}</title></rect>"
            )
        if i % every == 0 or i == n - 1:
            body.append(
                f'<text class="axis" x="{_num(x + slot / 2)}" y="{base + 16}" '
                f'text-anchor="middle">{_e(day[5:])}</text>'
            )
    if running is not None and running:
        points = " ".join(
            f"{_num(_LEFT + (i + 0.5) * slot)},{_num(y_of(v))}" for i, v in enumerate(running)
        )
        body.append(f'<polyline class="running" points="{points}"/>')
    if cap is not None and not in_scale:
        body.append(
            f'<text class="cap-label off-scale" x="{_W - 10}" y="{_TOP}" dy="-2" '
            f'text-anchor="end" data-value="{cap}">cap {_e(fmt(cap))}, above the chart</text>'
        )
    elif cap is not None:
        y = _num(y_of(cap))
        body.append(
            f'<line class="cap" x1="{_LEFT}" x2="{_W - 8}" y1="{y}" y2="{y}" '
            f'data-value="{cap}"/>'
            f'<text class="cap-label" x="{_W - 10}" y="{y}" dy="-4" text-anchor="end">'
            f"cap {_e(fmt(cap))}</text>"
        )
    return _svg(kind, title, _W, base + _BOTTOM, body)


# -- the page -------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light dark;--bg:#f6f7f9;--card:#fff;--fg:#1d232b;--muted:#5d6773;
--grid:#e3e6ea;--accent:#3b6fd8;--spend:#d98a1c;--ok:#2f9e5b;--bad:#d6453d;--info:#7a5cc7;
--reserved:#9db7ee}
@media (prefers-color-scheme:dark){:root{--bg:#12161c;--card:#1b2129;--fg:#e6e9ed;
--muted:#9aa4b1;--grid:#2c343f;--accent:#6d9bff;--spend:#f0a43a;--ok:#4cc27c;--bad:#ff6b61;
--info:#a98cff;--reserved:#3d5a99}}
*{box-sizing:border-box}body{margin:0;padding:20px 28px;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}
h1{font-size:22px;margin:0}h2{font-size:16px;margin:26px 0 10px}
header .sub,footer,.muted{color:var(--muted)}code{font-size:12px;word-break:break-all}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px;
margin-top:16px}.tile{background:var(--card);border-radius:10px;padding:12px 14px}
.tile b{display:block;font-size:24px}.tile span{color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.card{background:var(--card);border-radius:10px;padding:12px 14px;margin:0}
figcaption{margin-bottom:6px}figcaption b{margin-right:8px}
.gauge{display:flex;height:10px;border-radius:5px;background:var(--grid);overflow:hidden;
margin:6px 0}.gauge .spent{background:var(--accent)}.gauge .reserved{background:var(--reserved)}
.gauge.over .spent{background:var(--bad)}
svg.chart{width:100%;height:auto;display:block}svg.decisions{max-width:760px}
.chart text{fill:var(--muted);font:12px system-ui,sans-serif}.chart text.value{fill:var(--fg)}
.chart .bar{fill:var(--accent)}.chart .bar.over{fill:var(--bad)}
.chart .grid{stroke:var(--grid)}.chart .cap{stroke:var(--bad);stroke-width:2;
stroke-dasharray:6 4}.chart text.cap-label{fill:var(--bad)}
.chart .running{fill:none;stroke:var(--spend);stroke-width:2.5}
.chart .tone-route{fill:var(--ok)}.chart .tone-refuse{fill:var(--bad)}
.chart .tone-script_only{fill:var(--info)}.chart .tone-spend{fill:var(--spend)}
table{border-collapse:collapse;width:100%;background:var(--card);border-radius:10px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--grid);font-size:13px}
th{color:var(--muted);font-weight:600}.tag{padding:1px 7px;border-radius:9px;font-size:12px;
color:#fff;background:var(--info)}.tag.fallback{background:var(--spend)}
.tag.yes{background:var(--ok)}.tag.no{background:var(--muted)}
"""


def _tile(label: str, value: str) -> str:
    return f'<div class="tile"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


Cell = str | tuple[str, str]  # text, or (a CSS class for a tag, text)


def _table(cls: str, head: Sequence[str], rows: Sequence[Sequence[Cell]], empty: str) -> str:
    """A table of escaped texts; a (class, text) cell shows its text as a coloured tag."""
    if not rows:
        return f'<p class="muted {cls}">{_e(empty)}</p>'

    def cell(value: Cell) -> str:
        if isinstance(value, tuple):
            return f'<td><span class="tag {_e(value[0])}">{_e(value[1])}</span></td>'
        return f"<td>{_e(value)}</td>"

    top = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{top}</tr></thead><tbody>{body}</tbody></table>'


def _amount(money: bool, value: int | None) -> str:
    if value is None:
        return "-"
    return usd(value) if money else f"{value:,} tokens"


def _budget_card(line: Mapping[str, Any], days: Sequence[str]) -> str:
    money = line["measure"] == "usd"
    unit = "usd_micro" if money else "tokens"
    cap, left = line[f"cap_{unit}"], line[f"left_{unit}"]
    spent, reserved = line[f"spent_{unit}"], line[f"reserved_{unit}"]
    values = [int(entry[unit]) for entry in line["daily"]]
    running = line["running"]
    chart = day_chart(
        "budget",
        f"{line['id']}: spend per day",
        days,
        values,
        compact_usd if money else tokens,
        cap=cap if line["window"] in ("day", "month") else None,
        running=running,
    )
    whole = max(cap or 1, spent + reserved, 1)
    over = " over" if cap is not None and spent > cap else ""
    gauge = (
        f'<div class="gauge{over}"><span class="spent" style="width:{_num(100 * spent / whole)}%">'
        f'</span><span class="reserved" style="width:{_num(100 * reserved / whole)}%"></span></div>'
    )
    where = " ".join(x for x in (line["scope"], line["target"], line["window"], "window") if x)
    shown = "month to date (line) and per day" if running is not None else "per day"
    resets = f" · resets {line['resets_at']}" if line["resets_at"] else ""
    usage = (
        f"spent {_amount(money, spent)} + reserved {_amount(money, reserved)} of "
        f"{_amount(money, cap)} · left {_amount(money, left)}{resets}"
    )
    return (
        f'<figure class="card budget" data-line="{_e(line["id"])}"><figcaption><b>'
        f'{_e(line["id"])}</b><span class="muted">{_e(where)} · {shown}</span></figcaption>'
        f"{gauge}<div>{_e(usage)}</div>{chart}</figure>"
    )


def _events(events: Sequence[Mapping[str, Any]]) -> str:
    rows: list[list[Cell]] = [
        [ev["at"], (ev["kind"], ev["kind"]), ev["id"] or "-", ev["task_id"] or "-",
         ev["role"] or "-", f"{ev['from'] or '-'} → {ev['to'] or '-'}", ev["code"] or "-",
         ev["detail"] or ""]
        for ev in events
    ]  # fmt: skip
    head = ["time", "kind", "id", "task", "role", "models", "code", "detail"]
    return _table("events", head, rows, "No escalations or fallbacks in this window.")


def _resident(m: Mapping[str, Any]) -> Cell:
    if not m["tracked"] or m["resident"] is None:
        return "not tracked" if not m["tracked"] else "unknown"
    return ("yes", "resident") if m["resident"] else ("no", "not loaded")


def _policy(policy: Mapping[str, Any]) -> str:
    def chain(names: Sequence[str]) -> str:
        return " → ".join(names) or "-"

    roles: list[list[Cell]] = [
        [r["role"], r["model"], r["authority"], chain(r["fallback"]), chain(r["ladder"])]
        for r in policy["roles"]
    ]
    models: list[list[Cell]] = [
        [m["model"], m["provider"], m["locality"],
         ", ".join(k for k in ("premium", "escalation_only") if m[k]) or "-", _resident(m)]
        for m in policy["models"]
    ]  # fmt: skip
    role_head = ["role", "model", "authority", "fallbacks", "escalation ladder"]
    model_head = ["model", "provider", "locality", "flags", "residency"]
    return (
        _table("roles", role_head, roles, "The policy declares no roles.")
        + "<h2>Models</h2>"
        + _table("models", model_head, models, "The policy declares no models.")
    )


def _charts(data: Mapping[str, Any]) -> tuple[str, str, str]:
    """The decisions chart and the two model charts."""
    tone = {"route": "tone-route", "refuse": "tone-refuse", "script_only": "tone-script_only"}
    decided = [
        Bar(f"{d['outcome']} · {d['code']}", d["count"], tone.get(d["outcome"], "tone-0"))
        for d in data["decisions"]
    ]
    models = data["models"]
    calls = [
        Bar(m["model"], m["calls"], note=f"({tokens(m['input_tokens'] + m['output_tokens'])} tok)")
        for m in models
    ]
    spend = [Bar(m["model"], m["spend_micro"], "tone-spend") for m in models]
    return (
        hbar_chart("decisions", "decisions by outcome and code", decided, tokens),
        hbar_chart("model-calls", "provider calls by model", calls, tokens),
        hbar_chart("model-spend", "spend by model", spend, compact_usd),
    )


def render_page(data: Mapping[str, Any], *, refresh_s: int = 30) -> str:
    """The whole dashboard as one HTML document (it reloads itself every ``refresh_s``)."""
    policy, totals, window = data["policy"], data["totals"], data["window"]
    days = window["days"]
    tiles = "".join(
        _tile(label, fmt(totals[key]))
        for label, key, fmt in (
            ("spend", "spend_micro", compact_usd), ("provider calls", "calls", tokens),
            ("decisions", "decisions", tokens), ("refusals", "refusals", tokens),
            ("fallbacks", "fallbacks", tokens), ("escalations", "escalations", tokens),
            ("evaluation spend", "eval_spend_micro", compact_usd),
        )
    )  # fmt: skip
    budgets = "".join(_budget_card(line, days) for line in data["budgets"])
    decisions, calls, spend = _charts(data)
    sub = (
        f"revision {policy['revision']} · {policy['hash']} · the last {len(days)} days, since "
        f"{window['since']} ({window['timezone']}) · generated {data['generated_at']} · ledger "
        f"{data['ledger'] or 'none: spend is not counted'}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
        f"<title>rolegate · {_e(policy['name'])}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>rolegate · {_e(policy["name"])}</h1><div class="sub">{_e(sub)}</div>'
        f'</header><section id="summary" class="tiles">{tiles}</section>'
        '<section id="budgets"><h2>Spend against caps</h2><div class="grid">'
        f"{budgets or '<p class=muted>The policy declares no budgets.</p>'}</div></section>"
        '<section id="decisions"><h2>Decisions by outcome and code</h2>'
        f'<div class="card">{decisions}</div></section>'
        '<section id="models"><h2>Models used</h2><div class="grid">'
        f'<figure class="card"><figcaption><b>Calls</b></figcaption>{calls}</figure>'
        '<figure class="card"><figcaption><b>Spend</b><span class="muted">evaluation calls '
        f"are counted apart</span></figcaption>{spend}</figure></div></section>"
        '<section id="events"><h2>Recent escalations and fallbacks</h2>'
        f"{_events(data['events'])}</section>"
        f'<section id="policy"><h2>Active policy: roles</h2>{_policy(policy)}</section>'
        "<footer><p>No prompt or completion text is stored in the audit trail or shown here."
        "</p></footer></body></html>"
    )
