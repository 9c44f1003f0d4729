"""What is loaded, as the router sees it: a snapshot of resident model ids taken by the
engine before it routes (``route()`` stays pure: the snapshot is an input like the budget)."""

from __future__ import annotations

from collections.abc import Sequence

from rolegate.errors import Code
from rolegate.policy.compiled import ModelInfo, Policy
from rolegate.policy.decision import Residence

COLD_REASON = (
    "is COLD and not loaded: rolegate never loads it on its own; load it with "
    "`rolegate up --tier cold`"
)


def cold_models(policy: Policy, resident: frozenset[str]) -> dict[str, tuple[Code, str]]:
    """COLD tracked models that are not loaded, with the refusal each gets."""
    return {
        mid: (Code.MODEL_COLD, COLD_REASON)
        for mid in policy.managed
        if policy.doc.models[mid].tier == "cold" and mid not in resident
    }


def prefer_resident(
    candidates: Sequence[ModelInfo], resident: frozenset[str], policy: Policy
) -> tuple[ModelInfo, ...]:
    """The cost order, with loaded models first among those equally cheap and equally
    ranked (a stable sort: nothing else moves)."""

    def key(info: ModelInfo) -> tuple[object, ...]:
        needs_load = info.id in policy.managed and info.id not in resident
        return (info.sort_key[0], info.sort_key[1], needs_load)

    return tuple(sorted(candidates, key=key))


def residence(policy: Policy, info: ModelInfo, resident: frozenset[str]) -> Residence | None:
    if info.id not in policy.managed:
        return None
    loaded = info.id in resident
    return Residence(
        tier=info.model.tier,
        resident=loaded,
        load_needed=not loaded,
        memory_gb=info.model.memory_gb,
    )
