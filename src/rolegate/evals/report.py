"""An eval run's figures per model, as a table, JSON or CSV (no prompt or output text)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rolegate.ledger.quality import EvalResult, EvalRun
from rolegate.policy.budget import usd
from rolegate.policy.evidence import wilson


@dataclass(frozen=True, slots=True)
class ModelSummary:
    model: str
    passed: int
    judged: int  # passed + failed: what the pass rate is over
    errors: int
    refused: int
    pass_rate: float | None
    interval: tuple[float, float] | None  # 95% Wilson
    latency_p50_ms: float | None
    ttft_p50_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_micro: int
    codes: dict[str, int]  # error and refusal codes, counted


def summarize(results: Sequence[EvalResult], models: Sequence[str]) -> list[ModelSummary]:
    """One summary per model, in ``models`` order."""
    return [_summary(model, [r for r in results if r.model == model]) for model in models]


def _summary(model: str, rows: list[EvalResult]) -> ModelSummary:
    passed = sum(r.outcome == "pass" for r in rows)
    judged = sum(r.outcome in ("pass", "fail") for r in rows)
    codes: dict[str, int] = {}
    for r in rows:
        if r.code:
            codes[r.code] = codes.get(r.code, 0) + 1
    answered = [r for r in rows if r.outcome in ("pass", "fail")]
    return ModelSummary(
        model=model,
        passed=passed,
        judged=judged,
        errors=sum(r.outcome == "error" for r in rows),
        refused=sum(r.outcome == "refused" for r in rows),
        pass_rate=passed / judged if judged else None,
        interval=wilson(passed, judged) if judged else None,
        latency_p50_ms=_median([r.latency_ms for r in answered]),
        ttft_p50_ms=_median([r.ttft_ms for r in answered]),
        input_tokens=sum(r.input_tokens or 0 for r in rows),
        output_tokens=sum(r.output_tokens or 0 for r in rows),
        cost_micro=sum(r.cost_micro for r in rows),
        codes=codes,
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def table(run: EvalRun, summaries: Sequence[ModelSummary]) -> str:
    head = (
        f"suite {run.suite} ({run.suite_hash}), role {run.role}, {run.cases} cases per model, "
        f"run {run.run_id}"
    )
    cols = ("model", "pass", "rate", "95% CI", "p50 ms", "ttft ms", "tokens in/out", "cost",
            "not judged")  # fmt: skip
    lines: list[list[str]] = [list(cols)]
    for s in summaries:
        lines.append(
            [
                s.model,
                f"{s.passed}/{s.judged}",
                "-" if s.pass_rate is None else f"{s.pass_rate:.1%}",
                "-" if s.interval is None else f"{s.interval[0]:.0%}-{s.interval[1]:.0%}",
                _ms(s.latency_p50_ms),
                _ms(s.ttft_p50_ms),
                f"{s.input_tokens:,}/{s.output_tokens:,}",
                usd(s.cost_micro),
                ", ".join(f"{k} x{v}" for k, v in sorted(s.codes.items())) or "-",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    body = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]  # fmt: skip
    return "\n".join([head, *body])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def as_json(run: EvalRun, summaries: Sequence[ModelSummary], rows: Sequence[EvalResult]) -> str:
    return json.dumps(
        {
            "run": asdict(run),
            "models": [asdict(s) for s in summaries],
            "results": [asdict(r) for r in rows],
        },
        indent=2,
    )


CSV_FIELDS = (
    "run_id", "suite", "case_id", "model", "source", "outcome", "score", "latency_ms",
    "ttft_ms", "input_tokens", "output_tokens", "cost_micro", "code", "at_us",
)  # fmt: skip


def as_csv(rows: Sequence[EvalResult]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return out.getvalue()
