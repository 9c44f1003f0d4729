"""The rolegate://roles resource: what each role runs and what each model accepts."""

from __future__ import annotations

from typing import Any

from rolegate.policy import Policy


def roles_overview(policy: Policy) -> dict[str, Any]:
    """Each role's model, chain, ladder and contract; each model's limits and prices."""
    doc = policy.doc
    models = {
        mid: {
            "provider": info.model.provider,
            "provider_model": info.model.name,
            "locality": info.locality,
            "context_window": info.model.context_window,
            "reserve_tokens": info.model.reserve_tokens,
            "max_input_tokens": info.max_input_tokens,
            "premium": info.model.premium,
            "escalation_only": info.model.escalation_only,
            "capabilities": sorted(info.capabilities),
            "price_per_mtok": {
                "input": str(info.model.price.input_per_mtok),
                "output": str(info.model.price.output_per_mtok),
            },
        }
        for mid, info in sorted(policy.models.items())
    }
    roles = {
        rid: {
            "model": role.model,
            "authority": role.authority,
            "fallback": list(role.fallback.models),
            "fallback_mode": role.fallback.mode,
            "escalation_ladder": list(role.escalation.ladder),
            "output_contract": role.output_contract,
        }
        for rid, role in sorted(doc.roles.items())
    }
    return {"policy_hash": policy.hash, "roles": roles, "models": models}
