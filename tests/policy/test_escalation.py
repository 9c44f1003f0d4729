from __future__ import annotations

import pytest

from rolegate.errors import Code, RequestError
from rolegate.policy import BudgetSnapshot, Policy, ScopeUsage
from rolegate.policy.escalation import EscalationRequest, escalate


def test_architect_low_confidence_escalates_up_the_ladder(codex_rs: Policy) -> None:
    d = escalate(
        EscalationRequest(role="architect", signals={"confidence": 0.6}, job="spec-audit"),
        codex_rs,
    )
    # gpt-5.1-high is premium and spec-audit's allowlist names it.
    assert (d.escalate, d.code, d.from_model, d.to_model, d.step) == (
        True,
        "ESCALATE",
        "ministral-14b",
        "gpt-5.1-high",
        0,
    )
    assert [(f.signal, f.op, f.threshold, f.observed) for f in d.fired] == [
        ("confidence", "lt", 0.75, 0.6)
    ]


def test_premium_rung_off_allowlist_is_skipped_with_reason(codex_rs: Policy) -> None:
    d = escalate(EscalationRequest(role="architect", signals={"confidence": 0.5}), codex_rs)
    assert (d.escalate, d.to_model, d.step) == (True, "deepseek-reasoner", 1)
    assert [(r.model, r.code) for r in d.rejected] == [("gpt-5.1-high", Code.NOT_ALLOWLISTED)]


def test_confidence_at_threshold_does_not_fire(codex_rs: Policy) -> None:
    d = escalate(EscalationRequest(role="architect", signals={"confidence": 0.75}), codex_rs)
    assert (d.escalate, d.code, d.fired) == (False, "NO_ESCALATION", [])


def test_implementer_after_two_failed_loops(codex_rs: Policy) -> None:
    one = escalate(EscalationRequest(role="implementer", signals={"failed_loops": 1}), codex_rs)
    two = escalate(EscalationRequest(role="implementer", signals={"failed_loops": 2}), codex_rs)
    assert (one.escalate, two.escalate, two.to_model) == (False, True, "deepseek-reasoner")


@pytest.mark.parametrize(
    "signals",
    [
        {"context_estimate": 150_000},
        {"contradictions": True},
        {"tool_heavy": True},
        {"full_sweep": True},
    ],
)
def test_librarian_escalates_to_kimi(codex_rs: Policy, signals: dict[str, float | bool]) -> None:
    d = escalate(EscalationRequest(role="librarian", signals=signals), codex_rs)
    assert (d.escalate, d.to_model) == (True, "kimi-k2")


def test_local_only_forbids_every_cloud_rung(codex_rs: Policy) -> None:
    d = escalate(
        EscalationRequest(role="librarian", signals={"full_sweep": True}, local_only=True),
        codex_rs,
    )
    assert (d.escalate, d.code) == (False, Code.LOCAL_ONLY_VIOLATION)
    assert [r.model for r in d.rejected] == ["kimi-k2", "claude-sonnet"]


def test_any_role_escalates_on_user_request(codex_rs: Policy) -> None:
    d = escalate(EscalationRequest(role="ace-reflector", signals={"user_request": True}), codex_rs)
    assert (d.escalate, d.to_model, d.fired[0].signal) == (True, "kimi-k2", "user_request")


def test_high_risk_names_cloud_judge_and_refuses_under_local_only(codex_rs: Policy) -> None:
    d = escalate(
        EscalationRequest(role="implementer", signals={"high_risk": True, "failed_loops": 3}),
        codex_rs,
    )
    assert (d.judge_required, d.judge_model) == ("auditor", "gpt-5.1-high")
    refused = escalate(
        EscalationRequest(role="implementer", signals={"high_risk": True}, job="private-spec"),
        codex_rs,
    )
    assert (refused.escalate, refused.code) == (False, Code.CLOUD_JUDGE_REQUIRED)


def test_budget_blocks_a_rung(codex_rs: Policy) -> None:
    snapshot = BudgetSnapshot({"global:*:day": ScopeUsage(spent_micro=20_000_000)})
    d = escalate(
        EscalationRequest(role="architect", signals={"confidence": 0.1}, job="spec-audit"),
        codex_rs,
        snapshot,
    )
    assert (d.escalate, d.code) == (False, Code.BUDGET_EXHAUSTED)
    assert [(r.model, r.code) for r in d.rejected] == [
        ("gpt-5.1-high", Code.BUDGET_EXHAUSTED),
        ("deepseek-reasoner", Code.BUDGET_EXHAUSTED),
    ]


def test_top_of_ladder_and_unknown_role(codex_rs: Policy) -> None:
    d = escalate(
        EscalationRequest(role="ace-reflector", signals={"user_request": True}, current_step=1),
        codex_rs,
    )
    assert (d.escalate, d.code, d.from_model) == (False, Code.NO_SUFFICIENT_MODEL, "kimi-k2")
    with pytest.raises(RequestError) as info:
        escalate(EscalationRequest(role="ghost", signals={}), codex_rs)
    assert info.value.code == Code.UNKNOWN_ROLE
