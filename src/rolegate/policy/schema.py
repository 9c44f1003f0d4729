"""The policy file format (version 1), as pydantic models.

Every model forbids unknown keys so that a typo is an error, not a silently
ignored rule. Cross-references between sections are checked in ``checks``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, PlainSerializer, field_validator, model_validator

from rolegate.policy.evidence import QualityRule
from rolegate.policy.strict import Name, Strict, _unset
from rolegate.policy.topology import LlamaServer, Residency
from rolegate.policy.understanding_schema import (
    Classifier,
    Intent,
)
from rolegate.policy.vocabulary import (
    API_KEY_ENV_PATTERN,
    FailureCode,
    Locality,
    Op,
    Signal,
)


def _decimal_text(value: Decimal) -> str:
    # 1, 1.0 and 1.00 are the same price; the policy hash must not see a difference.
    return format(value.normalize(), "f")


Money = Annotated[Decimal, Field(ge=0), PlainSerializer(_decimal_text, return_type=str)]


class Provider(Strict):
    """A model server: Ollama, or anything speaking the OpenAI chat API."""

    type: Name = Field(
        description="'ollama' for Ollama's API; 'openai' for OpenAI-compatible servers "
        "(OpenAI, vLLM, llama.cpp, LM Studio, DeepSeek, Moonshot, OpenRouter); any other "
        "name must be provided by an installed plugin."
    )
    base_url: str = Field(description="Root URL of the server's API.")
    # The name's shape (and that it is not a pasted key) is checked in ``checks``,
    # whose messages never repeat the value; the pattern here documents the schema.
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (upper snake "
        "case, e.g. OPENAI_API_KEY); never the key itself.",
        json_schema_extra={"pattern": API_KEY_ENV_PATTERN},
    )
    locality: Locality = Field(description="'local' runs on your hardware; 'cloud' leaves it.")
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    max_retries: int = Field(
        default=1, ge=0, le=5, description="Retries before any byte was sent; never after."
    )


class Price(Strict):
    """US dollars per million tokens; 1 USD/Mtok is one micro-dollar per token."""

    input_per_mtok: Money = Decimal(0)
    output_per_mtok: Money = Decimal(0)


class Model(Strict):
    """A model the policy may route to. Without a context policy it is never routed to."""

    provider: Name
    name: str = Field(min_length=1, description="The provider's own name for the model.")
    locality: Locality | None = Field(
        default=None, description="Defaults to the provider's locality; may not contradict it."
    )
    context_window: int | None = Field(default=None, gt=0)
    reserve_tokens: int | None = Field(default=None, ge=0)
    price: Price = Price()
    capabilities: tuple[Name, ...] = ("chat",)
    premium: bool = False
    escalation_only: bool = Field(
        default=False,
        description="Reached only as an escalation step: never picked by free routing, "
        "never bound to a role.",
    )
    tier: Literal["hot", "warm", "cold"] = "hot"
    keep_alive: str | None = Field(
        default=None,
        pattern=r"^-?[0-9]+(ms|s|m|h)?$",
        description="How long Ollama keeps the model loaded after a call ('30m', '-1' = always, "
        "'0' = unload at once); other providers ignore it.",
    )
    weight: Literal["light", "heavy"] = "light"
    max_concurrency: int = Field(default=4, ge=1, le=1024)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    streaming: dict[str, bool] = Field(
        default_factory=dict,
        description="Streaming allowed per channel name or channel kind ('internal', "
        "'external'). Absent means forbidden.",
    )
    summarization: Literal["allowed", "discouraged", "forbidden"] = "allowed"
    chunking: Literal["none", "strict", "semantic", "semantic+score"] = "strict"
    rank: int = Field(default=100, description="Tie-break among equally cheap models; lower wins.")
    params_b: float | None = Field(default=None, gt=0, description="Parameters, billions.")
    quantization: str | None = None
    memory_gb: float | None = Field(
        default=None, gt=0, description="Memory the model takes when loaded (with its draft)."
    )
    server: LlamaServer | None = Field(
        default=None,
        description="The llama.cpp server rolegate starts for this model (see 'residency').",
        exclude_if=_unset,
    )
    description: str | None = None
    tokenizer: str | None = Field(
        default=None,
        pattern=r"^(o200k|cl100k|server|estimate|file:.+)$",
        description="How this model's input is counted: 'o200k' or 'cl100k' (OpenAI "
        "encodings, offline), 'file:PATH' (a tokenizer.json, relative to the policy file), "
        "'server' (the provider's /tokenize, llama.cpp and vLLM), 'estimate'. Default: the "
        "server's count where it offers one, else the calibrated estimate.",
        exclude_if=_unset,
    )


class Fallback(Strict):
    """An explicit fallback chain. Nothing falls back unless it is listed here."""

    models: tuple[Name, ...] = ()
    mode: Literal["ask", "auto"] = Field(
        default="ask",
        description="'ask': the user must consent before switching (NEEDS_CONSENT otherwise); "
        "'auto': switch, and report the switch in the result and the log.",
    )
    on: tuple[FailureCode, ...] = ("PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT")


class Predicate(Strict):
    """A structured escalation test on one signal; never evaluated as text."""

    signal: Signal
    op: Op
    value: float | bool


class Escalation(Strict):
    ladder: tuple[Name, ...] = Field(
        default=(), description="Models to move up to, in order (first is the next step)."
    )
    when: tuple[Predicate, ...] = ()
    consent: bool = Field(default=False, description="Ask the user before switching.")


class Role(Strict):
    model: Name
    fallback: Fallback = Fallback()
    authority: Literal["owner", "sidecar", "judge"] = "owner"
    kind: Name | None = Field(
        default=None,
        description="The role kind (from a plugin, see `rolegate plugins`) whose default "
        "system prompt the role uses when the caller gives none. Default: from 'authority' "
        "(owner -> 'owner', sidecar -> 'critic', judge -> 'judge'). The kind's own authority "
        "must equal the role's, or the server refuses to start.",
        # Left out of the canonical JSON when absent, so that adding the field did not
        # change the hash of any policy written before it.
        exclude_if=lambda value: value is None,
    )
    escalation: Escalation = Escalation()
    output_contract: Name | None = None
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; 0 for repeatable output."
    )
    description: str | None = None
    candidates: tuple[Name, ...] = Field(
        default=(),
        description="Other models this role may run when 'quality' shows one qualifies; "
        "'model' stays the role's own (used without evidence).",
        exclude_if=_unset,
    )
    quality: QualityRule | None = Field(
        default=None,
        description="Run the cheapest of 'model' and 'candidates' that qualifies on a suite.",
        exclude_if=_unset,
    )


class BudgetCap(Strict):
    window: Literal["day", "month", "rolling"]
    window_seconds: int | None = Field(default=None, gt=0)
    usd: Money | None = None
    tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _shape(self) -> BudgetCap:
        if self.usd is None and self.tokens is None:
            raise ValueError("a budget needs 'usd', 'tokens' or both")
        if (self.window == "rolling") != (self.window_seconds is not None):
            raise ValueError("'window_seconds' is required for, and only for, a rolling window")
        return self


class Budget(BudgetCap):
    scope: Literal["global", "job", "role", "model", "provider"]
    target: Name | None = Field(default=None, description="The job/role/model/provider name.")

    @model_validator(mode="after")
    def _target(self) -> Budget:
        if (self.scope == "global") != (self.target is None):
            raise ValueError(
                "'target' is required for every scope but 'global', where it is absent"
            )
        return self


class Job(Strict):
    role: Name | None = None
    script_only: bool = False
    local_only: bool = False
    premium_allowlist: tuple[Name, ...] = Field(
        default=(), description="Premium models this job may use."
    )
    budgets: tuple[BudgetCap, ...] = ()
    description: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Job:
        if self.script_only and self.role is not None:
            raise ValueError("a script-only job has no role")
        if not self.script_only and self.role is None:
            raise ValueError("a job needs a 'role' unless it is 'script_only'")
        return self


class Channel(Strict):
    kind: Literal["internal", "external"] = "internal"
    streaming: bool = True


class Privacy(Strict):
    local_only: bool = False
    log_prompts: Literal[False] = Field(
        default=False, description="Prompt and completion text are never logged or stored."
    )


class Stage(Strict):
    name: Name
    owner: Name
    critic: Name | None = None
    validate_contract: bool = True
    max_retries: int = Field(default=1, ge=0, le=5)


class Pipeline(Strict):
    consensus: Literal["forbidden"] = Field(
        default="forbidden",
        description="Rolegate never runs voting, debate or committees; this cannot be changed.",
    )
    critic: Literal["never", "always", "on_escalation"] = "on_escalation"
    stages: tuple[Stage, ...] = ()


JsonType = Literal["string", "number", "integer", "boolean", "array", "object"]


class Contract(Strict):
    """An output a role must produce: a JSON object with these keys."""

    format: Literal["json"] = "json"
    required: tuple[str, ...] = ()
    types: dict[str, JsonType] = Field(
        default_factory=dict, description="JSON type per key (default: any)."
    )
    confidence_field: str | None = None
    max_items: int | None = Field(
        default=None, ge=1, description="At most this many items in each array-typed key."
    )
    enforce: bool = Field(
        default=False,
        description="Ask the provider for schema-constrained output (json_schema / format); "
        "the output is still validated either way.",
    )

    def json_schema(self) -> dict[str, object]:
        """The contract as a JSON Schema, for providers that constrain output with one."""
        props: dict[str, object] = {}
        for key, kind in self.types.items():
            prop: dict[str, object] = {"type": kind}
            if kind == "array" and self.max_items is not None:
                prop["maxItems"] = self.max_items
            props[key] = prop
        for key in self.required:
            props.setdefault(key, {})
        if self.confidence_field is not None:
            props[self.confidence_field] = {"type": "number", "minimum": 0, "maximum": 1}
        return {"type": "object", "properties": props, "required": list(self.required)}


class Risk(Strict):
    high_risk_categories: tuple[str, ...] = ()
    judge_role: Name | None = Field(
        default=None, description="High-risk work needs this role's approval; it must be cloud."
    )


class TokenEstimate(Strict):
    chars_per_token: float = Field(
        default=2.0,
        gt=0,
        le=8,
        description="ASCII letters per token in the conservative estimate (digits, "
        "punctuation, whitespace and non-ASCII bytes count one token each).",
    )
    overhead_tokens: int = Field(default=32, ge=0, description="Chat template, per message.")


class Lanes(Strict):
    heavy: int | None = Field(default=None, ge=1, description="Heavy local models at once.")
    light: int | None = Field(default=None, ge=1)


class Defaults(Strict):
    intent: Name | None = None
    role: Name | None = None
    channel: Name | None = None
    max_output_tokens: int = Field(default=1024, ge=1)


# tzdata files that name no place: the host's own zone, and placeholders.
HOST_ZONES = frozenset({"localtime", "posixrules", "Factory"})


class PolicyDocument(Strict):
    json_schema_ref: str | None = Field(
        default=None,
        alias="$schema",
        description="For editors: the JSON Schema of this file (`rolegate policy schema`). "
        "Ignored by rolegate, and not part of the policy's hash.",
        exclude=True,
    )
    version: Literal[1]
    name: Name
    revision: str = Field(default="0", description="The document's own version; bump on change.")
    description: str | None = None
    providers: dict[Name, Provider]
    models: dict[Name, Model]
    roles: dict[Name, Role] = Field(default_factory=dict)
    jobs: dict[Name, Job] = Field(default_factory=dict)
    intents: dict[Name, Intent] = Field(default_factory=dict)
    channels: dict[Name, Channel] = Field(default_factory=dict)
    contracts: dict[Name, Contract] = Field(default_factory=dict)
    budgets: tuple[Budget, ...] = ()
    privacy: Privacy = Privacy()
    escalation_on_user_request: bool = Field(
        default=True, description="Any role escalates one step on an explicit user request."
    )
    pipeline: Pipeline = Pipeline()
    risk: Risk = Risk()
    lanes: Lanes = Lanes()
    token_estimate: TokenEstimate = TokenEstimate()
    defaults: Defaults = Defaults()
    classifier: Classifier | None = Field(
        default=None,
        description="Settings of the example-based intent classifier; it runs whenever an "
        "intent has examples, with these defaults when this section is absent.",
        exclude_if=_unset,
    )
    ledger: str | None = Field(
        default=None, description="Ledger URL (sqlite:///path or postgresql://...)."
    )
    timezone: str | None = Field(
        default=None,
        max_length=128,
        description="IANA time zone (e.g. Europe/Berlin) whose local midnight starts day "
        "budget windows and whose first of the month starts month windows; UTC when absent.",
        exclude_if=_unset,
    )
    residency: Residency | None = Field(
        default=None,
        description="Track what is loaded: HOT models stay resident, WARM ones are loaded on "
        "demand (evicting the least recently used when memory would be exceeded), COLD ones "
        "only by hand. Applies to models with a 'server' and to Ollama models.",
        exclude_if=_unset,
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        # The message never repeats the value: policy errors never show what was written.
        if value in HOST_ZONES:
            raise ValueError(
                "this zone means whatever the machine is set to, so one policy would start "
                "its days at different hours on different machines; write an IANA name "
                "such as 'Europe/Berlin', or leave 'timezone' out for UTC"
            )
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError(
                    "unknown time zone; write an IANA name such as 'Europe/Berlin', "
                    "'America/Los_Angeles' or 'UTC' (case matters), or leave 'timezone' out "
                    "for UTC"
                ) from None
        return value
