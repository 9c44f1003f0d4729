"""Output models of the MCP tools: every tool publishes an outputSchema from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rolegate.policy import Policy
from rolegate.policy.decision import Decision, OutputModel, PolicyRef, QualityReport
from rolegate.policy.escalation import EscalationDecision


class RouteResult(Decision):
    decision_id: str = Field(description="Pass to run_role to run exactly this decision.")


class Usage(OutputModel):
    input_tokens: int
    output_tokens: int
    input_exact: bool = Field(description="True when the server counted the input tokens.")
    charged_at_worst_case: bool = Field(
        default=False,
        description="The provider reported no usage; charged the reserved worst case.",
    )


class FallbackStep(OutputModel):
    model: str
    code: str = Field(description="OK, the failure code, or the rule that refused the step.")
    outcome: Literal["ok", "failed", "refused"]
    consent: str | None = None


class FallbackInfo(OutputModel):
    from_model: str
    to_model: str
    reason: str = Field(description="The failure code that triggered the declared fallback.")
    consent: str = Field(description="'auto' (declared) or 'user' (asked through elicitation).")
    path: list[FallbackStep] = Field(
        default_factory=list, description="Every step of the declared chain that was walked."
    )


class ContractReport(OutputModel):
    name: str
    valid: bool
    errors: list[str] = Field(default_factory=list)


class Critique(OutputModel):
    """A critic's review of an owner's output, run by the server because the pipeline says so.
    It comments; it never replaces or rewrites the owner output."""

    role: str
    model: str
    output: str = Field(description="The critic's text.")
    structured: dict[str, Any] | None = Field(
        default=None, description="Risks, contradictions, ... parsed against its contract."
    )
    contract: ContractReport | None = None
    authoritative: bool = Field(default=False, description="Always false: a critic never owns.")
    request_id: str
    cost_micro: int


class Load(OutputModel):
    """What a call's model cost to reach (policies with 'residency')."""

    loaded: bool = Field(description="The model was not loaded: the call loaded it first.")
    evicted: list[str] = Field(description="Models unloaded to make room, in order.")
    load_ms: float | None = Field(description="How long the load took.")


class RunResult(OutputModel):
    output: str = Field(description="The model's completion text.")
    structured: dict[str, Any] | None = Field(
        default=None, description="The output parsed against the role's contract, when valid."
    )
    contract: ContractReport | None = None
    role: str
    model: str
    provider: str
    provider_model: str
    locality: str
    usage: Usage
    max_input_tokens: int | None = Field(description="The model's context_window - reserve.")
    reserve_tokens: int | None
    cost_micro: int = Field(description="Cost in micro-USD.")
    latency_ms: float
    ttft_ms: float | None = Field(default=None, description="Time to first token.")
    load: Load | None = Field(
        default=None, description="Whether the model had to be loaded (tracked models only)."
    )
    streamed: bool = Field(
        description="Partial output was sent to the client as it was generated (only where "
        "the channel and the model allow it)."
    )
    fallback: FallbackInfo | None = None
    quality: QualityReport | None = Field(
        default=None,
        description="A role with a quality rule, run without a decision: the evidence that "
        "chose its model.",
    )
    escalation: EscalationDecision | None = Field(
        default=None, description="The escalation the output's own signals trigger, if any."
    )
    attempts: int = Field(default=1, description="Calls made, counting validation retries.")
    authoritative: bool = Field(
        default=True, description="False for sidecars (critics): comments, never the owner output."
    )
    request_id: str
    decision_id: str | None = None
    task_id: str | None = None
    stage: str | None = None
    policy: PolicyRef
    critique: Critique | None = Field(
        default=None,
        description="The stage critic's review, when pipeline.critic runs it automatically.",
    )
    critique_error: str | None = Field(
        default=None, description="Why the automatic critique failed (CODE: sentence)."
    )
    judge_required: str | None = Field(
        default=None, description="High-risk work: this judge role must approve the output."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Things that went wrong after the call was paid for (CODE: sentence); "
        "the output is returned regardless.",
    )


class ScopeReport(OutputModel):
    id: str
    scope: str
    target: str | None
    window: str
    resets_at: str | None = Field(description="ISO time the window resets; null for rolling.")
    cap_usd_micro: int | None
    spent_usd_micro: int
    reserved_usd_micro: int
    left_usd_micro: int | None
    cap_tokens: int | None
    spent_tokens: int
    reserved_tokens: int
    left_tokens: int | None


class CallCheck(OutputModel):
    model: str
    role: str | None
    job: str | None
    input_tokens: int
    token_method: str
    output_tokens: int
    max_input_tokens: int | None
    fits_context: bool
    worst_case_cost_micro: int
    fits_budget: bool
    admitted: bool
    code: str
    refusing_scope: str | None = None
    message: str


class BudgetReport(OutputModel):
    policy: PolicyRef
    ledger: str = Field(description="Where spend is counted.")
    scopes: list[ScopeReport]
    check: CallCheck | None = None


class EscalateResult(EscalationDecision):
    provenance_id: str = Field(description="Id of the provenance record of this evaluation.")
    consent: Literal["granted", "declined", "not_asked"] | None = Field(
        default=None, description="The user's answer where the policy demands consent."
    )


def policy_ref(policy: Policy) -> PolicyRef:
    return PolicyRef(name=policy.name, revision=policy.revision, hash=policy.hash)
