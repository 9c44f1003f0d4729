"""Pipeline stages: one authoritative owner per stage, claimed before any provider call.

A claim is taken in the store before the first call and held under a lease long enough for
the whole run (every declared model's timeout, plus a margin); the run's output finishes the
stage, a failed run releases it. A sidecar (critic) never claims: its critique is recorded
beside the owner's output and never replaces it.
"""

from __future__ import annotations

import uuid

from rolegate.engine.store import Store
from rolegate.errors import Code, RefusedError
from rolegate.policy import Policy

CLAIM_LEASE_MARGIN_S = 60.0


async def claim_stage(
    policy: Policy, store: Store, task_id: str | None, stage: str | None, role: str, model: str
) -> str | None:
    """Claim the stage's one authoritative output, or raise CONSENSUS_FORBIDDEN; returns the
    claim id (None: nothing to claim)."""
    authority = policy.doc.roles[role].authority
    if task_id is None or stage is None or authority == "sidecar":
        return None
    declared = policy.stages.get(stage)
    if declared is not None and declared.owner != role:
        raise RefusedError(
            f"stage {stage!r} is owned by role {declared.owner!r}; role {role!r} "
            "cannot write it (one owner per stage; no consensus)",
            code=Code.CONSENSUS_FORBIDDEN,
        )
    claim = "claim_" + uuid.uuid4().hex
    await store.claim_stage(task_id, stage, role, model, claim, claim_lease_s(policy, role))
    return claim


def claim_lease_s(policy: Policy, role: str) -> float:
    """Long enough for the whole run: every declared model's timeout, plus a margin."""
    role_def = policy.doc.roles[role]
    total = CLAIM_LEASE_MARGIN_S
    for mid in (role_def.model, *role_def.fallback.models):
        model = policy.doc.models[mid]
        total += model.timeout_s or policy.doc.providers[model.provider].timeout_s
    return total


async def release_stage(
    store: Store, task_id: str | None, stage: str | None, claim: str | None
) -> None:
    if task_id is not None and stage is not None and claim is not None:
        await store.release_stage(task_id, stage, claim)


async def record_output(
    policy: Policy,
    store: Store,
    *,
    task_id: str,
    stage: str | None,
    role: str,
    model: str,
    request_id: str,
    claim: str | None,
    contract_valid: bool | None,
) -> None:
    """The run's output on its task: a critique beside the stage, or the stage's owner output."""
    authority = policy.doc.roles[role].authority
    if authority == "sidecar":
        await store.record_critique(
            task_id=task_id,
            stage=stage,
            role=role,
            model=model,
            request_id=request_id,
            contract_valid=contract_valid,
        )
    elif stage is not None and claim is not None:
        await store.finish_stage(
            task_id=task_id,
            stage=stage,
            claim=claim,
            output_request_id=request_id,
            role=role,
            model=model,
            authority=authority,
            contract_valid=contract_valid,
        )
