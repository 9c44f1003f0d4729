from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolegate.errors import Code, RequestError
from rolegate.policy import BudgetSnapshot, Policy, RouteRequest, ScopeUsage, route


def test_seed000_default_lane_is_qwen25_3b(mac_mini: Policy) -> None:
    d = route(RouteRequest(task="hello, how are the queues doing today?"), mac_mini)
    assert (d.outcome, d.code, d.model, d.provider_model) == (
        "route",
        Code.ROUTED,
        "qwen2.5-3b",
        "qwen2.5:3b",
    )
    assert d.role == "local_fast"
    assert d.fallback == ["llama3.2-3b", "qwen2.5-7b", "deepseek-coder-1.3b"]
    assert d.fallback_mode == "auto"


def test_seed000_code_goes_to_cheapest_code_model_not_premium(mac_mini: Policy) -> None:
    d = route(RouteRequest(task="refactor this function please"), mac_mini)
    assert d.model == "deepseek-coder-1.3b"
    assert d.required_capabilities == ["code"]


def test_seed000_premium_lane_refused_for_job_off_allowlist(mac_mini: Policy) -> None:
    d = route(
        RouteRequest(task="draft the plan", role="strategist", job="resource-harvest-video-web"),
        mac_mini,
    )
    assert (d.outcome, d.code, d.model) == ("refuse", Code.NOT_ALLOWLISTED, "kimi-k2.5")
    assert "resource-harvest-video-web" in d.message


def test_seed000_premium_lane_allowed_for_allowlisted_job(mac_mini: Policy) -> None:
    d = route(RouteRequest(task="draft the plan", job="orchestrator-daily-plan"), mac_mini)
    assert (d.code, d.model, d.premium, d.locality) == (Code.ROUTED, "kimi-k2.5", True, "cloud")
    # Worst case: (input * 0.60 + 1024 * 2.50) micro-dollars, rounded up.
    assert d.tokens is not None
    assert d.worst_case_cost_micro == -(-(d.tokens.input_tokens * 60 + 1024 * 250) // 100)


def test_seed000_premium_refused_without_job(mac_mini: Policy) -> None:
    d = route(RouteRequest(task="x", role="builder"), mac_mini)
    assert d.code == Code.NOT_ALLOWLISTED
    assert "a request with no job" in d.message


def test_seed000_script_only_job(mac_mini: Policy) -> None:
    d = route(RouteRequest(task="run posture checks", job="security-daily-posture"), mac_mini)
    assert (d.outcome, d.code, d.model) == ("script_only", Code.SCRIPT_ONLY, None)


def test_seed003_30k_tokens_refused_over_budget_for_llama32k(sophie: Policy) -> None:
    d = route(RouteRequest(task="chat", role="chat", context_tokens=30_000), sophie)
    assert (d.outcome, d.code, d.model) == ("refuse", Code.OVER_BUDGET, "llama3.1-32k")
    assert d.tokens is not None
    assert d.tokens.max_input_tokens == 28_768
    assert d.tokens.input_tokens >= 30_000
    assert "28,768" in d.message
    assert d.remedies[:3] == ["summarize", "narrow_scope", "select_documents"]


def test_seed003_exactly_at_the_limit_routes_and_one_more_refuses(sophie: Policy) -> None:
    ok = route(RouteRequest(task="chat", role="chat", input_tokens=28_768), sophie)
    over = route(RouteRequest(task="chat", role="chat", input_tokens=28_769), sophie)
    assert (ok.code, over.code) == (Code.ROUTED, Code.OVER_BUDGET)
    assert ok.tokens is not None
    assert ok.tokens.method.startswith("exact")


def test_seed003_extractor_never_offers_summarization(sophie: Policy) -> None:
    d = route(RouteRequest(task="extract the invoice fields", context_tokens=20_000), sophie)
    assert (d.code, d.model) == (Code.OVER_BUDGET, "phi4-extractor")
    assert "summarize" not in d.remedies


def test_seed003_streaming_per_channel(sophie: Policy) -> None:
    cli = route(RouteRequest(task="hi", channel="cli"), sophie)
    email = route(RouteRequest(task="hi", channel="email"), sophie)
    assert (cli.streaming, email.streaming) == (True, False)


def test_seed003_fallback_is_ask_first_and_named(sophie: Policy) -> None:
    d = route(RouteRequest(task="hi"), sophie)
    assert (d.model, d.fallback, d.fallback_mode) == ("llama3.1-32k", ["kimi"], "ask")


def test_seed001_local_only_refuses_cloud_judge_role(codex_rs: Policy) -> None:
    d = route(RouteRequest(task="audit the diff", role="auditor", local_only=True), codex_rs)
    assert (d.code, d.model) == (Code.LOCAL_ONLY_VIOLATION, "gpt-5.1-high")


def test_seed001_high_risk_needs_cloud_judge(codex_rs: Policy) -> None:
    d = route(RouteRequest(task="refactor the auth change", risk="high"), codex_rs)
    assert (d.code, d.model, d.judge_required) == (Code.ROUTED, "qwen-coder-32b", "auditor")
    refused = route(
        RouteRequest(task="refactor the auth change", risk="high", job="private-spec"), codex_rs
    )
    assert (refused.code, refused.judge_required) == (Code.CLOUD_JUDGE_REQUIRED, "auditor")


def test_seed001_escalation_only_models_are_never_picked_freely(codex_rs: Policy) -> None:
    d = route(RouteRequest(task="x", needs=("long_context", "tools")), codex_rs)
    assert d.code == Code.NO_SUFFICIENT_MODEL  # only kimi-k2 has both, and it is escalation-only
    assert "kimi-k2" not in {r.model for r in d.rejected}


def test_seed001_budget_exhausted_names_the_scope(codex_rs: Policy) -> None:
    snapshot = BudgetSnapshot({"role:auditor:day": ScopeUsage(spent_micro=4_990_000)})
    d = route(
        RouteRequest(task="audit", job="spec-audit", max_output_tokens=4000), codex_rs, snapshot
    )
    assert (d.code, d.model) == (Code.BUDGET_EXHAUSTED, "gpt-5.1-high")
    assert "role:auditor:day" in d.message
    fresh = route(RouteRequest(task="audit", job="spec-audit", max_output_tokens=4000), codex_rs)
    assert fresh.code == Code.ROUTED


def test_seed002_local_only_stack_routes_by_intent(three_role: Policy) -> None:
    cases = {
        "refactor the parser function": ("coding", "qwen3-coder-30b"),
        "find the root cause of the cpu trend": ("reasoning", "deepseek-r1-14b"),
        "summarize the meeting": ("summarization", "qwen3-1.7b-summarizer"),
        "hello": ("router", "qwen3-4b-router"),
    }
    for task, (role, model) in cases.items():
        d = route(RouteRequest(task=task), three_role)
        assert (d.role, d.model, d.local_only) == (role, model, True), task
    tool = route(RouteRequest(task="cpu", job="system-metrics-snapshot"), three_role)
    assert tool.outcome == "script_only"


def test_seed004_tiers_and_front_door(orchestrator: Policy) -> None:
    assert route(RouteRequest(task="what's up"), orchestrator).model == "qwen3-coder-30b-a3b"
    d = route(RouteRequest(task="read the whole book", context_tokens=200_000), orchestrator)
    assert (d.code, d.role, d.model) == (Code.ROUTED, "ingest", "qwen3-next-80b-a3b")
    d = route(RouteRequest(task="explain", context_tokens=100_000), orchestrator)
    assert d.code == Code.OVER_BUDGET
    assert "escalate" not in d.remedies


def test_free_selection_prefers_cheapest_and_reports_rejections(mac_mini: Policy) -> None:
    d = route(RouteRequest(task="x", role=None, needs=("reasoning",)), mac_mini)
    # local_fast is the default role but `needs` holds it to reasoning: qwen2.5-3b lacks it.
    assert d.code == Code.NO_SUFFICIENT_MODEL
    d = route(RouteRequest(task="find the root cause", needs=("reasoning",)), mac_mini)
    assert d.model == "qwen2.5-7b"


def test_refusal_reports_the_candidate_that_got_furthest(mac_mini: Policy) -> None:
    # The local coder is too small for 300k tokens; the premium coder is not allowlisted.
    # The local coder passed more checks (it failed only on context), so it is reported.
    d = route(RouteRequest(task="refactor code", context_tokens=300_000), mac_mini)
    assert (d.code, d.model) == (Code.OVER_BUDGET, "deepseek-coder-1.3b")
    assert {r.model: r.code for r in d.rejected} == {
        "deepseek-coder-1.3b": Code.OVER_BUDGET,
        "gpt-5.3-codex": Code.NOT_ALLOWLISTED,
        "qwen2.5-3b": Code.NO_SUFFICIENT_MODEL,
        # llama3.2-3b is only local_fast's fallback: no role runs it, so it is never routed
        # to freely (a decision for it could not be run).
        "qwen2.5-7b": Code.NO_SUFFICIENT_MODEL,
        "kimi-k2.5": Code.NO_SUFFICIENT_MODEL,
    }
    # Only the premium coder has both code and reasoning: the refusal names the allowlist.
    d = route(RouteRequest(task="refactor code", needs=("code", "reasoning")), mac_mini)
    assert (d.code, d.model) == (Code.NOT_ALLOWLISTED, "gpt-5.3-codex")


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (RouteRequest(task="   "), Code.INVALID_ARGUMENT),
        (RouteRequest(task="x", job="nope"), Code.UNKNOWN_JOB),
        (RouteRequest(task="x", role="nope"), Code.UNKNOWN_ROLE),
        (RouteRequest(task="x", channel="pager"), Code.UNKNOWN_CHANNEL),
        (RouteRequest(task="x", context_tokens=-1), Code.INVALID_ARGUMENT),
        (RouteRequest(task="x", max_output_tokens=0), Code.INVALID_ARGUMENT),
    ],
)
def test_malformed_requests_raise_typed_errors(
    mac_mini: Policy, request_: RouteRequest, code: Code
) -> None:
    with pytest.raises(RequestError) as info:
        route(request_, mac_mini)
    assert info.value.code == code


def test_huge_task_is_refused_not_truncated(sophie: Policy) -> None:
    big = "word " * 40_000  # 200k bytes; o200k, cl100k and Gemma count 40,000 tokens
    d = route(RouteRequest(task=big, role="chat"), sophie)
    assert d.code == Code.OVER_BUDGET
    assert d.tokens is not None
    assert d.tokens.task_tokens >= 40_000  # never below the real tokenizers


tasks = st.text(min_size=1, max_size=300).filter(lambda t: t.strip())


@settings(max_examples=200, deadline=None)
@given(
    task=tasks,
    context=st.integers(0, 400_000),
    local_only=st.booleans(),
    job=st.sampled_from([None, "orchestrator-daily-plan", "warehouse-shift-handoff"]),
    role=st.sampled_from([None, "local_fast", "strategist", "builder", "local_code"]),
)
def test_router_invariants(
    mac_mini: Policy, task: str, context: int, local_only: bool, job: str | None, role: str | None
) -> None:
    request = RouteRequest(
        task=task, context_tokens=context, local_only=local_only, job=job, role=role
    )
    first = route(request, mac_mini)
    assert route(request, mac_mini) == first  # deterministic
    if first.outcome == "route":
        assert first.tokens is not None
        assert first.tokens.max_input_tokens is not None
        assert first.tokens.input_tokens <= first.tokens.max_input_tokens
        assert not (local_only and first.locality == "cloud")
        if first.premium:
            assert job == "orchestrator-daily-plan"
            assert first.model == "kimi-k2.5"
    else:
        assert first.code != Code.ROUTED
        assert first.message


def test_budgets_touching_is_the_plain_filter_in_declared_order(codex_rs: Policy) -> None:
    """The per-(scope, target) index finds exactly the lines a scan over all of them finds."""
    doc = codex_rs.doc
    assert len(codex_rs.budgets) > 2
    for job in (None, *doc.jobs):
        for role in (None, *doc.roles):
            for mid, model in doc.models.items():
                where = {"job": job, "role": role, "model": mid, "provider": model.provider}
                plain = [
                    b
                    for b in codex_rs.budgets
                    if b.scope == "global"
                    or (where[b.scope] is not None and where[b.scope] == b.target)
                ]
                got = codex_rs.budgets_touching(
                    job=job, role=role, model=mid, provider=model.provider
                )
                assert got == plain


@pytest.mark.parametrize("task", ["implement the parser fix", "plan the architecture", "hello"])
def test_a_pickled_policy_classifies_and_routes_the_same(codex_rs: Policy, task: str) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(codex_rs))
    assert route(RouteRequest(task=task), copy) == route(RouteRequest(task=task), codex_rs)
