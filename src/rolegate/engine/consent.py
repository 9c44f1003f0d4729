"""Asking the user before an "ask first" fallback (seed 003).

Up front, before the call: ``consent_needed`` says whether the role would have to switch
(its model is down and its chain asks first) and names the allowed alternates in order, so
the transport can ask once. Mid-call: ``ask_consent`` asks through the caller where it can
be asked, and audits the answer. A caller that cannot be asked gets NEEDS_CONSENT.
"""

from __future__ import annotations

import time

from rolegate.engine.constraints import Constraints
from rolegate.engine.providers import ProviderPool
from rolegate.engine.requests import Caller
from rolegate.engine.store import Store
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.policy.decision import NO_USAGE, Rejection
from rolegate.policy.router import check_model, fallback_refusal

PROBE_TTL_S = 2.0


def consent_message(failed: str, alternate: str, reason: str) -> str:
    return (
        f"{failed} is unavailable ({reason}). The policy says to ask before switching. "
        f"Run this on {alternate} instead?"
    )


async def ask_consent(
    policy: Policy, store: Store, caller: Caller, failed: str, alternate: str, reason: str
) -> bool | None:
    """Ask now, through the caller; None when it cannot be asked mid-call."""
    answer = await caller.ask(consent_message(failed, alternate, reason))
    if answer is None:
        return None
    await store.audit(
        {
            "kind": "consent",
            "model": failed,
            "to_model": alternate,
            "code": "GRANTED" if answer else "DECLINED",
            "policy_hash": policy.hash,
        }
    )
    return answer


def declared_steps(policy: Policy, role: str, failed: str) -> list[str]:
    """The declared models after ``failed`` in the role's chain (none if it is not in it)."""
    role_def = policy.doc.roles[role]
    chain = [role_def.model, *role_def.fallback.models]
    return chain[chain.index(failed) + 1 :] if failed in chain else []


def static_refusal(policy: Policy, limits: Constraints, info: ModelInfo) -> Rejection | None:
    """Why a fallback step is forbidden before any count or budget is known (premium,
    escalation-only, local_only, allowlist, capabilities), or None."""
    return fallback_refusal(
        policy,
        info,
        job=limits.job,
        role=limits.role,
        local_only=limits.local_only,
        needs=limits.needs,
        input_tokens=0,
        max_output=0,
        snapshot=NO_USAGE,
    )


def allowed_steps(policy: Policy, limits: Constraints, failed: str) -> list[str]:
    """The steps after ``failed`` that the run's constraints allow before any count or
    budget is known: what an up-front consent question names."""
    return [
        mid
        for mid in declared_steps(policy, limits.role, failed)
        if static_refusal(policy, limits, policy.models[mid]) is None
    ]


class Probes:
    """Is a model's server up? Probed at most every PROBE_TTL_S per model."""

    def __init__(self, pool: ProviderPool) -> None:
        self.pool = pool
        self._cache: dict[str, tuple[float, bool]] = {}

    async def up(self, model: str) -> bool:
        now = time.monotonic()
        cached = self._cache.get(model)
        if cached is not None and now - cached[0] < PROBE_TTL_S:
            return cached[1]
        up = await self.pool.probe(model)
        self._cache[model] = (now, up)
        return up


async def consent_needed(
    policy: Policy, store: Store, probes: Probes, limits: Constraints
) -> tuple[str, list[str]] | None:
    """(primary, allowed alternates in order) when the run's role asks before falling back
    and its model is down: what the up-front consent question names."""
    role_def = policy.doc.roles[limits.role]
    if role_def.fallback.mode != "ask" or not role_def.fallback.models:
        return None
    primary = limits.decision_model or role_def.model
    # Never probe a server the run may not use (local_only, allowlist, capabilities,
    # budgets): admission refuses it without contacting it, and so must this.
    refusal = check_model(
        policy.models[primary],
        policy=policy,
        job_name=limits.job,
        role=limits.role,
        local_only=limits.local_only,
        input_tokens=0,
        max_output=limits.max_output,
        snapshot=await store.snapshot(),
        needs=limits.needs,
    )
    if refusal is not None:
        return None
    alternates = allowed_steps(policy, limits, primary)
    if not alternates or await probes.up(primary):
        return None
    return primary, alternates
