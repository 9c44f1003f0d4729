"""check_budget: spend and what is left per budget scope, and whether a given call would fit."""

from __future__ import annotations

from datetime import datetime

import anyio

from rolegate.engine.requests import BudgetQuery
from rolegate.engine.results import BudgetReport, CallCheck, ScopeReport, policy_ref
from rolegate.engine.store import Store
from rolegate.errors import Code, RequestError
from rolegate.policy import BudgetSnapshot, Policy
from rolegate.policy.budget import (
    left_micro,
    left_tokens,
    overrun,
    usd,
    window_label,
    window_reset,
)
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.limits import check_count, check_name


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


def _target(
    policy: Policy, job: str | None, role: str | None, model: str | None
) -> tuple[str | None, str]:
    """The (role, model) a check is about: the model named, else the role's, else the job's
    role's, else the default role's."""
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
    return role, model


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
    role, model = _target(policy, job, role, model)
    info = policy.models[model]
    if input_tokens is None:
        counter = policy.counters.get(info.model.tokenizer)
        tokens = counter.count(text or "", doc.token_estimate.overhead_tokens)
        method = policy.counters.method(counter)
    else:
        tokens, method = input_tokens, "exact (given by the caller)"
    out = output_tokens if output_tokens is not None else doc.defaults.max_output_tokens
    fits_context = info.max_input_tokens is not None and tokens <= info.max_input_tokens
    cost = info.worst_case_cost_micro(tokens, out)
    lines = policy.budgets_touching(job=job, role=role, model=model, provider=info.model.provider)
    refusing = next(
        (
            line.id
            for line in lines
            if overrun(line, snapshot.get(line.id), cost_micro=cost, tokens=tokens + out)
        ),
        None,
    )
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
        message = f"worst case {usd(cost)} does not fit budget {refusing}"
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


async def check_budget(policy: Policy, store: Store, query: BudgetQuery) -> BudgetReport:
    """``budget_report`` off the event loop (it reads the ledger)."""
    return await anyio.to_thread.run_sync(lambda: budget_report(policy, store, query))


def _check_query(policy: Policy, q: BudgetQuery) -> None:
    doc = policy.doc
    for value, what in ((q.job, "job"), (q.role, "role"), (q.model, "model")):
        check_name(value, what)
    check_count(q.input_tokens, "input_tokens")
    check_count(q.output_tokens, "output_tokens")
    if q.job is not None and q.job not in doc.jobs:
        raise RequestError(f"unknown job {q.job!r}", code=Code.UNKNOWN_JOB)
    if q.role is not None and q.role not in doc.roles:
        raise RequestError(f"unknown role {q.role!r}", code=Code.UNKNOWN_ROLE)
    if q.model is not None and q.model not in doc.models:
        raise RequestError(
            f"unknown model {q.model!r}; the policy defines {sorted(doc.models)}",
            code=Code.UNKNOWN_MODEL,
        )
    if q.text is not None and q.input_tokens is not None:
        raise RequestError("give text or input_tokens, not both", code=Code.INVALID_ARGUMENT)


def budget_report(policy: Policy, store: Store, q: BudgetQuery) -> BudgetReport:
    """Every budget line's report and, when the query names a call, whether it fits."""
    _check_query(policy, q)
    now = store.clock()
    snapshot = store.usage.snapshot(policy, now)
    scopes = [scope_report(line, now, snapshot) for line in policy.budgets]
    check = None
    if q.text is not None or q.input_tokens is not None or q.model or q.role or q.job:
        check = call_check(
            policy, q.job, q.role, q.model, q.text, q.input_tokens, q.output_tokens, snapshot
        )
    return BudgetReport(
        policy=policy_ref(policy), ledger=store.usage.description, scopes=scopes, check=check
    )
