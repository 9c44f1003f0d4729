"""Fuzzing all four tools through the in-memory client: every error is ``CODE: sentence``,
the server keeps answering, and memory stays bounded.

Each example is a session of generated calls: arguments the tools declare and ones they do
not, with values of every JSON kind (huge, negative, unicode, nested, near-valid names).
"""

from __future__ import annotations

import functools
import gc
import re
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.errors import Code
from rolegate.ledger import SqliteLedger
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from tests.conftest import example_path

CODED = re.compile(r"^([A-Z][A-Z_]+): \S")
CODES = {str(c) for c in Code}
TOOLS = ["route_task", "run_role", "check_budget", "escalate"]
# Names from the seed-001 policy, so that generated calls often get past the first check.
NAMES = ["architect", "implementer", "librarian", "critic", "spec-audit", "private-spec",
         "stage0-retrieval", "architect", "judge", "gpt-5.1-high", "kimi-k2", "t1"]  # fmt: skip
PARAMS = {
    "route_task": ["task", "job", "role", "channel", "context_tokens", "needs", "local_only",
                   "risk", "max_output_tokens"],
    "run_role": ["role", "prompt", "messages", "system", "job", "task_id", "stage",
                 "decision_id", "max_output_tokens", "channel", "local_only"],
    "check_budget": ["job", "role", "model", "text", "input_tokens", "output_tokens"],
    "escalate": ["role", "task_id", "job", "reason", "confidence", "failed_loops",
                 "context_estimate", "scope_large", "user_request", "high_risk",
                 "self_check_confidence", "interesting_failure"],
}  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),  # NaN cannot cross JSON; the service is tested for it apart
    st.text(max_size=40),
    st.sampled_from(NAMES),
    st.just("x" * 200_000),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=12,
)


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    tool = draw(st.sampled_from([*TOOLS, "no_such_tool"]))
    keys = draw(st.lists(st.sampled_from(PARAMS.get(tool, ["x"])), max_size=6, unique=True))
    args = {key: draw(values) for key in keys}
    if draw(st.booleans()):  # usually valid-looking essentials, so deeper paths are reached
        args.setdefault("role", draw(st.sampled_from(NAMES)))
        args.setdefault("task", draw(st.text(min_size=1, max_size=80)))
        args.setdefault("prompt", draw(st.text(min_size=1, max_size=80)))
        args = {k: v for k, v in args.items() if k in PARAMS.get(tool, [])}
    if draw(st.integers(0, 9)) == 0:
        args[draw(st.text(min_size=1, max_size=20))] = draw(values)  # an undeclared argument
    return tool, args


@functools.cache
def _server() -> MCPServer:
    """One server for the whole run, on a throw-away ledger; its providers are unreachable
    (nothing listens on their ports), so run_role exercises the failure paths."""
    # On tmpfs where there is one: the fuzz is about answers, not about fsync latency.
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="rolegate-fuzz-", dir=shm if shm.is_dir() else None))
    ledger = SqliteLedger(folder / "ledger.sqlite3")
    return build_server(build_engine(load_policy(example_path("001")), env={}, ledger=ledger))


MEMORY_SLACK = 32 * 1024 * 1024


async def _session(batch: list[tuple[str, dict[str, Any]]]) -> None:
    async with Client(_server(), mode="legacy") as client:
        for tool, args in batch:
            result = await client.call_tool(tool, args)
            if result.is_error:
                text = result.content[0].text
                match = CODED.match(text)
                assert match, f"{tool}: uncoded error {text[:300]!r}"
                assert match.group(1) in CODES, text[:300]
                assert "Error executing tool" not in text
                assert len(text) < 20_000, f"{tool}: a {len(text):,}-character error"
            else:
                assert isinstance(result.structured_content, dict)
        alive = await client.call_tool("route_task", {"task": "plan the parser"})
        assert alive.structured_content["code"] == "ROUTED"


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(calls(), min_size=10, max_size=30))
def test_every_tool_answers_every_call_with_a_result_or_a_coded_error(
    batch: list[tuple[str, dict[str, Any]]],
) -> None:
    anyio.run(_session, batch)


HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("route_task", {"task": "plan " * 20_000, "needs": ["x" * 128] * 32}),
    ("route_task", {"task": "x", "job": "j" * 100_000}),
    ("run_role", {"role": "architect", "prompt": "p" * 100_000, "task_id": "t" * 128}),
    ("run_role", {"role": "critic", "prompt": "x", "stage": "architect", "task_id": "t1"}),
    ("check_budget", {"role": "architect", "text": "y" * 100_000}),
    ("escalate", {"role": "architect", "confidence": 0.1, "reason": "r" * 4_000}),
    ("escalate", {"role": "architect", "task_id": "t2", "scope_large": True}),
    ("no_such_tool", {"x" * 1000: "y" * 1000}),
]


def test_memory_stays_bounded_over_thousands_of_hostile_calls() -> None:
    async def rounds(count: int) -> None:
        await _session(HOSTILE * count)

    anyio.run(rounds, 5)  # warm up: caches, thread pool, connections
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        anyio.run(rounds, 250)  # 2,000 calls
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < MEMORY_SLACK, f"the server kept {grown / 2**20:.1f} MiB more"
