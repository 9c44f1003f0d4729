"""What binds every provider call of one run, resolved from the request and its decision."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rolegate.engine.routing import load_decision
from rolegate.engine.store import Store
from rolegate.errors import Code, RefusedError, RequestError
from rolegate.policy import Decision, Policy
from rolegate.policy.limits import check_count, check_name


@dataclass(frozen=True, slots=True)
class Constraints:
    """The role, the job, and every rule a call of this run is held to: the caller's
    arguments plus, with a decision_id, the constraints the decision was made under."""

    role: str
    job: str | None
    local_only: bool
    channel: str | None
    risk: str | None
    needs: frozenset[str]
    max_output: int
    decision_id: str | None = None
    decision_model: str | None = None
    intent: str | None = None  # the decision's (live quality evidence goes to its rule)


async def resolve_constraints(
    policy: Policy,
    store: Store,
    *,
    role: str,
    job: str | None,
    channel: str | None,
    decision_id: str | None,
    local_only: bool,
    max_output_tokens: int | None,
) -> Constraints:
    """What binds every call of this run: the caller's arguments and, with a decision_id,
    every constraint the decision was made under (they can be added to, never dropped)."""
    for value, what in ((role, "role"), (job, "job"), (channel, "channel")):
        check_name(value, what)
    check_count(max_output_tokens, "max_output_tokens", low=1)
    if role not in policy.doc.roles:
        raise RequestError(
            f"unknown role {role!r}; the policy defines {sorted(policy.doc.roles)}",
            code=Code.UNKNOWN_ROLE,
        )
    given = Constraints(
        role=role,
        job=job,
        local_only=local_only,
        channel=channel,
        risk=None,
        needs=frozenset(),
        max_output=max_output_tokens or 0,  # 0: not given
    )
    if decision_id is not None:
        check_name(decision_id, "decision_id")
        given = _bind(given, await load_decision(policy, store, decision_id), decision_id)
    return _checked(policy, given)


def _bind(given: Constraints, decision: Decision, decision_id: str) -> Constraints:
    """The run under the decision's constraints; a conflicting argument is refused."""
    if decision.outcome != "route" or decision.role != given.role:
        raise RequestError(
            f"decision {decision_id} routed role {decision.role!r} with outcome "
            f"{decision.outcome!r}; it cannot run role {given.role!r}",
            code=Code.INVALID_ARGUMENT,
        )
    cap = decision.max_output_tokens
    if given.max_output and cap is not None and given.max_output > cap:
        raise RequestError(
            f"decision {decision_id} was made for at most {cap:,} output tokens; route "
            "again to run a larger call",
            code=Code.INVALID_ARGUMENT,
        )
    return replace(
        given,
        job=_bound("job", given.job, decision.job, decision_id),
        channel=_bound("channel", given.channel, decision.channel, decision_id),
        max_output=given.max_output or cap or 0,
        local_only=given.local_only or decision.local_only,
        needs=frozenset(decision.required_capabilities),
        risk=decision.risk,
        decision_id=decision_id,
        decision_model=decision.model,
        intent=decision.intent,
    )


def _checked(policy: Policy, c: Constraints) -> Constraints:
    """Job and channel known and runnable, the policy's defaults and local_only applied."""
    doc = policy.doc
    if c.job is not None and c.job not in doc.jobs:
        raise RequestError(f"unknown job {c.job!r}", code=Code.UNKNOWN_JOB)
    if c.job is not None and doc.jobs[c.job].script_only:
        raise RefusedError(
            f"job {c.job!r} is script-only: it runs without any model", code=Code.SCRIPT_ONLY
        )
    if c.channel is not None and c.channel not in doc.channels:
        raise RequestError(f"unknown channel {c.channel!r}", code=Code.UNKNOWN_CHANNEL)
    local_only = c.local_only or policy.is_local_only(c.job)
    judge = doc.risk.judge_role if c.risk == "high" else None
    if judge is not None and local_only:
        judge_model = policy.models[doc.roles[judge].model]
        if judge_model.locality == "cloud":
            raise RefusedError(
                f"high-risk work needs the cloud judge {judge!r} ({judge_model.id}), but "
                "local_only forbids cloud calls",
                code=Code.CLOUD_JUDGE_REQUIRED,
            )
    return replace(
        c,
        local_only=local_only,
        channel=c.channel or doc.defaults.channel,
        max_output=c.max_output or doc.defaults.max_output_tokens,
    )


def _bound(what: str, given: str | None, decided: str | None, decision_id: str) -> str | None:
    if given is not None and given != decided:
        raise RequestError(
            f"decision {decision_id} was made for {what} {decided!r}, not {given!r}; run it "
            f"with the same {what}, or route again",
            code=Code.INVALID_ARGUMENT,
        )
    return decided
