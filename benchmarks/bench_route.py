"""Route decisions per second and p50/p99 latency, in process, on the largest example policy.

Run: .venv/bin/python benchmarks/bench_route.py [--n 20000]
Target (issue 2): p50 under 50 microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from rolegate.policy import RouteRequest, load_policy, route

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"

REQUESTS = [
    RouteRequest(task="implement the parser fix in the rust crate"),
    RouteRequest(task="plan the architecture for the new spec", context_tokens=12_000),
    RouteRequest(task="research sweep over these documents", context_tokens=90_000),
    RouteRequest(task="audit the diff", job="spec-audit"),
    RouteRequest(task="hello there", local_only=True),
    RouteRequest(task="explain why does borrowck complain", role="tutor"),
    RouteRequest(task="x", needs=("long_context", "tools")),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    largest = max(EXAMPLES.glob("*.yaml"), key=lambda p: p.stat().st_size)
    policy = load_policy(largest)
    for r in REQUESTS:  # warm up
        route(r, policy)
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(args.n):
        t0 = time.perf_counter_ns()
        route(REQUESTS[i % len(REQUESTS)], policy)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    elapsed = time.perf_counter() - start
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"policy: {largest.name} ({len(policy.models)} models, {len(policy.doc.roles)} roles)")
    print(f"decisions: {args.n}  decisions/s: {args.n / elapsed:,.0f}")
    print(
        f"p50: {p50:.1f} us  p99: {p99:.1f} us  target p50 < 50 us: "
        f"{'met' if p50 < 50 else 'MISSED'} (ratio {p50 / 50:.2f}x of target)"
    )


if __name__ == "__main__":
    main()
