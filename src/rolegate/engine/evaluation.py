"""Measuring a policy's intents on a labelled set (``rolegate eval-router``).

Each labelled task is read and routed exactly as route_task does (the task reader's
proposal, then the pure router), without a ledger; the intent the decision records is
compared with the label. The report: accuracy overall and per intent, the confusion matrix,
how the intents were found (keywords, size, classifier, default), the classifier's coverage
at the policy's threshold with the accuracy of that confident share, and reading latency.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rolegate.engine.understanding import TaskReader
from rolegate.errors import Code, RequestError
from rolegate.policy import Policy, RouteRequest, route

DEFAULT = "(default)"
CLASSIFIED = ("embedding", "lexical")  # the classifier's own answers


@dataclass(frozen=True, slots=True)
class Labelled:
    task: str
    intent: str | None  # None: no intent (the policy's default route, with no default intent)


@dataclass
class Report:
    total: int = 0
    correct: int = 0
    first_choice_correct: int = 0  # the classifier's best label, sure or not
    by_method: Counter[str] = field(default_factory=Counter)
    confident: int = 0
    confident_correct: int = 0
    per_intent: dict[str, list[int]] = field(default_factory=dict)  # label -> [right, total]
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def add(
        self, expected: str, got: str, best: str, method: str, confident: bool, ms: float
    ) -> None:
        right = expected == got
        self.total += 1
        self.correct += right
        self.first_choice_correct += expected == best
        self.by_method[method] += 1
        if confident:
            self.confident += 1
            self.confident_correct += right
        cell = self.per_intent.setdefault(expected, [0, 0])
        cell[0] += right
        cell[1] += 1
        self.confusion[(expected, got)] += 1
        self.latencies_ms.append(ms)

    def as_dict(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms) or [0.0]
        return {
            "tasks": self.total,
            "accuracy": _share(self.correct, self.total),
            "first_choice_accuracy": _share(self.first_choice_correct, self.total),
            "confident_coverage": _share(self.confident, self.total),
            "confident_accuracy": _share(self.confident_correct, self.confident),
            "by_method": dict(self.by_method),
            "per_intent": {k: _share(*v) for k, v in sorted(self.per_intent.items())},
            "read_ms_p50": round(lat[len(lat) // 2], 3),
            "read_ms_p95": round(lat[int(len(lat) * 0.95)], 3),
        }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def load_labelled(path: Path, policy: Policy) -> list[Labelled]:
    """JSON lines with ``task`` (or ``text``) and ``intent`` (a policy intent, or null for a
    task that should get none); INVALID_ARGUMENT names the first bad line."""
    rows: list[Labelled] = []
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RequestError(
            f"{path}: cannot be read as UTF-8 text ({type(exc).__name__}); give a file of "
            'JSON lines such as {"task": "...", "intent": "..."}',
            code=Code.INVALID_ARGUMENT,
        ) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        task = item.get("task", item.get("text")) if isinstance(item, dict) else None
        intent = item.get("intent") if isinstance(item, dict) else None
        if not isinstance(task, str) or not (intent is None or intent in policy.doc.intents):
            raise RequestError(
                f"{path}:{number}: each line needs 'task' (text) and 'intent' (one of "
                f"{sorted(policy.doc.intents)}, or null)",
                code=Code.INVALID_ARGUMENT,
            )
        if not task.strip():
            raise RequestError(f"{path}:{number}: the task is empty", code=Code.INVALID_ARGUMENT)
        rows.append(Labelled(task, intent))
    if not rows:
        raise RequestError(
            f"{path}: holds no labelled tasks; write one JSON object a line",
            code=Code.INVALID_ARGUMENT,
        )
    return rows


async def evaluate(
    policy: Policy, reader: TaskReader, rows: Iterable[Labelled], report: Report | None = None
) -> Report:
    """Read and route every row; adds to ``report`` when given (folds of one measurement)."""
    report = report if report is not None else Report()
    for row in rows:
        request = RouteRequest(task=row.task)
        started = time.perf_counter()
        proposal = await reader.read(request)
        ms = (time.perf_counter() - started) * 1000
        decision = route(request, policy, None, proposal)
        how = decision.classification
        method = how.method if how else "none"
        confident = method in ("keywords", "size") or bool(
            method in CLASSIFIED and how is not None and how.confident
        )
        got = decision.intent or DEFAULT
        best = how.label if how is not None and method in CLASSIFIED and how.label else got
        report.add(row.intent or DEFAULT, got, best, method, confident, ms)
    return report


def render(report: Report) -> str:
    data = report.as_dict()
    lines = [
        f"tasks {data['tasks']}: accuracy {data['accuracy']:.1%} (the classifier's first "
        f"choice, sure or not: {data['first_choice_accuracy']:.1%}); confident share "
        f"{data['confident_coverage']:.1%} of tasks at {data['confident_accuracy']:.1%} accuracy",
        f"found by: {', '.join(f'{k} {v}' for k, v in sorted(report.by_method.items()))}",
        f"reading latency: p50 {data['read_ms_p50']} ms, p95 {data['read_ms_p95']} ms",
        "per intent (accuracy, tasks):",
    ]
    for label, (right, total) in sorted(report.per_intent.items()):
        lines.append(f"  {label:<20} {right / total:6.1%} {total:5}")
    labels = sorted({a for a, _ in report.confusion} | {b for _, b in report.confusion})
    width = max(len(x) for x in labels) + 1
    lines.append("confusion (rows: expected, columns: got):")
    lines.append(" " * width + "".join(f"{x[:6]:>7}" for x in labels))
    for a in labels:
        cells = "".join(f"{report.confusion.get((a, b), 0) or '.':>7}" for b in labels)
        lines.append(f"{a:<{width}}{cells}")
    return "\n".join(lines)
