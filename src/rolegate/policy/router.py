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
from rolegate.policy.decision import NO_USAGE, BudgetSnapshot, Decision, PolicyRef, RouteRequest
from rolegate.policy.limits import MAX_TASK_CHARS, check_count, check_name, check_needs
from rolegate.policy.outcomes import Base, Tokens, refused, routed, streaming_allowed
from rolegate.policy.schema import Job, PolicyDocument
from rolegate.policy.selection import Refusal, check_model, fallback_refusal, role_for, select_model
from rolegate.policy.tokens import estimate_method, estimate_tokens

# The per-model checks live in `selection` and `outcomes`; the engine and escalation
# import them from here.
__all__ = ["Refusal", "check_model", "classify", "fallback_refusal", "route", "streaming_allowed"]


def classify(policy: Policy, task: str) -> CompiledIntent | None:
    """The first intent (by priority, then name) whose keywords or patterns match."""
    position = policy.intent_matcher.first(task)
    return None if position is None else policy.intents[position]


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


def route(request: RouteRequest, policy: Policy, budget: BudgetSnapshot | None = None) -> Decision:
    """Decide which model serves ``request``, or refuse with a code and a sentence.

    Raises RequestError only for malformed requests (unknown job/role/channel,
    empty task); every policy outcome, refusals included, is a Decision.
    """
    _validate(request, policy)
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
    matched, intent = _intent(policy, request.task, reasons)
    role = _role(request, job, matched, intent, doc, reasons)
    needs = _needs(request, job, intent, role)
    tokens = _tokens(request, doc)
    max_output = request.max_output_tokens or doc.defaults.max_output_tokens
    selection = select_model(
        policy,
        _candidates(policy, role, reasons),
        job_name=request.job,
        role=role,
        local_only=local_only,
        input_tokens=tokens.input_tokens,
        max_output=max_output,
        snapshot=snapshot,
        needs=needs,
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
    )
    chosen = selection.chosen
    if chosen is None:
        return refused(policy, base, role, selection.best, tokens)
    chosen_role = role or role_for(policy, chosen.id)
    return routed(policy, request, chosen, chosen_role, tokens.count(chosen), base, needs, snapshot)


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


def _intent(
    policy: Policy, task: str, reasons: list[str]
) -> tuple[CompiledIntent | None, CompiledIntent | None]:
    """The intent that matched the task, and the one in force (the default if none did)."""
    matched = classify(policy, task)
    default = policy.doc.defaults.intent
    if matched is not None:
        reasons.append(f"intent {matched.name!r} matched")
        return matched, matched
    if default is not None:
        intent = policy.intents_by_name[default]
        reasons.append(f"no intent matched; default intent {intent.name!r}")
        return None, intent
    return None, None


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


def _tokens(request: RouteRequest, doc: PolicyDocument) -> Tokens:
    ts = doc.token_estimate
    task_tokens = estimate_tokens(request.task, ts)
    context_tokens = request.context_tokens or 0
    if request.input_tokens is not None:
        return Tokens(
            request.input_tokens, "exact (given by the caller)", task_tokens, context_tokens
        )
    method = estimate_method(ts)
    if context_tokens:
        method += " + context_tokens as given"
    return Tokens(task_tokens + context_tokens, method, task_tokens, context_tokens)
