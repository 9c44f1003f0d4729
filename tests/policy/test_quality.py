"""Quality-aware routing in the pure router: evidence in, the model it qualifies out."""

from __future__ import annotations

import pytest

from rolegate.errors import PolicyInvalidError
from rolegate.policy import Policy, RouteRequest, route
from rolegate.policy import load_policy_text as _load_text
from rolegate.policy.decision import BudgetSnapshot, ScopeUsage
from rolegate.policy.evidence import Evidence, wilson
from rolegate.policy.quality import evidence_key

POLICY = """
version: 1
name: quality
providers:
  local: {type: openai, base_url: "http://127.0.0.1:1/v1", locality: local}
  cloud: {type: openai, base_url: "https://api.example.com/v1", locality: cloud}
models:
  tiny: {provider: local, name: tiny, context_window: 8192, reserve_tokens: 512,
         capabilities: [chat, reasoning]}
  small: {provider: local, name: small, context_window: 8192, reserve_tokens: 512,
          capabilities: [chat, reasoning], price: {input_per_mtok: "0.1", output_per_mtok: "0.1"}}
  big: {provider: cloud, name: big, context_window: 32768, reserve_tokens: 1024,
        capabilities: [chat, reasoning], price: {input_per_mtok: "3", output_per_mtok: "15"}}
  coder: {provider: local, name: coder, context_window: 8192, reserve_tokens: 512,
          capabilities: [chat, code], price: {input_per_mtok: "1", output_per_mtok: "1"}}
  coder-mini: {provider: local, name: coder-mini, context_window: 8192, reserve_tokens: 512,
               capabilities: [chat, code]}
roles:
  thinker-t: {model: tiny}
  thinker-s: {model: small}
  thinker-b: {model: big}
  dev:
    model: coder
    candidates: [coder-mini]
    quality: {suite: code, min_pass_rate: 0.7, min_cases: 10}
intents:
  math:
    match: {keywords: [integral]}
    requires: [reasoning]
    quality: {suite: math, min_pass_rate: 0.8, min_cases: 10}
  strict-math:
    match: {keywords: [theorem]}
    requires: [reasoning]
    quality: {suite: math, min_pass_rate: 0.8, min_cases: 10, without_evidence: refuse}
budgets:
  - {scope: model, target: small, window: day, usd: "0.001"}
"""


def load_policy_text(text: str) -> Policy:
    return _load_text(text, "yaml", "quality.yaml")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_text(POLICY)


def ev(suite: str, model: str, passed: int, cases: int) -> Evidence:
    return Evidence(
        suite=suite, model=model, passed=passed, cases=cases, last_us=1_700_000_000_000_000
    )


def book(*items: Evidence) -> dict[tuple[str, str], Evidence]:
    return {(e.suite, e.model): e for e in items}


def test_without_evidence_the_capability_rule_applies_and_says_so(policy: Policy) -> None:
    d = route(RouteRequest(task="solve this integral"), policy, evidence={})
    assert d.model == "tiny"
    assert d.quality is not None
    assert d.quality.qualified is False
    assert d.quality.suite == "math"
    assert d.quality.evidence is None
    assert d.quality.note is not None
    assert "capability rule chose tiny" in d.quality.note


def test_no_evidence_argument_is_the_same_as_an_empty_book(policy: Policy) -> None:
    with_none = route(RouteRequest(task="solve this integral"), policy)
    assert with_none.model == "tiny"
    assert with_none.quality is not None
    assert not with_none.quality.qualified


def test_the_cheapest_qualified_model_wins_over_cheaper_unmeasured_ones(policy: Policy) -> None:
    found = book(ev("math", "small", 9, 10), ev("math", "big", 10, 10))
    d = route(RouteRequest(task="solve this integral"), policy, evidence=found)
    assert d.model == "small"
    assert d.quality is not None
    assert d.quality.qualified
    assert d.quality.qualified_models == ["small", "big"]
    assert d.quality.evidence is not None
    assert (d.quality.evidence.passed, d.quality.evidence.cases) == (9, 10)
    assert d.quality.evidence.pass_rate == 0.9
    low, high = wilson(9, 10)
    assert d.quality.evidence.interval == [round(low, 4), round(high, 4)]


def test_a_model_measured_below_the_bar_is_rejected_with_a_code(policy: Policy) -> None:
    found = book(ev("math", "tiny", 5, 10), ev("math", "big", 9, 10))
    d = route(RouteRequest(task="solve this integral"), policy, evidence=found)
    assert d.model == "big"
    below = [r for r in d.rejected if r.code == "QUALITY_BELOW_BAR"]
    assert [r.model for r in below] == ["tiny"]
    assert "5/10" in below[0].reason


def test_too_few_cases_do_not_count(policy: Policy) -> None:
    # 9 of 9 is perfect but under min_cases: small is unmeasured, tiny (cheapest) routes.
    found = book(ev("math", "small", 9, 9))
    d = route(RouteRequest(task="solve this integral"), policy, evidence=found)
    assert d.model == "tiny"
    assert d.quality is not None
    assert not d.quality.qualified


def test_below_the_bar_models_are_not_the_capability_fallback(policy: Policy) -> None:
    # Every measured model failed; the unmeasured one (big) is the capability rule's pick.
    found = book(ev("math", "tiny", 1, 10), ev("math", "small", 2, 10))
    d = route(RouteRequest(task="solve this integral"), policy, evidence=found)
    assert d.model == "big"
    assert d.quality is not None
    assert not d.quality.qualified


def test_refuse_without_evidence(policy: Policy) -> None:
    d = route(RouteRequest(task="prove this theorem"), policy, evidence={})
    assert d.outcome == "refuse"
    assert d.code == "QUALITY_UNPROVEN"
    assert d.quality is not None
    assert "rolegate eval" in d.remedies[0]


def test_refuse_rule_routes_once_a_model_qualifies(policy: Policy) -> None:
    found = book(ev("math", "big", 10, 10))
    d = route(RouteRequest(task="prove this theorem"), policy, evidence=found)
    assert d.outcome == "route"
    assert d.model == "big"


def test_a_qualified_model_the_call_may_not_use_falls_to_the_capability_rule(
    policy: Policy,
) -> None:
    # big qualifies but is cloud and the call is local_only: tiny (unmeasured) routes, and
    # the decision says why the evidence did not choose.
    found = book(ev("math", "big", 10, 10))
    d = route(RouteRequest(task="solve this integral", local_only=True), policy, evidence=found)
    assert d.model == "tiny"
    assert d.quality is not None
    assert not d.quality.qualified
    assert d.quality.note is not None
    assert "passed the call's checks" in d.quality.note


def test_a_spent_budget_on_the_qualified_model_is_respected(policy: Policy) -> None:
    found = book(ev("math", "small", 10, 10))
    line = policy.budgets[0]
    spent = BudgetSnapshot({line.id: ScopeUsage(spent_micro=1000)})
    d = route(RouteRequest(task="solve this integral"), policy, spent, evidence=found)
    assert d.model == "tiny"
    assert any(r.model == "small" and r.code == "BUDGET_EXHAUSTED" for r in d.rejected)


def test_a_role_runs_its_cheapest_qualified_candidate(policy: Policy) -> None:
    d = route(RouteRequest(task="write code", role="dev"), policy, evidence={})
    assert d.model == "coder"  # no evidence: the role's own model
    found = book(ev("code", "coder-mini", 8, 10))
    d = route(RouteRequest(task="write code", role="dev"), policy, evidence=found)
    assert d.model == "coder-mini"
    assert d.role == "dev"
    assert d.quality is not None
    assert d.quality.source == "role 'dev'"


def test_a_role_keeps_its_own_model_when_the_candidate_is_below_the_bar(policy: Policy) -> None:
    found = book(ev("code", "coder-mini", 3, 10), ev("code", "coder", 4, 10))
    d = route(RouteRequest(task="write code", role="dev"), policy, evidence=found)
    assert d.model == "coder"
    assert [r.model for r in d.rejected if r.code == "QUALITY_BELOW_BAR"] == ["coder-mini"]


def test_evidence_keys_separate_ages() -> None:
    policy = load_policy_text(
        POLICY.replace(
            "quality: {suite: math, min_pass_rate: 0.8, min_cases: 10}",
            "quality: {suite: math, min_pass_rate: 0.8, min_cases: 10, max_age_days: 7}",
        )
    )
    rule = policy.doc.intents["math"].quality
    assert rule is not None
    assert evidence_key(rule) == "math|7d"
    # Evidence filed under the plain suite name is not the 7-day window's.
    found = book(ev("math", "small", 10, 10))
    d = route(RouteRequest(task="solve this integral"), policy, evidence=found)
    assert d.model == "tiny"
    aged = {("math|7d", "small"): ev("math", "small", 10, 10)}
    assert route(RouteRequest(task="solve this integral"), policy, evidence=aged).model == "small"


def test_wilson_interval_known_values() -> None:
    low, high = wilson(8, 10)
    assert round(low, 3) == 0.490
    assert round(high, 3) == 0.943
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(10, 10)
    assert high == pytest.approx(1.0)
    assert 0.69 < low < 0.73


def test_a_recorded_intent_is_used_as_is(policy: Policy) -> None:
    d = route(RouteRequest(task="(replayed)", intent="math"), policy)
    assert d.intent == "math"
    assert d.classification is not None
    assert d.classification.method == "recorded"
    gone = route(RouteRequest(task="(replayed)", intent="nonexistent"), policy)
    assert gone.intent is None
    assert gone.classification is not None
    assert gone.classification.note == "the recorded intent is gone"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("candidates: [coder-mini]", "candidates: [nope]", "unknown model 'nope'"),
        ("candidates: [coder-mini]", "candidates: [big]", "premium or escalation-only"),
        (
            "    quality: {suite: code, min_pass_rate: 0.7, min_cases: 10}\n",
            "",
            "candidates are chosen by a 'quality' rule",
        ),
        (
            "quality: {suite: code, min_pass_rate: 0.7, min_cases: 10}",
            "quality: {suite: code, min_pass_rate: 0.7, min_cases: 10, live: true}",
            "give the role an output_contract",
        ),
    ],
)
def test_policy_checks(old: str, new: str, message: str) -> None:
    text = POLICY.replace(old, new)
    if "premium" in message:
        text = text.replace(
            'price: {input_per_mtok: "3"', 'premium: true, price: {input_per_mtok: "3"'
        )
    with pytest.raises(PolicyInvalidError) as caught:
        load_policy_text(text)
    assert message in str(
        caught.value.problems if hasattr(caught.value, "problems") else caught.value
    )


def test_quality_fields_leave_other_hashes_alone() -> None:
    plain = load_policy_text(
        POLICY.replace("    candidates: [coder-mini]\n", "").replace(
            "    quality: {suite: code, min_pass_rate: 0.7, min_cases: 10}\n", ""
        )
    )
    assert "candidates" not in plain.canonical_json
    assert '"quality"' in plain.canonical_json  # the intents still have theirs
