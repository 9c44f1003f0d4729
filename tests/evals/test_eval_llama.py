"""The quality loop end to end against a real llama.cpp server: `rolegate eval` runs a suite
through the run path and stores results; the evidence then routes route_task and run_role;
contract checks feed live evidence. Roles run at temperature 0 on Gemma 3 270M.

The premium model's "cloud" is a listener that counts connections: an eval of a model no
job allows is refused without contacting it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.requests import RunRequest
from rolegate.evals.runner import run_suite
from rolegate.evals.suites import load_suite
from rolegate.ledger import SqliteLedger
from rolegate.plugins.manager import build_registry
from rolegate.policy import Policy, RouteRequest, load_policy
from tests.support.llama import LlamaServer
from tests.support.servers import CountingEndpoint

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

POLICY = """
version: 1
name: quality-llama
providers:
  llama: {{type: openai, base_url: "{v1}", locality: local, max_retries: 0}}
  cloud: {{type: openai, base_url: "http://127.0.0.1:{cloud}/v1", locality: cloud,
           api_key_env: CLOUD_KEY, max_retries: 0, connect_timeout_s: 2}}
models:
  gemma-a: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
             price: {{input_per_mtok: "2", output_per_mtok: "2"}}, timeout_s: 120}}
  gemma-b: {{provider: llama, name: gemma3-270m, context_window: 2048, reserve_tokens: 256,
             price: {{input_per_mtok: "1", output_per_mtok: "1"}}, timeout_s: 120}}
  premium: {{provider: cloud, name: big-1, context_window: 200000, reserve_tokens: 4096,
             premium: true, price: {{input_per_mtok: "15", output_per_mtok: "75"}}}}
roles:
  solver:
    model: gemma-a
    candidates: [gemma-b]
    temperature: 0
    quality: {{suite: tiny, min_pass_rate: 0.3, min_cases: 3}}
  extractor:
    model: gemma-b
    temperature: 0
    output_contract: answer
    quality: {{suite: answers, min_pass_rate: 0.5, min_cases: 2, live: true}}
contracts:
  answer: {{required: [answer], types: {{answer: string}}, enforce: true}}
defaults: {{max_output_tokens: 48}}
"""

SUITE = """
name: tiny
description: one case that always passes, one that never can, one numeric
system: Answer briefly.
max_output_tokens: 24
cases:
  - id: anything
    prompt: Say hello.
    check: {type: regex, pattern: "(?s).*"}
  - id: impossible
    prompt: Say hello.
    check: {type: exact, value: "@@never-said@@"}
  - id: sum
    prompt: "What is 2 + 2? Answer with the number only."
    check: {type: numeric, value: 4}
"""


@pytest.fixture
def setup(llama: LlamaServer, tmp_path: Path) -> dict[str, Any]:
    cloud = CountingEndpoint()
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY.format(v1=llama.v1, cloud=cloud.port))
    suite_path = tmp_path / "tiny.yaml"
    suite_path.write_text(SUITE)
    yield {
        "policy": policy_path,
        "suite": suite_path,
        "ledger": tmp_path / "ledger.db",
        "cloud": cloud,
        "tmp": tmp_path,
    }
    cloud.close()


def rolegate(
    *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUD_KEY": "sk-test", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "rolegate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_eval_runs_each_model_through_the_run_path_and_stores_every_result(
    setup: dict[str, Any],
) -> None:
    url = f"sqlite:///{setup['ledger']}"
    done = rolegate("eval", str(setup["suite"]), "--role", "solver", "--policy",
                    str(setup["policy"]), "--ledger", url, "--models", "gemma-a,gemma-b",
                    "--models", "premium", "--format", "json")  # fmt: skip
    # The premium model is refused (no job allows it): not every case was judged.
    assert done.returncode == 4, done.stderr
    report = json.loads(done.stdout)
    assert report["run"]["finished_us"] is not None  # the run as stored, finished
    rows = report["results"]
    assert len(rows) == 9
    by = {(r["model"], r["case_id"]): r for r in rows}
    for model in ("gemma-a", "gemma-b"):
        assert by[(model, "anything")]["outcome"] == "pass"
        assert by[(model, "impossible")]["outcome"] == "fail"
        assert by[(model, "sum")]["outcome"] in ("pass", "fail")
        for case in ("anything", "impossible", "sum"):
            row = by[(model, case)]
            assert row["output_tokens"] >= 1
            assert row["latency_ms"] > 0
            assert row["ttft_ms"] is not None  # the provider streams: first token timed
            assert 0 < row["ttft_ms"] <= row["latency_ms"]
            assert row["cost_micro"] >= 1
    for case in ("anything", "impossible", "sum"):
        assert by[("premium", case)]["outcome"] == "refused"
        assert by[("premium", case)]["code"] == "NOT_ALLOWLISTED"
    assert setup["cloud"].connections == 0
    # Progress went to stderr, one line per case.
    assert done.stderr.count("] gemma-a  ") == 3
    # Same model, same temperature-0 answers: the two rates agree, and the summary says so.
    summary = {m["model"]: m for m in report["models"]}
    assert summary["gemma-a"]["judged"] == summary["gemma-b"]["judged"] == 3
    assert summary["gemma-a"]["passed"] == summary["gemma-b"]["passed"]
    assert summary["premium"]["refused"] == 3
    assert summary["premium"]["pass_rate"] is None
    # Stored: the run and its rows are what was printed.
    ledger = SqliteLedger(setup["ledger"])
    try:
        (run,) = ledger.eval_runs("tiny")
        assert run.run_id == report["run"]["run_id"]
        assert run.suite_hash == load_suite(setup["suite"]).hash
        assert run.policy_hash == load_policy(setup["policy"]).hash
        assert run.finished_us == report["run"]["finished_us"]
        assert run.owner == report["run"]["owner"]  # the eval's process, as stored
        stored = [(r.model, r.case_id, r.outcome, r.code) for r in ledger.eval_results(run.run_id)]
        printed = [(r["model"], r["case_id"], r["outcome"], r["code"]) for r in rows]
        assert stored == printed
        evidence = {e.model: e for e in ledger.evidence("tiny")}
        assert set(evidence) == {"gemma-a", "gemma-b"}  # refusals are not evidence
        assert evidence["gemma-a"].cases == 3
        assert evidence["gemma-a"].passed == summary["gemma-a"]["passed"]
        # No prompt or output text anywhere in the ledger.
        dump = "\n".join(ledger._read(lambda tx: [str(r) for r in tx.rows(
            "SELECT * FROM rolegate_eval_results")]))  # fmt: skip
        assert "hello" not in dump.lower()
    finally:
        ledger.close()
    # CSV export of the stored run, and the evidence view.
    csv = rolegate("evidence", "--run", report["run"]["run_id"], "--ledger", url,
                   "--policy", str(setup["policy"]), "--format", "csv")  # fmt: skip
    assert csv.returncode == 0, csv.stderr
    lines = csv.stdout.strip().splitlines()
    assert lines[0].startswith("run_id,suite,case_id,model,")
    assert len(lines) == 10
    shown = rolegate("evidence", "--ledger", url, "--policy", str(setup["policy"]), "--format",
                     "json")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert {(e["suite"], e["model"]) for e in json.loads(shown.stdout)} == {
        ("tiny", "gemma-a"),
        ("tiny", "gemma-b"),
    }


async def test_evidence_moves_route_task_and_run_role_to_the_cheaper_qualified_model(
    setup: dict[str, Any],
) -> None:
    policy = load_policy(setup["policy"])
    ledger = SqliteLedger(setup["ledger"])
    engine = build_engine(policy, ledger=ledger, env={"CLOUD_KEY": "sk-test"})
    engine.quality.refresh_s = 0.0
    try:
        before = await engine.route_task(RouteRequest(task="add numbers", role="solver"))
        assert before.model == "gemma-a"  # no evidence: the role's own model
        assert before.quality is not None
        assert not before.quality.qualified
        registry = build_registry()
        await run_suite(engine, ledger, load_suite(setup["suite"]), registry.checkers,
                        role="solver", models=["gemma-a", "gemma-b"])  # fmt: skip
        after = await engine.route_task(RouteRequest(task="add numbers", role="solver"))
        assert after.model == "gemma-b"  # cheaper, and at least 1/3 passed
        assert after.quality is not None
        assert after.quality.qualified
        assert after.quality.evidence is not None
        assert after.quality.evidence.cases == 3
        # run_role with that decision runs it; without one, the role's quality rule chooses.
        bound = await engine.run_role(
            RunRequest(role="solver", prompt="Say hi.", decision_id=after.decision_id)
        )
        assert bound.model == "gemma-b"
        free = await engine.run_role(RunRequest(role="solver", prompt="Say hi."))
        assert free.model == "gemma-b"
        assert free.quality is not None
        assert free.quality.qualified
        # A second process on the same ledger sees the same evidence.
        other = build_engine(policy, ledger=SqliteLedger(setup["ledger"]))
        try:
            seen = await other.route_task(RouteRequest(task="add numbers", role="solver"))
            assert seen.model == "gemma-b"
        finally:
            await other.aclose()
            assert other.store.ledger is not None
            other.store.ledger.close()
    finally:
        await engine.aclose()
        ledger.close()


async def test_contract_checks_feed_live_evidence_when_the_rule_allows_it(
    setup: dict[str, Any],
) -> None:
    policy: Policy = load_policy(setup["policy"])
    ledger = SqliteLedger(setup["ledger"])
    engine = build_engine(policy, ledger=ledger)
    try:
        system = "Reply with one JSON object with the key answer (a string)."
        first = await engine.run_role(RunRequest(role="extractor", prompt="Capital of France?",
                                                 system=system))  # fmt: skip
        second = await engine.run_role(RunRequest(role="extractor", prompt="Capital of Spain?",
                                                  system=system))  # fmt: skip
        for result in (first, second):
            assert result.contract is not None
            assert result.warnings == []
        (found,) = ledger.evidence("answers")
        assert found.model == "gemma-b"
        assert found.cases == 2
        assert found.passed == sum(r.contract.valid for r in (first, second) if r.contract)
        # The solver has no live rule: its runs add nothing.
        await engine.run_role(RunRequest(role="solver", prompt="Say hi."))
        assert ledger.evidence("tiny") == []
        # An evaluation's own runs are not live evidence either.
        await engine.run_role(
            RunRequest(role="extractor", prompt="Capital of Italy?", system=system, model="gemma-a")
        )
        assert [e.cases for e in ledger.evidence("answers")] == [2]
    finally:
        await engine.aclose()
        ledger.close()
