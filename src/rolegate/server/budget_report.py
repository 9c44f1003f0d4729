"""check_budget's answers: per-scope reports and whether a given call would be admitted."""

from __future__ import annotations

from datetime import datetime

from rolegate.errors import Code, RequestError
from rolegate.policy import BudgetSnapshot, Policy
from rolegate.policy.budget import left_micro, left_tokens, overrun, window_label, window_reset
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.tokens import estimate_method, estimate_tokens
from rolegate.server.models import CallCheck, ScopeReport


def scope_report(line: BudgetLine, now: datetime, snapshot: BudgetSnapshot) -> ScopeReport:
    """Cap, spent, reserved and left for one budget line, with its window's reset time."""
    used = snapshot.get(line.id)
    reset = window_reset(line, now)
    return ScopeReport(
        id=line.id,
        scope=line.scope,
        target=line.target,
        window=window_label(line),
        resets_at=reset.isoformat() if reset else None,
        cap_usd_micro=line.usd_micro,
        spent_usd_micro=used.spent_micro,
        reserved_usd_micro=used.reserved_micro,
        left_usd_micro=left_micro(line, used),
        cap_tokens=line.tokens,
        spent_tokens=used.spent_tokens,
        reserved_tokens=used.reserved_tokens,
        left_tokens=left_tokens(line, used),
    )


def call_check(
    policy: Policy,
    job: str | None,
    role: str | None,
    model: str | None,
    text: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    snapshot: BudgetSnapshot,
) -> CallCheck:
    """Would a call of this size be admitted: context, then every budget it touches?"""
    doc = policy.doc
    if role is None and model is None:
        role = doc.jobs[job].role if job is not None else doc.defaults.role
    if model is None:
        if role is None:
            raise RequestError(
                "name a model, a role or a job to check a call against",
                code=Code.INVALID_ARGUMENT,
            )
        model = doc.roles[role].model
    info = policy.models[model]
    settings = doc.token_estimate
    if input_tokens is None:
        tokens = estimate_tokens(text or "", settings)
        method = estimate_method(settings)
    else:
        tokens, method = input_tokens, "exact (given by the caller)"
    out = output_tokens if output_tokens is not None else doc.defaults.max_output_tokens
    fits_context = info.max_input_tokens is not None and tokens <= info.max_input_tokens
    cost = info.worst_case_cost_micro(tokens, out)
    refusing: str | None = None
    for line in policy.budgets_touching(
        job=job, role=role, model=model, provider=info.model.provider
    ):
        if overrun(line, snapshot.get(line.id), cost_micro=cost, tokens=tokens + out):
            refusing = line.id
            break
    if info.max_input_tokens is None:
        code, message = Code.NO_POLICY, f"{model} has no context policy: never admitted"
    elif not fits_context:
        code = Code.OVER_BUDGET
        message = (
            f"input is {tokens:,} tokens; {model} accepts {info.max_input_tokens:,} "
            f"({info.model.context_window:,} window - {info.model.reserve_tokens:,} reserve)"
        )
    elif refusing is not None:
        code = Code.BUDGET_EXHAUSTED
        message = f"worst case ${cost / 1e6:,.6f} does not fit budget {refusing}"
    else:
        code, message = Code.ROUTED, f"fits {model}'s context and every budget it touches"
    return CallCheck(
        model=model,
        role=role,
        job=job,
        input_tokens=tokens,
        token_method=method,
        output_tokens=out,
        max_input_tokens=info.max_input_tokens,
        fits_context=fits_context,
        worst_case_cost_micro=cost,
        fits_budget=refusing is None,
        admitted=code == Code.ROUTED,
        code=code,
        refusing_scope=refusing,
        message=message,
    )
