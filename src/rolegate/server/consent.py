"""Asking the user before an "ask first" fallback or an escalation, in both protocol eras.

Up front: a Resolve/Elicit parameter of run_role, which works in the handshake
era and in 2026-07-28 (where the server cannot send requests mid-call). Mid-call:
``ctx.elicit`` where the era allows it. A client that cannot be asked gets
NEEDS_CONSENT naming the alternate model.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
)
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field

from rolegate.engine.consent import consent_message
from rolegate.engine.core import PolicyEngine
from rolegate.engine.requests import Consent


class ConsentForm(BaseModel):
    switch: bool = Field(description="Switch to the named alternate model for this call?")


def consent_from(answer: ElicitationResult[ConsentForm]) -> Consent | None:
    """Map the resolver's outcome to a Consent; None when nobody was asked."""
    if isinstance(answer, AcceptedElicitation):
        if answer.data is None:
            return None
        return Consent(granted=answer.data.switch, asked=True)
    return Consent(granted=False, asked=True)


async def elicit_consent(ctx: Context, message: str, form: type[ConsentForm]) -> bool | None:
    try:
        result: Any = await ctx.elicit(message, form)
    except MCPError:
        return None
    if isinstance(result, AcceptedElicitation):
        data = result.data
        return bool(getattr(data, "switch", False))
    return False


def make_resolver(engine: PolicyEngine) -> Any:
    async def resolve_consent(
        ctx: Context,
        role: str,
        job: str | None = None,
        local_only: bool = False,
        decision_id: str | None = None,
    ) -> Elicit[ConsentForm] | None:
        needed = await engine.consent_needed(role, job, local_only, decision_id)
        if needed is None:
            return None
        caps = ctx.client_capabilities
        if caps is None or caps.elicitation is None:
            return None  # cannot ask: run_role refuses with NEEDS_CONSENT if the model fails
        primary, alternates = needed
        return Elicit(
            consent_message(primary, " then ".join(alternates), "PROVIDER_UNAVAILABLE"),
            ConsentForm,
        )

    return resolve_consent
