"""Built-in role kinds: owner, critic (non-authoritative sidecar) and judge."""

from __future__ import annotations

from typing import Any

from rolegate.plugins.base import RoleKind
from rolegate.plugins.hookspecs import hookimpl

CRITIC_PROMPT = (
    "You are a critic. You never rewrite the work you are shown. Reply with one JSON object "
    'with the keys "risks", "contradictions", "missing_requirements" and '
    '"guardrail_conflicts", each a list of short strings.'
)
JUDGE_PROMPT = (
    "You are the final judge. Cite evidence for every finding. Reply with one JSON object "
    'with the keys "verdict" ("approve" or "reject") and "evidence" (a list of strings).'
)


@hookimpl
def register_roles(register: Any) -> None:
    register(RoleKind("owner", "The single authoritative owner of a stage."))
    register(
        RoleKind(
            "critic", "Comments on an owner's output; never rewrites it.", CRITIC_PROMPT, "sidecar"
        )
    )
    register(
        RoleKind(
            "judge",
            "Approves or rejects with evidence; must run on a cloud model.",
            JUDGE_PROMPT,
            "judge",
        )
    )
