"""The Decisions ``route`` returns once a model is chosen or every candidate is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rolegate.errors import Code
from rolegate.policy.compiled import ModelInfo, Policy
from rolegate.policy.decision import (
    BudgetSnapshot,
    Classification,
    Decision,
    PolicyRef,
    Rejection,
    RouteRequest,
    TokenCount,
)
from rolegate.policy.selection import Refusal, fallback_refusal


@dataclass(frozen=True, slots=True)
class Base:
    """The parts every decision for one request shares."""

    policy: PolicyRef
    intent: str | None
    required_capabilities: list[str]
    job: str | None
    channel: str | None
    risk: str | None
    local_only: bool
    max_output_tokens: int
    reasons: list[str]
    # Rejection-shaped dicts (see ``selection.Selection``); the Decision validates them.
    rejected: list[dict[str, str]]
    classification: Classification | None = None

    def decide(self, **fields: Any) -> Decision:
        return Decision(
            policy=self.policy,
            intent=self.intent,
            required_capabilities=self.required_capabilities,
            job=self.job,
            channel=self.channel,
            risk=self.risk,
            local_only=self.local_only,
            max_output_tokens=self.max_output_tokens,
            reasons=self.reasons,
            classification=self.classification,
            rejected=self.rejected,
            **fields,
        )


def describe(info: ModelInfo) -> dict[str, Any]:
    """The model a decision names, described as it is (also when it is refused)."""
    return {
        "model": info.id,
        "provider": info.model.provider,
        "provider_model": info.model.name,
        "locality": info.locality,
        "premium": info.model.premium,
    }


def streaming_allowed(policy: Policy, channel: str | None, info: ModelInfo) -> bool:
    """May partial output reach this channel from this model? An unknown channel (none
    given and no default) fails closed: nothing is streamed."""
    if channel is None:
        return False
    ch = policy.doc.channels[channel]
    allowed = info.model.streaming.get(channel, info.model.streaming.get(ch.kind, False))
    return ch.streaming and allowed


@dataclass(frozen=True, slots=True)
class Tokens:
    """How the input was counted for one request (the model adds its own limits)."""

    input_tokens: int
    method: str
    task_tokens: int
    context_tokens: int

    def count(self, info: ModelInfo) -> TokenCount:
        return TokenCount(
            input_tokens=self.input_tokens,
            method=self.method,
            task_tokens=self.task_tokens,
            context_tokens=self.context_tokens,
            max_input_tokens=info.max_input_tokens,
            context_window=info.model.context_window,
            reserve_tokens=info.model.reserve_tokens,
        )


def remedies(
    policy: Policy, code: Code, info: ModelInfo, role: str | None, input_tokens: int
) -> list[str]:
    if code == Code.OVER_BUDGET:
        out = ["narrow_scope", "select_documents"]
        if info.model.summarization != "forbidden":
            out.insert(0, "summarize")
        if info.model.chunking != "none":
            out.append("chunk")
        ladder = policy.doc.roles[role].escalation.ladder if role else ()
        if any((policy.models[m].max_input_tokens or 0) >= input_tokens for m in ladder):
            out.append("escalate")
        return out
    if code == Code.NOT_ALLOWLISTED:
        return ["use a job whose premium_allowlist names the model", "use a local role"]
    if code == Code.LOCAL_ONLY_VIOLATION:
        return ["use a local role", "lift local_only for this job if policy allows"]
    if code == Code.BUDGET_EXHAUSTED:
        return ["wait for the budget window to reset", "lower max_output_tokens"]
    if code == Code.NO_SUFFICIENT_MODEL:
        return ["drop a requirement", "add a capable model to the policy"]
    return []


def refused(
    policy: Policy,
    base: Base,
    role: str | None,
    best: tuple[Refusal, ModelInfo] | None,
    tokens: Tokens,
) -> Decision:
    """Every candidate was refused: report the one that got furthest."""
    if best is None:
        return base.decide(
            outcome="refuse",
            code=Code.NO_SUFFICIENT_MODEL,
            message="no model may be picked freely (all are escalation-only); name a role",
            role=role,
        )
    refusal, info = best
    return base.decide(
        outcome="refuse",
        code=refusal.code,
        message=refusal.sentence(info.id),
        role=role,
        **describe(info),
        tokens=tokens.count(info),
        remedies=remedies(policy, refusal.code, info, role, tokens.input_tokens),
    )


def routed(
    policy: Policy,
    request: RouteRequest,
    info: ModelInfo,
    role: str | None,
    tokens: TokenCount,
    base: Base,
    needs: frozenset[str],
    snapshot: BudgetSnapshot,
) -> Decision:
    doc = policy.doc
    model = info.model
    role_def = doc.roles.get(role) if role else None
    judge = doc.risk.judge_role if request.risk == "high" else None
    base.reasons.append(
        f"selected {info.id} ({info.locality}, {tokens.input_tokens:,} <= "
        f"{info.max_input_tokens:,} input tokens)"
    )
    if judge is not None:
        judge_model = policy.models[doc.roles[judge].model]
        base.reasons.append(f"high risk: judge {judge!r} ({judge_model.id}) must approve")
        if base.local_only and judge_model.locality == "cloud":
            return base.decide(
                outcome="refuse",
                code=Code.CLOUD_JUDGE_REQUIRED,
                message=f"high-risk work needs the cloud judge {judge!r} ({judge_model.id}), "
                "but local_only forbids cloud calls",
                role=role,
                **describe(info),
                judge_required=judge,
                remedies=["lower the risk or lift local_only"],
            )
    fallback, fallback_rejected = _fallback_steps(
        policy, role_def.fallback.models if role_def else (), base, role, needs, tokens, snapshot
    )
    return base.decide(
        outcome="route",
        code=Code.ROUTED,
        message=f"route to {info.id} via provider {model.provider}",
        role=role,
        model=info.id,
        provider=model.provider,
        provider_model=model.name,
        locality=info.locality,
        premium=model.premium,
        tokens=tokens,
        worst_case_cost_micro=info.worst_case_cost_micro(
            tokens.input_tokens, base.max_output_tokens
        ),
        streaming=streaming_allowed(policy, base.channel, info),
        judge_required=judge,
        fallback=fallback,
        fallback_mode=role_def.fallback.mode if fallback and role_def else None,
        fallback_rejected=fallback_rejected,
    )


def _fallback_steps(
    policy: Policy,
    chain: tuple[str, ...],
    base: Base,
    role: str | None,
    needs: frozenset[str],
    tokens: TokenCount,
    snapshot: BudgetSnapshot,
) -> tuple[list[str], list[Rejection]]:
    """The declared fallback steps this decision's constraints allow, and those they forbid."""
    fallback: list[str] = []
    fallback_rejected: list[Rejection] = []
    for mid in chain:
        step = fallback_refusal(
            policy,
            policy.models[mid],
            job=base.job,
            role=role,
            local_only=base.local_only,
            needs=needs,
            input_tokens=tokens.input_tokens,
            max_output=base.max_output_tokens,
            snapshot=snapshot,
        )
        if step is None:
            fallback.append(mid)
        else:
            fallback_rejected.append(step)
    return fallback, fallback_rejected
