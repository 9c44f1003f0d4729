"""Ledger admissions per second and p99 admission latency, 1 and 8 processes, per backend.

Run: .venv/bin/python benchmarks/bench_ledger.py [--pg URL] [--n 300]
The PostgreSQL URL comes from --pg, else $ROLEGATE_BENCH_PG_URL, else $ROLEGATE_TEST_PG_URL
(scripts/setup_postgres.sh prints one); without any, the PostgreSQL rows are skipped.
Each process makes --n reservations against two budget lines (a day cap in money and a
month cap in tokens, both large enough to admit every call) in a fresh ledger, all processes
starting together at a barrier. An admission is one reserve() transaction, committed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rolegate.ledger import default_owner, open_ledger
from rolegate.policy.compiled import BudgetLine

CTX = multiprocessing.get_context("spawn")
NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
LINES = (
    BudgetLine("global:*:day", "global", None, "day", None, 10**15, None),
    BudgetLine("model:m:month", "model", "m", "month", None, None, 10**15),
)


def worker(url: str, index: int, n: int, barrier: Any, results: Any) -> None:
    ledger = open_ledger(url)
    owner = default_owner()
    ledger.reserve(  # warm up: connection, statement plans, line rows
        request_id=f"warm-{index}", owner=owner, lines=LINES, cost_micro=1, tokens=1,
        now=NOW, lease_s=3600,
    )  # fmt: skip
    latencies: list[float] = []
    barrier.wait()
    started = time.time()
    for j in range(n):
        t0 = time.perf_counter()
        ledger.reserve(
            request_id=f"{index}-{j}", owner=owner, lines=LINES, cost_micro=1_000, tokens=500,
            now=NOW, lease_s=3600,
        )  # fmt: skip
        latencies.append(time.perf_counter() - t0)
    results.put((started, time.time(), latencies))
    ledger.close()


def run(url: str, processes: int, n: int) -> tuple[float, float, float]:
    """(admissions per second, p50 ms, p99 ms) with ``processes`` processes at once."""
    open_ledger(url).close()  # create the schema once, outside the measurement
    barrier = CTX.Barrier(processes)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=worker, args=(url, i, n, barrier, results)) for i in range(processes)
    ]
    for p in procs:
        p.start()
    reports = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a benchmark worker failed with exit code {p.exitcode}")
    elapsed = max(r[1] for r in reports) - min(r[0] for r in reports)
    latencies = sorted(x for r in reports for x in r[2])
    p99 = statistics.quantiles(latencies, n=100)[98]
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3, p99 * 1e3


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rolegate-bench-") as tmp:
        yield f"sqlite://{Path(tmp) / 'ledger.sqlite3'}"


@contextmanager
def pg_store(admin_url: str) -> Iterator[str]:
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in admin_url else "?"
        yield f"{admin_url}{sep}options={quote(f'-c search_path={schema}')}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", help="PostgreSQL URL (a scratch schema is created and dropped)")
    parser.add_argument("--n", type=int, default=300, help="reservations per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    pg_url = (
        args.pg or os.environ.get("ROLEGATE_BENCH_PG_URL") or os.environ.get("ROLEGATE_TEST_PG_URL")
    )
    print(f"{os.cpu_count()} CPUs; {args.n} reservations per process; 2 budget lines each")
    print(f"{'backend':<10} {'procs':>5} {'admissions/s':>13} {'p50 ms':>8} {'p99 ms':>8}")
    stores: list[tuple[str, Any]] = [("sqlite", sqlite_store)]
    if pg_url:
        stores.append(("postgres", lambda: pg_store(pg_url)))
    for name, store in stores:
        for processes in args.processes:
            with store() as url:
                rate, p50, p99 = run(url, processes, args.n)
            print(f"{name:<10} {processes:>5} {rate:>13,.0f} {p50:>8.2f} {p99:>8.2f}")
    if not pg_url:
        print("postgres   skipped: pass --pg URL or set ROLEGATE_BENCH_PG_URL")


if __name__ == "__main__":
    main()
