"""The router's input and output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _compact_nullable(schema: dict[str, Any]) -> None:
    """``{"anyOf": [{"type": T}, {"type": "null"}]}`` becomes ``{"type": [T, "null"]}``, and a
    nullable reference lists null first: the same schema, about 40% cheaper for clients that
    validate every result against it (the Python SDK's client does)."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if not (isinstance(options, list) and len(options) == 2 and {"type": "null"} in options):
            continue
        (other,) = [o for o in options if o != {"type": "null"}]
        if set(other) == {"type"} and isinstance(other["type"], str):
            del prop["anyOf"]
            prop["type"] = [other["type"], "null"]
        else:
            prop["anyOf"] = [{"type": "null"}, other]


class OutputModel(BaseModel):
    """Base of the models the tools return (their published outputSchema)."""

    model_config = ConfigDict(json_schema_extra=_compact_nullable)


Risk = Literal["low", "normal", "high"]


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the caller wants routed. Only ``task`` is required."""

    task: str
    job: str | None = None
    role: str | None = None
    channel: str | None = None
    context_tokens: int | None = None
    input_tokens: int | None = None
    needs: tuple[str, ...] = ()
    local_only: bool = False
    risk: Risk | None = None
    max_output_tokens: int | None = None
    # An intent already known (replaying a recorded decision: the text is never stored).
    intent: str | None = None


@dataclass(frozen=True, slots=True)
class ScopeUsage:
    """What a budget line has used in its current window (ledger snapshot)."""

    spent_micro: int = 0
    reserved_micro: int = 0
    spent_tokens: int = 0
    reserved_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """Usage per budget line id; a line with no entry has used nothing."""

    usage: dict[str, ScopeUsage] = field(default_factory=dict)

    def get(self, line_id: str) -> ScopeUsage:
        return self.usage.get(line_id, _EMPTY)


_EMPTY = ScopeUsage()
#: Usage where nothing was spent or reserved (no ledger, or checks made before counting).
NO_USAGE = BudgetSnapshot()


class PolicyRef(OutputModel):
    name: str
    revision: str
    hash: str


class TokenCount(OutputModel):
    input_tokens: int = Field(description="Input tokens the decision was made on.")
    method: str = Field(description="How they were counted: 'exact', or the estimate used.")
    task_tokens: int
    context_tokens: int
    max_input_tokens: int | None = Field(description="context_window - reserve_tokens.")
    context_window: int | None
    reserve_tokens: int | None


class Residence(OutputModel):
    """Whether the chosen model is loaded (policies with 'residency')."""

    tier: str
    resident: bool = Field(description="Loaded when the decision was made.")
    load_needed: bool = Field(description="A call will load it first (WARM, not resident).")
    memory_gb: float | None = None


ClassifyMethod = Literal[
    "caller", "size", "keywords", "embedding", "lexical", "router_model", "default", "recorded"
]


class Classification(OutputModel):
    """How the task's intent was found (route_task's ``classification``)."""

    method: ClassifyMethod = Field(
        description="'caller': a role or job the caller named decides, the intent is only "
        "recorded; 'size': an intent's min_input_tokens; 'keywords': the policy's keywords "
        "or regexes; 'embedding': the classifier on the intents' examples; 'lexical': the "
        "same from the task's words alone, sure enough that the task was not embedded; "
        "'router_model': the "
        "policy's router role chose; 'default': nothing decided, the default intent applies; "
        "'recorded': a replay, with the intent its recorded decision had."
    )
    label: str | None = Field(default=None, description="The intent it gave, if any.")
    confidence: float | None = None
    runner_up: str | None = None
    runner_up_confidence: float | None = None
    confident: bool | None = Field(
        default=None, description="Whether the classifier's confidence met the threshold."
    )
    router_asked: bool = False
    note: str | None = Field(default=None, description="Why the method fell through, if so.")


class QualityEvidence(OutputModel):
    model: str
    passed: int
    cases: int = Field(description="Judged cases (eval cases' latest results, live checks).")
    pass_rate: float
    interval: list[float] = Field(description="95% Wilson interval of the pass rate.")
    last_at: str = Field(description="When the newest result was stored (UTC).")


class QualityReport(OutputModel):
    """Which measured quality chose the model (intents and roles with 'quality')."""

    suite: str
    source: str = Field(description="Whose rule: the role's or the intent's.")
    min_pass_rate: float
    min_cases: int
    max_age_days: float | None = None
    qualified: bool = Field(description="The chosen model met the rule on its evidence.")
    qualified_models: list[str] = Field(description="Every candidate that met it.")
    evidence: QualityEvidence | None = Field(description="The chosen model's evidence, if any.")
    note: str | None = Field(default=None, description="Why the capability rule applied.")


class Rejection(OutputModel):
    model: str
    code: str
    reason: str


class Decision(OutputModel):
    """A routing decision: route to one model, refuse with a code, or script-only."""

    outcome: Literal["route", "refuse", "script_only"]
    code: str
    message: str
    policy: PolicyRef
    intent: str | None = None
    required_capabilities: list[str] = Field(default_factory=list)
    job: str | None = None
    channel: str | None = Field(default=None, description="The output channel it was made for.")
    risk: str | None = None
    role: str | None = None
    model: str | None = None
    provider: str | None = None
    provider_model: str | None = Field(default=None, description="The provider's model name.")
    locality: str | None = None
    premium: bool = False
    local_only: bool = False
    tokens: TokenCount | None = None
    classification: Classification | None = None
    residency: Residence | None = None
    quality: QualityReport | None = None
    max_output_tokens: int | None = None
    worst_case_cost_micro: int | None = Field(
        default=None, description="Input plus max output at the model's prices, micro-USD."
    )
    streaming: bool | None = None
    judge_required: str | None = None
    fallback: list[str] = Field(
        default_factory=list,
        description="The declared fallback steps this decision's own constraints allow, in order.",
    )
    fallback_mode: str | None = None
    fallback_rejected: list[Rejection] = Field(
        default_factory=list, description="Declared fallback steps these constraints forbid."
    )
    remedies: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)
