"""The router: a pure function from (request, policy, budget snapshot) to a Decision.

Steps (seed 003): classify the intent, derive the required capabilities and
context size, take the lowest-cost model that satisfies them, verify it has a
context policy, enforce context + reserve, then route or refuse with a code.
No I/O, no clock, no randomness: the same inputs always give the same decision.

Everything that grows with the policy is prepared when it is compiled: intents are
matched in one RE2 pass (``patterns.IntentMatcher``), models are walked in a cost
order sorted once, and lookups by name are dict accesses.
"""

from __future__ import annotations

from rolegate.errors import Code, RequestError
from rolegate.policy.compiled import CompiledIntent, ModelInfo, Policy
from rolegate.policy.decision import (
    NO_USAGE,
    BudgetSnapshot,
    Classification,
    Decision,
    PolicyRef,
    Rejection,
    RouteRequest,
)
from rolegate.policy.evidence import NO_EVIDENCE, EvidenceBook
from rolegate.policy.intents import IntentChoice, choose_intent, keyword_ties
from rolegate.policy.limits import MAX_TASK_CHARS, check_count, check_name, check_needs
from rolegate.policy.outcomes import Base, Tokens, refused, routed, streaming_allowed
from rolegate.policy.quality import QualityPlan, plan_quality, role_pool, rule_for
from rolegate.policy.residence import cold_models, prefer_resident, residence
from rolegate.policy.schema import Job, PolicyDocument
from rolegate.policy.selection import Refusal, check_model, fallback_refusal, role_for, select_model

# The per-model checks live in `selection` and `outcomes`; the engine and escalation
# import them from here.
__all__ = [
    "Refusal",
    "check_model",
    "classify",
    "count_input",
    "fallback_refusal",
    "route",
    "streaming_allowed",
    "validate_request",
]


def classify(policy: Policy, task: str) -> CompiledIntent | None:
    """The single keyword/regex intent of best priority that matches ``task``; None when
    none matches or several tie (ties are never decided by names)."""
    ties = keyword_ties(policy, task)
    return ties[0] if len(ties) == 1 else None


def validate_request(request: RouteRequest, policy: Policy) -> None:
    """RequestError for a malformed request (unknown names, empty or oversized task)."""
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


def route(
    request: RouteRequest,
    policy: Policy,
    budget: BudgetSnapshot | None = None,
    proposal: Classification | None = None,
    resident: frozenset[str] | None = None,
    evidence: EvidenceBook | None = None,
) -> Decision:
    """Decide which model serves ``request``, or refuse with a code and a sentence.

    ``proposal``: the engine's classification of the task (examples or router model), for
    when no signal or keyword decides its intent (``intents.choose_intent``). ``resident``:
    the models loaded now (policies with ``residency``): COLD ones that are not are refused
    with MODEL_COLD, and loaded ones go first among equals where the policy prefers them.
    ``evidence``: measured pass rates per (suite, model), for intents and roles with a
    quality rule (``quality``); without it no model qualifies.

    Raises RequestError only for malformed requests (unknown job/role/channel,
    empty task); every policy outcome, refusals included, is a Decision.
    """
    validate_request(request, policy)
    doc = policy.doc
    snapshot = budget or NO_USAGE
    ref = PolicyRef(name=doc.name, revision=doc.revision, hash=policy.hash)
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
    reasons: list[str] = []
    local_only = _local_only(request, policy, reasons)
    sized = count_input(request, policy)  # the estimate: intents' sizes are model-agnostic
    choice = choose_intent(policy, request, sized.input_tokens, proposal)
    intent = choice.intent
    reasons.append(_intent_reason(choice))
    if choice.refusal is not None:
        return Decision(
            outcome="refuse",
            code=Code.INTENT_UNCERTAIN,
            message=choice.refusal,
            policy=ref,
            job=request.job,
            local_only=local_only,
            reasons=reasons,
            classification=choice.classification,
            remedies=["name a role or job", "add examples or keywords for this kind of task"],
        )
    matched = intent if choice.matched else None
    role = _role(request, job, matched, intent, doc, reasons)
    needs = _needs(request, job, intent, role)
    max_output = request.max_output_tokens or doc.defaults.max_output_tokens
    candidates = _candidates(policy, role, reasons)
    plan = _quality(policy, role, intent, candidates, evidence)
    if plan is not None:
        candidates = plan.candidates
        if not plan.qualified and plan.rule.without_evidence == "refuse":
            return _unproven(ref, request, local_only, reasons, choice, plan)
    residency = doc.residency if resident is not None and policy.managed else None
    unavailable = cold_models(policy, resident) if residency and resident is not None else None
    if residency and residency.prefer_resident and resident is not None and role is None:
        candidates = prefer_resident(candidates, resident, policy)
    tokens = count_input(request, policy, candidates)
    selection = select_model(
        policy,
        candidates,
        job_name=request.job,
        role=role,
        local_only=local_only,
        input_tokens=tokens.input_tokens,
        max_output=max_output,
        snapshot=snapshot,
        needs=needs,
        unavailable=unavailable,
    )
    base = Base(
        policy=ref,
        intent=intent.name if intent is not None else None,
        required_capabilities=sorted(needs),
        job=request.job,
        channel=request.channel or doc.defaults.channel,
        risk=request.risk,
        local_only=local_only,
        max_output_tokens=max_output,
        reasons=reasons,
        rejected=selection.rejected,
        classification=choice.classification,
    )
    if plan is not None:
        base.rejected.extend(plan.below)
    chosen = selection.chosen
    if chosen is None:
        decision = refused(policy, base, role, selection.best, tokens)
    else:
        chosen_role = role or role_for(policy, chosen.id)
        decision = routed(
            policy, request, chosen, chosen_role, tokens.count(chosen), base, needs, snapshot
        )
        if residency and resident is not None:
            decision.residency = residence(policy, chosen, resident)
    if plan is not None:
        decision.quality = plan.report(chosen)
    return decision


def _quality(
    policy: Policy,
    role: str | None,
    intent: CompiledIntent | None,
    candidates: tuple[ModelInfo, ...],
    evidence: EvidenceBook | None,
) -> QualityPlan | None:
    found = rule_for(policy, role, intent)
    if found is None:
        return None
    rule, source = found
    pool, own = candidates, None
    if role is not None:
        pool, own = role_pool(policy, role), policy.doc.roles[role].model
    return plan_quality(rule, source, pool, own, evidence or NO_EVIDENCE)


def _unproven(
    ref: PolicyRef,
    request: RouteRequest,
    local_only: bool,
    reasons: list[str],
    choice: IntentChoice,
    plan: QualityPlan,
) -> Decision:
    report = plan.report(None)
    return Decision(
        outcome="refuse",
        code=Code.QUALITY_UNPROVEN,
        message=f"{report.note}, and {plan.source}'s quality rule says to refuse without it",
        policy=ref,
        intent=choice.intent.name if choice.intent is not None else None,
        job=request.job,
        local_only=local_only,
        reasons=reasons,
        classification=choice.classification,
        rejected=[Rejection.model_validate(r) for r in plan.below],
        quality=report,
        remedies=[f"run `rolegate eval` on suite {plan.rule.suite!r} for the candidates"],
    )


def _local_only(request: RouteRequest, policy: Policy, reasons: list[str]) -> bool:
    if not (request.local_only or policy.is_local_only(request.job)):
        return False
    source = (
        "request" if request.local_only else "policy" if policy.doc.privacy.local_only else "job"
    )
    reasons.append(f"local_only: {source}")
    return True


def _candidates(policy: Policy, role: str | None, reasons: list[str]) -> tuple[ModelInfo, ...]:
    """The role's model, or (no role) every routable model, cheapest first (sorted once)."""
    if role is not None:
        return (policy.models[policy.doc.roles[role].model],)
    reasons.append("no role: lowest-cost model some role runs, with the required capabilities")
    return policy.routable_by_cost


def _intent_reason(choice: IntentChoice) -> str:
    info = choice.classification
    name = choice.intent.name if choice.intent is not None else None
    how: str = info.method
    if info.confidence is not None:
        how += f" {info.confidence:.2f}"
    if not choice.matched:
        text = (
            f"no intent decided ({how}); default intent {name!r}"
            if name
            else (f"no intent decided ({how})")
        )
    else:
        text = f"intent {name!r} ({how})"
    return text + (f": {info.note}" if info.note else "")


def _role(
    request: RouteRequest,
    job: Job | None,
    matched: CompiledIntent | None,
    intent: CompiledIntent | None,
    doc: PolicyDocument,
    reasons: list[str],
) -> str | None:
    """Who picks the model: the caller's role, the job's role, the intent's role, the
    default role, or (none of those: None) the cheapest sufficient model."""
    if request.role is not None:
        role, why = request.role, "role given by the caller"
    elif job is not None and job.role is not None:
        role, why = job.role, f"role of job {request.job!r}"
    elif intent is not None and intent.intent.role is not None:
        role, why = intent.intent.role, f"role of intent {intent.name!r}"
    elif matched is None and doc.defaults.role is not None:
        role, why = doc.defaults.role, "default role"
    else:
        return None
    reasons.append(f"{why}: {role!r} -> {doc.roles[role].model!r}")
    return role


def _needs(
    request: RouteRequest, job: Job | None, intent: CompiledIntent | None, role: str | None
) -> frozenset[str]:
    needs = set(request.needs)
    if request.role is None and (job is None or job.role is None):
        # The intent's requirements bind free selection and intent/default roles;
        # a role named by the caller or the job is held only to the caller's `needs`.
        if intent is not None:
            needs.update(intent.intent.requires)
        elif role is None:
            needs.add("chat")
    return frozenset(needs)


def count_input(
    request: RouteRequest, policy: Policy, candidates: tuple[ModelInfo, ...] = ()
) -> Tokens:
    """The request's input tokens: the caller's exact count, or the task's (counted with the
    candidates' tokenizers, the largest count when they differ; the calibrated estimate
    when none has an offline one) plus context_tokens as given."""
    counters = policy.counters
    overhead = policy.doc.token_estimate.overhead_tokens
    found = {counters.get(info.model.tokenizer).name: info for info in candidates}
    chosen = [counters.get(found[name].model.tokenizer) for name in sorted(found)]
    counts = [(c.count(request.task, overhead), c) for c in chosen or [counters.estimate]]
    task_tokens, counter = max(counts, key=lambda pair: (pair[0], pair[1].name))
    context_tokens = request.context_tokens or 0
    if request.input_tokens is not None:
        return Tokens(
            request.input_tokens, "exact (given by the caller)", task_tokens, context_tokens
        )
    method = counters.method(counter)
    if len(counts) > 1:
        method = f"largest of {len(counts)} tokenizers: {method}"
    if context_tokens:
        method += " + context_tokens as given"
    return Tokens(task_tokens + context_tokens, method, task_tokens, context_tokens)
