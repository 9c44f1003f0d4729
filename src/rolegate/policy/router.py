"""The router: a pure function from (request, policy, budget snapshot) to a Decision.

Steps (seed 003): classify the intent, derive the required capabilities and
context size, take the lowest-cost model that satisfies them, verify it has a
context policy, enforce context + reserve, then route or refuse with a code.
No I/O, no clock, no randomness: the same inputs always give the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rolegate.errors import Code, RequestError
from rolegate.policy.budget import overrun
from rolegate.policy.compiled import CompiledIntent, ModelInfo, Policy
from rolegate.policy.decision import (
    NO_USAGE,
    BudgetSnapshot,
    Decision,
    PolicyRef,
    Rejection,
    RouteRequest,
    TokenCount,
)
from rolegate.policy.limits import MAX_TASK_CHARS, check_count, check_name, check_needs
from rolegate.policy.tokens import estimate_method, estimate_tokens

# Checks run in this order; a refusal reports the candidate that got furthest.
_STAGES = (
    Code.NO_SUFFICIENT_MODEL,
    Code.NO_POLICY,
    Code.LOCAL_ONLY_VIOLATION,
    Code.NOT_ALLOWLISTED,
    Code.OVER_BUDGET,
    Code.BUDGET_EXHAUSTED,
)


def classify(policy: Policy, task: str) -> CompiledIntent | None:
    """The first intent (by priority, then name) whose keywords or patterns match."""
    for intent in policy.intents:
        if intent.pattern is not None and intent.pattern.search(task):
            return intent
    return None


def _validate(request: RouteRequest, policy: Policy) -> None:
    if len(request.task) > MAX_TASK_CHARS:
        raise RequestError(
            f"task is {len(request.task):,} characters; the limit is {MAX_TASK_CHARS:,}. "
            "Pass the size of attached material as context_tokens instead",
            code=Code.INVALID_ARGUMENT,
        )
    if not request.task.strip():
        raise RequestError("task is empty; describe the work to route", code=Code.INVALID_ARGUMENT)
    for value, what in ((request.job, "job"), (request.role, "role"), (request.channel, "channel")):
        check_name(value, what)
    check_needs(request.needs)
    doc = policy.doc
    if request.job is not None and request.job not in doc.jobs:
        raise RequestError(
            f"unknown job {request.job!r}; the policy defines {sorted(doc.jobs) or 'no jobs'}",
            code=Code.UNKNOWN_JOB,
        )
    if request.role is not None and request.role not in doc.roles:
        raise RequestError(
            f"unknown role {request.role!r}; the policy defines {sorted(doc.roles)}",
            code=Code.UNKNOWN_ROLE,
        )
    if request.channel is not None and request.channel not in doc.channels:
        raise RequestError(
            f"unknown channel {request.channel!r}; the policy defines {sorted(doc.channels)}",
            code=Code.UNKNOWN_CHANNEL,
        )
    check_count(request.context_tokens, "context_tokens")
    check_count(request.input_tokens, "input_tokens")
    check_count(request.max_output_tokens, "max_output_tokens", low=1)


class Refusal:
    """Why one model may not take a call; ``stage`` orders how far it got."""

    __slots__ = ("code", "reason", "stage")

    def __init__(self, code: Code, reason: str) -> None:
        self.code = code
        self.reason = reason
        self.stage = _STAGES.index(code)

    def sentence(self, model_id: str) -> str:
        """The refusal as a sentence about ``model_id`` (OVER_BUDGET already names it)."""
        return self.reason if self.code == Code.OVER_BUDGET else f"{model_id} {self.reason}"


def check_model(
    info: ModelInfo,
    *,
    policy: Policy,
    job_name: str | None,
    role: str | None,
    local_only: bool,
    input_tokens: int,
    max_output: int,
    snapshot: BudgetSnapshot,
    needs: frozenset[str] = frozenset(),
) -> Refusal | None:
    """Every policy check one model must pass for one call, in a fixed order."""
    model = info.model
    if not needs <= info.capabilities:
        missing = ", ".join(sorted(needs - info.capabilities))
        return Refusal(Code.NO_SUFFICIENT_MODEL, f"lacks capabilities: {missing}")
    if info.max_input_tokens is None:
        return Refusal(
            Code.NO_POLICY, "has no context policy (context_window + reserve_tokens): fail closed"
        )
    if local_only and info.locality == "cloud":
        return Refusal(Code.LOCAL_ONLY_VIOLATION, "is a cloud model and local_only is in force")
    if model.premium:
        job = policy.doc.jobs.get(job_name) if job_name else None
        if job is None or info.id not in job.premium_allowlist:
            who = f"job {job_name!r}" if job_name else "a request with no job"
            return Refusal(Code.NOT_ALLOWLISTED, f"is premium and not on the allowlist of {who}")
    if input_tokens > info.max_input_tokens:
        return Refusal(
            Code.OVER_BUDGET,
            f"input is {input_tokens:,} tokens; {info.id} accepts {info.max_input_tokens:,} "
            f"({model.context_window:,} window - {model.reserve_tokens:,} reserve)",
        )
    window = model.context_window or 0
    if input_tokens + max_output > window:
        return Refusal(
            Code.OVER_BUDGET,
            f"input of {input_tokens:,} tokens plus an output cap of {max_output:,} exceeds "
            f"{info.id}'s {window:,}-token window; lower max_output_tokens",
        )
    if policy.budgets:
        cost = info.worst_case_cost_micro(input_tokens, max_output)
        tokens = input_tokens + max_output
        for line in policy.budgets_touching(
            job=job_name, role=role, model=info.id, provider=model.provider
        ):
            over = overrun(line, snapshot.get(line.id), cost_micro=cost, tokens=tokens)
            if over is not None:
                return Refusal(
                    Code.BUDGET_EXHAUSTED,
                    f"budget {line.id} has {over.what} (including open reservations); {over.need}",
                )
    return None


def route(request: RouteRequest, policy: Policy, budget: BudgetSnapshot | None = None) -> Decision:
    """Decide which model serves ``request``, or refuse with a code and a sentence.

    Raises RequestError only for malformed requests (unknown job/role/channel,
    empty task); every policy outcome, refusals included, is a Decision.
    """
    _validate(request, policy)
    doc = policy.doc
    snapshot = budget or NO_USAGE
    ref = PolicyRef(name=doc.name, revision=doc.revision, hash=policy.hash)
    reasons: list[str] = []
    job = doc.jobs.get(request.job) if request.job else None
    if job is not None and job.script_only:
        return Decision(
            outcome="script_only",
            code=Code.SCRIPT_ONLY,
            message=f"job {request.job!r} is script-only: it runs without any model",
            policy=ref,
            job=request.job,
            reasons=[f"jobs.{request.job}.script_only"],
        )
    local_only = request.local_only or policy.is_local_only(request.job)
    if local_only:
        reasons.append(
            "local_only: "
            + ("request" if request.local_only else "policy" if doc.privacy.local_only else "job")
        )

    matched = classify(policy, request.task)
    intent = matched
    if intent is None and doc.defaults.intent is not None:
        intent = next(i for i in policy.intents if i.name == doc.defaults.intent)
    intent_name = intent.name if intent is not None else None
    if matched is not None:
        reasons.append(f"intent {matched.name!r} matched")
    elif intent is not None:
        reasons.append(f"no intent matched; default intent {intent.name!r}")

    # Who picks the model: the caller's role, the job's role, the intent's role,
    # the default role, or (none of those) the cheapest sufficient model.
    role: str | None
    if request.role is not None:
        role, why = request.role, "role given by the caller"
    elif job is not None and job.role is not None:
        role, why = job.role, f"role of job {request.job!r}"
    elif intent is not None and intent.intent.role is not None:
        role, why = intent.intent.role, f"role of intent {intent.name!r}"
    elif matched is None and doc.defaults.role is not None:
        role, why = doc.defaults.role, "default role"
    else:
        role, why = None, ""

    needs_set = set(request.needs)
    if request.role is None and (job is None or job.role is None):
        # The intent's requirements bind free selection and intent/default roles;
        # a role named by the caller or the job is held only to the caller's `needs`.
        if intent is not None:
            needs_set.update(intent.intent.requires)
        elif role is None:
            needs_set.add("chat")
    needs = frozenset(needs_set)

    if role is not None:
        reasons.append(f"{why}: {role!r} -> {doc.roles[role].model!r}")
        candidates: tuple[ModelInfo, ...] = (policy.models[doc.roles[role].model],)
    else:
        reasons.append("no role: lowest-cost model some role runs, with the required capabilities")
        candidates = policy.routable_by_cost

    ts = doc.token_estimate
    task_tokens = estimate_tokens(request.task, ts)
    context_tokens = request.context_tokens or 0
    if request.input_tokens is not None:
        input_tokens, method = request.input_tokens, "exact (given by the caller)"
    else:
        input_tokens, method = task_tokens + context_tokens, estimate_method(ts)
        if context_tokens:
            method += " + context_tokens as given"
    max_output = request.max_output_tokens or doc.defaults.max_output_tokens

    rejected: list[Rejection] = []
    best: tuple[Refusal, ModelInfo] | None = None
    chosen: ModelInfo | None = None
    for info in candidates:
        refusal = check_model(
            info,
            policy=policy,
            job_name=request.job,
            needs=needs,
            local_only=local_only,
            role=role or _role_for(policy, info.id),
            input_tokens=input_tokens,
            max_output=max_output,
            snapshot=snapshot,
        )
        if refusal is None:
            chosen = info
            break
        rejected.append(Rejection(model=info.id, code=refusal.code, reason=refusal.reason))
        if best is None or refusal.stage > best[0].stage:
            best = (refusal, info)

    base = _Base(
        policy=ref,
        intent=intent_name,
        required_capabilities=sorted(needs),
        job=request.job,
        channel=request.channel or doc.defaults.channel,
        risk=request.risk,
        local_only=local_only,
        max_output_tokens=max_output,
        reasons=reasons,
        rejected=rejected,
    )
    if chosen is None:
        if best is None:
            return base.decide(
                outcome="refuse",
                code=Code.NO_SUFFICIENT_MODEL,
                message="no model may be picked freely (all are escalation-only); name a role",
                role=role,
            )
        refusal, info = best
        return base.decide(
            outcome="refuse",
            code=refusal.code,
            message=refusal.sentence(info.id),
            role=role,
            **_describe(info),
            tokens=_token_count(info, input_tokens, method, task_tokens, context_tokens),
            remedies=_remedies(policy, refusal.code, info, role, input_tokens),
        )
    tokens = _token_count(chosen, input_tokens, method, task_tokens, context_tokens)
    chosen_role = role or _role_for(policy, chosen.id)
    return _routed(policy, request, chosen, chosen_role, tokens, base, needs, snapshot)


@dataclass(frozen=True, slots=True)
class _Base:
    """The parts every decision for one request shares."""

    policy: PolicyRef
    intent: str | None
    required_capabilities: list[str]
    job: str | None
    channel: str | None
    risk: str | None
    local_only: bool
    max_output_tokens: int
    reasons: list[str]
    rejected: list[Rejection]

    def decide(self, **fields: Any) -> Decision:
        return Decision(
            policy=self.policy,
            intent=self.intent,
            required_capabilities=self.required_capabilities,
            job=self.job,
            channel=self.channel,
            risk=self.risk,
            local_only=self.local_only,
            max_output_tokens=self.max_output_tokens,
            reasons=self.reasons,
            rejected=self.rejected,
            **fields,
        )


def _routed(
    policy: Policy,
    request: RouteRequest,
    info: ModelInfo,
    role: str | None,
    tokens: TokenCount,
    base: _Base,
    needs: frozenset[str],
    snapshot: BudgetSnapshot,
) -> Decision:
    doc = policy.doc
    model = info.model
    role_def = doc.roles.get(role) if role else None
    judge = doc.risk.judge_role if request.risk == "high" else None
    base.reasons.append(
        f"selected {info.id} ({info.locality}, {tokens.input_tokens:,} <= "
        f"{info.max_input_tokens:,} input tokens)"
    )
    if judge is not None:
        judge_model = policy.models[doc.roles[judge].model]
        base.reasons.append(f"high risk: judge {judge!r} ({judge_model.id}) must approve")
        if base.local_only and judge_model.locality == "cloud":
            return base.decide(
                outcome="refuse",
                code=Code.CLOUD_JUDGE_REQUIRED,
                message=f"high-risk work needs the cloud judge {judge!r} ({judge_model.id}), "
                "but local_only forbids cloud calls",
                role=role,
                **_describe(info),
                judge_required=judge,
                remedies=["lower the risk or lift local_only"],
            )
    fallback: list[str] = []
    fallback_rejected: list[Rejection] = []
    for mid in role_def.fallback.models if role_def else ():
        step = fallback_refusal(
            policy,
            policy.models[mid],
            job=base.job,
            role=role,
            local_only=base.local_only,
            needs=needs,
            input_tokens=tokens.input_tokens,
            max_output=base.max_output_tokens,
            snapshot=snapshot,
        )
        if step is None:
            fallback.append(mid)
        else:
            fallback_rejected.append(step)
    return base.decide(
        outcome="route",
        code=Code.ROUTED,
        message=f"route to {info.id} via provider {model.provider}",
        role=role,
        model=info.id,
        provider=model.provider,
        provider_model=model.name,
        locality=info.locality,
        premium=model.premium,
        tokens=tokens,
        worst_case_cost_micro=info.worst_case_cost_micro(
            tokens.input_tokens, base.max_output_tokens
        ),
        streaming=streaming_allowed(policy, base.channel, info),
        judge_required=judge,
        fallback=fallback,
        fallback_mode=role_def.fallback.mode if fallback and role_def else None,
        fallback_rejected=fallback_rejected,
    )


def fallback_refusal(
    policy: Policy,
    info: ModelInfo,
    *,
    job: str | None,
    role: str | None,
    local_only: bool,
    needs: frozenset[str],
    input_tokens: int,
    max_output: int,
    snapshot: BudgetSnapshot,
) -> Rejection | None:
    """Why ``info`` may not serve as a fallback step under these constraints, or None.

    Premium and escalation-only models are never fallbacks (``check`` refuses such chains;
    this holds even for a policy built without it); every other rule is ``check_model``'s.
    """
    if info.model.escalation_only:
        reason = "is escalation-only: reached only through an escalation ladder, never a fallback"
        return Rejection(model=info.id, code=Code.FALLBACK_FORBIDDEN, reason=reason)
    if info.model.premium:
        reason = "is premium: premium models are explicit and allowlisted, never a fallback"
        return Rejection(model=info.id, code=Code.FALLBACK_FORBIDDEN, reason=reason)
    refusal = check_model(
        info,
        policy=policy,
        job_name=job,
        role=role,
        local_only=local_only,
        input_tokens=input_tokens,
        max_output=max_output,
        snapshot=snapshot,
        needs=needs,
    )
    if refusal is None:
        return None
    return Rejection(model=info.id, code=refusal.code, reason=refusal.reason)


def _describe(info: ModelInfo) -> dict[str, Any]:
    """The model a decision names, described as it is (also when it is refused)."""
    return {
        "model": info.id,
        "provider": info.model.provider,
        "provider_model": info.model.name,
        "locality": info.locality,
        "premium": info.model.premium,
    }


def _role_for(policy: Policy, model_id: str) -> str | None:
    roles = policy.roles_by_model.get(model_id)
    return roles[0] if roles else None


def streaming_allowed(policy: Policy, channel: str | None, info: ModelInfo) -> bool:
    """May partial output reach this channel from this model? An unknown channel (none
    given and no default) fails closed: nothing is streamed."""
    if channel is None:
        return False
    ch = policy.doc.channels[channel]
    allowed = info.model.streaming.get(channel, info.model.streaming.get(ch.kind, False))
    return ch.streaming and allowed


def _token_count(
    info: ModelInfo, input_tokens: int, method: str, task_tokens: int, context_tokens: int
) -> TokenCount:
    return TokenCount(
        input_tokens=input_tokens,
        method=method,
        task_tokens=task_tokens,
        context_tokens=context_tokens,
        max_input_tokens=info.max_input_tokens,
        context_window=info.model.context_window,
        reserve_tokens=info.model.reserve_tokens,
    )


def _remedies(
    policy: Policy, code: Code, info: ModelInfo, role: str | None, input_tokens: int
) -> list[str]:
    if code == Code.OVER_BUDGET:
        out = ["narrow_scope", "select_documents"]
        if info.model.summarization != "forbidden":
            out.insert(0, "summarize")
        if info.model.chunking != "none":
            out.append("chunk")
        ladder = policy.doc.roles[role].escalation.ladder if role else ()
        if any((policy.models[m].max_input_tokens or 0) >= input_tokens for m in ladder):
            out.append("escalate")
        return out
    if code == Code.NOT_ALLOWLISTED:
        return ["use a job whose premium_allowlist names the model", "use a local role"]
    if code == Code.LOCAL_ONLY_VIOLATION:
        return ["use a local role", "lift local_only for this job if policy allows"]
    if code == Code.BUDGET_EXHAUSTED:
        return ["wait for the budget window to reset", "lower max_output_tokens"]
    if code == Code.NO_SUFFICIENT_MODEL:
        return ["drop a requirement", "add a capable model to the policy"]
    return []
