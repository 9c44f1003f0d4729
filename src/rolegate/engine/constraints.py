"""What binds every provider call of one run, resolved from the request and its decision."""

from __future__ import annotations

from dataclasses import dataclass

from rolegate.engine.routing import load_decision
from rolegate.engine.store import Store
from rolegate.errors import Code, RefusedError, RequestError
from rolegate.policy import Policy
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
    doc = policy.doc
    for value, what in ((role, "role"), (job, "job"), (channel, "channel")):
        check_name(value, what)
    check_count(max_output_tokens, "max_output_tokens", low=1)
    if role not in doc.roles:
        raise RequestError(
            f"unknown role {role!r}; the policy defines {sorted(doc.roles)}", code=Code.UNKNOWN_ROLE
        )
    needs: frozenset[str] = frozenset()
    risk: str | None = None
    model: str | None = None
    if decision_id is not None:
        check_name(decision_id, "decision_id")
        decision = await load_decision(policy, store, decision_id)
        if decision.outcome != "route" or decision.role != role:
            raise RequestError(
                f"decision {decision_id} routed role {decision.role!r} with outcome "
                f"{decision.outcome!r}; it cannot run role {role!r}",
                code=Code.INVALID_ARGUMENT,
            )
        job = _bound("job", job, decision.job, decision_id)
        channel = _bound("channel", channel, decision.channel, decision_id)
        cap = decision.max_output_tokens
        if max_output_tokens is not None and cap is not None and max_output_tokens > cap:
            raise RequestError(
                f"decision {decision_id} was made for at most {cap:,} output tokens; route "
                "again to run a larger call",
                code=Code.INVALID_ARGUMENT,
            )
        max_output_tokens = max_output_tokens or decision.max_output_tokens
        local_only = local_only or decision.local_only
        needs, risk = frozenset(decision.required_capabilities), decision.risk
        model = decision.model
    if job is not None and job not in doc.jobs:
        raise RequestError(f"unknown job {job!r}", code=Code.UNKNOWN_JOB)
    if job is not None and doc.jobs[job].script_only:
        raise RefusedError(
            f"job {job!r} is script-only: it runs without any model", code=Code.SCRIPT_ONLY
        )
    if channel is not None and channel not in doc.channels:
        raise RequestError(f"unknown channel {channel!r}", code=Code.UNKNOWN_CHANNEL)
    local_only = local_only or policy.is_local_only(job)
    judge = doc.risk.judge_role if risk == "high" else None
    if judge is not None and local_only:
        judge_model = policy.models[doc.roles[judge].model]
        if judge_model.locality == "cloud":
            raise RefusedError(
                f"high-risk work needs the cloud judge {judge!r} ({judge_model.id}), but "
                "local_only forbids cloud calls",
                code=Code.CLOUD_JUDGE_REQUIRED,
            )
    return Constraints(
        role=role,
        job=job,
        local_only=local_only,
        channel=channel or doc.defaults.channel,
        risk=risk,
        needs=needs,
        max_output=max_output_tokens or doc.defaults.max_output_tokens,
        decision_id=decision_id,
        decision_model=model,
    )


def _bound(what: str, given: str | None, decided: str | None, decision_id: str) -> str | None:
    if given is not None and given != decided:
        raise RequestError(
            f"decision {decision_id} was made for {what} {decided!r}, not {given!r}; run it "
            f"with the same {what}, or route again",
            code=Code.INVALID_ARGUMENT,
        )
    return decided
