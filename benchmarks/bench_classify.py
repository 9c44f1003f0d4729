"""Intent classification on a labelled set, with the embedded default embedder.

Run: python benchmarks/bench_classify.py [--method knn|centroid] [--threshold T]

Pinned to one core. Builds an 11-intent policy from benchmarks/data/intent_examples.yaml
(the fine labels: chat, code, reasoning, math, planning, summarize, long_context, extract,
ocr, writing, translate; chat is the default intent) and measures it on
benchmarks/data/intents_labelled.jsonl (several hundred tasks, none of them an example):
accuracy overall and per intent, the confident share (coverage) and its accuracy at the
threshold, with a sweep of thresholds; then every example policy, its own intents and
examples, with the labels mapped to its intents (benchmarks/data/intent_mapping.yaml), and
the keyword-only rules those policies had before, for comparison. Then speed: reading a
first-seen task (p50, one core), a repeated one (cached), and route() with the proposal.
Targets (issue 12): >= 90% overall, >= 95% on the confident share with >= 60% coverage,
first-seen p50 <= 40 ms, cached <= 50 us, route() p50 < 50 us.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import yaml

from rolegate.engine.evaluation import DEFAULT, Labelled, evaluate, render
from rolegate.engine.understanding import TaskReader, build_reader
from rolegate.plugins.manager import build_registry
from rolegate.policy import Policy, RouteRequest, load_policy, route
from rolegate.policy.loader import default_policy_text, load_policy_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"


def fine_policy(method: str, threshold: float) -> Policy:
    doc: dict[str, Any] = yaml.safe_load(default_policy_text())
    examples = yaml.safe_load((DATA / "intent_examples.yaml").read_text("utf-8"))
    doc["name"] = "fine-labels"
    doc["intents"] = {label: {"examples": texts} for label, texts in examples.items()}
    doc["defaults"]["intent"] = "chat"
    doc["classifier"] = {"method": method, "threshold": threshold}
    return load_policy_text(json.dumps(doc), "json", "<fine-labels>")


def labelled(mapping: dict[str, str | None] | None = None) -> list[Labelled]:
    rows = []
    for line in (DATA / "intents_labelled.jsonl").read_text("utf-8").splitlines():
        item = json.loads(line)
        label = item["label"] if mapping is None else mapping.get(item["label"])
        rows.append(Labelled(item["text"], label))
    return rows


def reader_for(policy: Policy) -> TaskReader:
    return build_reader(policy, build_registry(), None, os.environ, {})


async def sweep(policy: Policy, reader: TaskReader, rows: list[Labelled]) -> None:
    """Coverage and accuracy of the confident share at several thresholds (one pass)."""
    assert reader.classifier is not None
    seen = []
    for row in rows:
        proposal = await reader.classifier.classify(row.task)
        decision = route(RouteRequest(task=row.task), policy, None, proposal)
        seen.append(
            (proposal.confidence or 0.0, (decision.intent or DEFAULT) == (row.intent or DEFAULT))
        )
    print("threshold  coverage  accuracy of the confident share")
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        kept = [right for conf, right in seen if conf >= threshold]
        acc = sum(kept) / len(kept) if kept else 0.0
        print(f"{threshold:9.2f}  {len(kept) / len(seen):8.1%}  {acc:8.1%}")


async def speed(policy: Policy, reader: TaskReader, rows: list[Labelled]) -> None:
    assert reader.classifier is not None
    classifier = reader.classifier
    fresh = []
    for row in rows[:200]:
        task = row.task + " (v2)"  # not cached yet
        started = time.perf_counter()
        await classifier.classify(task)
        fresh.append((time.perf_counter() - started) * 1000)
    cached = []
    for row in rows[:200]:
        task = row.task + " (v2)"
        started = time.perf_counter()
        proposal = await reader.read(RouteRequest(task=task))
        cached.append((time.perf_counter() - started) * 1e6)
    routes = []
    for row in rows[:200]:
        request = RouteRequest(task=row.task + " (v2)")
        proposal = classifier.cached(request.task)
        started = time.perf_counter()
        route(request, policy, None, proposal)
        routes.append((time.perf_counter() - started) * 1e6)
    print(
        f"first-seen task: p50 {statistics.median(fresh):.1f} ms (target <= 40); "
        f"cached read: p50 {statistics.median(cached):.1f} us (target <= 50); "
        f"route() with the proposal: p50 {statistics.median(routes):.1f} us (target < 50)"
    )
    del proposal


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="knn", choices=["knn", "centroid"])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--skip-policies", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    policy = fine_policy(args.method, args.threshold)
    reader = reader_for(policy)
    assert reader.classifier is not None
    started = time.perf_counter()
    await reader.classifier.prepare()
    print(f"examples embedded in {time.perf_counter() - started:.2f} s "
          f"({sum(len(i.intent.examples) for i in policy.intents)} examples)")  # fmt: skip
    rows = labelled()
    print(f"== 11 fine intents, {args.method}, threshold {args.threshold}")
    print(render(await evaluate(policy, reader, rows)))
    await sweep(policy, reader, rows)
    await speed(policy, reader, rows)
    if not args.skip_policies:
        await example_policies()


async def example_policies() -> None:
    mapping = yaml.safe_load((DATA / "intent_mapping.yaml").read_text("utf-8"))
    for name, labels in mapping.items():
        policy = load_policy(ROOT / "examples" / "policies" / name)
        rows = labelled(labels)
        report = await evaluate(policy, reader_for(policy), rows)
        data = report.as_dict()
        keywords_only = await evaluate(policy, TaskReader(policy, None, None), rows)
        print(
            f"== {name}: accuracy {data['accuracy']:.1%} (keyword rules alone: "
            f"{keywords_only.as_dict()['accuracy']:.1%}); confident share "
            f"{data['confident_coverage']:.1%} at {data['confident_accuracy']:.1%}"
        )


if __name__ == "__main__":
    anyio.run(main)
