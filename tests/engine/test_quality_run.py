"""run_role holds a role's quality rule as route_task does: without evidence and with
`without_evidence: refuse` it refuses (QUALITY_UNPROVEN) before any call; with evidence it
runs the cheapest qualified candidate. The echo provider plugin answers with the prompt."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rolegate.engine.bootstrap import build_engine
from rolegate.engine.requests import RunRequest
from rolegate.errors import Code, RefusedError
from rolegate.ledger import EvalResult, SqliteLedger
from rolegate.policy import RouteRequest, load_policy_text

POLICY = """
version: 1
name: quality-run
providers:
  echo: {type: echo, base_url: "echo://local", locality: local}
models:
  echo-own: {provider: echo, name: echo-own, context_window: 4096, reserve_tokens: 512,
             price: {input_per_mtok: "2", output_per_mtok: "2"}}
  echo-cheap: {provider: echo, name: echo-cheap, context_window: 4096, reserve_tokens: 512}
roles:
  parrot:
    model: echo-own
    candidates: [echo-cheap]
    quality: {suite: tiny, min_pass_rate: 0.5, min_cases: 3, without_evidence: refuse}
"""


async def test_run_role_refuses_without_evidence_and_runs_the_qualified_one_with_it(
    tmp_path: Path,
) -> None:
    policy = load_policy_text(POLICY, "yaml", "p.yaml")
    ledger = SqliteLedger(tmp_path / "ledger.db")
    engine = build_engine(policy, ledger=ledger)
    engine.quality.refresh_s = 0.0
    try:
        decision = await engine.route_task(RouteRequest(task="hi", role="parrot"))
        assert decision.code == "QUALITY_UNPROVEN"
        with pytest.raises(RefusedError) as caught:
            await engine.run_role(RunRequest(role="parrot", prompt="hello"))
        assert caught.value.code == Code.QUALITY_UNPROVEN
        assert "rolegate eval" in caught.value.message
        assert ledger.recent_audit(10)[0]["kind"] == "decision"  # no call was made
        now_us = time.time_ns() // 1000
        ledger.put_eval_results(
            [
                EvalResult(
                    suite="tiny",
                    case_id=f"c{i}",
                    model="echo-cheap",
                    source="eval",
                    outcome="pass",
                    at_us=now_us,
                )
                for i in range(3)
            ]
        )
        ran = await engine.run_role(RunRequest(role="parrot", prompt="hello"))
        assert ran.model == "echo-cheap"
        assert ran.quality is not None
        assert ran.quality.qualified
    finally:
        await engine.aclose()
        ledger.close()
