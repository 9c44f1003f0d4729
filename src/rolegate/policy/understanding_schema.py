"""The policy's intents and how their examples classify tasks (``intents``, ``classifier``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from rolegate.policy.evidence import QualityRule
from rolegate.policy.strict import Name, Strict, _unset

Example = Annotated[str, Field(min_length=1, max_length=2000)]
MAX_EXAMPLES = 1000


class Match(Strict):
    keywords: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()


class Intent(Strict):
    description: str | None = None
    match: Match = Field(
        default=Match(),
        description="High-precision overrides: keywords (whole words, with their inflections "
        "and British spellings) or RE2 regexes. A match decides the intent before the "
        "classifier is asked.",
    )
    examples: tuple[Example, ...] | dict[Name, tuple[Example, ...]] = Field(
        default=(),
        description="Utterances of this intent: a list, or a mapping from kinds of work to "
        "lists when the intent covers several (e.g. general: {chat: [...], writing: [...]}),"
        " so the classifier learns each kind instead of one blurred mean. When any intent "
        f"has examples, tasks that no keyword decides are classified by similarity to them "
        f"(see 'classifier'). At most {MAX_EXAMPLES} per intent.",
        exclude_if=_unset,
    )
    min_input_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Size decides: a task whose input (the task plus context_tokens) is at "
        "least this many tokens has this intent, whatever its words.",
        exclude_if=_unset,
    )
    requires: tuple[Name, ...] = ()
    role: Name | None = Field(default=None, description="Route this intent to a fixed role.")
    priority: int = Field(default=100, description="When several intents match, lower wins.")
    quality: QualityRule | None = Field(
        default=None,
        description="Free selection picks the cheapest sufficient model that qualifies on a "
        "suite, instead of the cheapest sufficient one.",
        exclude_if=_unset,
    )

    @field_validator("examples")
    @classmethod
    def _at_most(
        cls, value: tuple[str, ...] | dict[str, tuple[str, ...]]
    ) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
        count = sum(map(len, value.values())) if isinstance(value, dict) else len(value)
        if count > MAX_EXAMPLES:
            raise ValueError(f"{count} examples; at most {MAX_EXAMPLES} per intent")
        return value

    def example_groups(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """(kind, examples) pairs: one unnamed group for a plain list (an empty kind is
        kept, for the checks to report)."""
        if isinstance(self.examples, dict):
            return tuple(self.examples.items())
        return ((None, self.examples),) if self.examples else ()

    def example_texts(self) -> tuple[str, ...]:
        return tuple(text for _, texts in self.example_groups() for text in texts)


SHORTCUT = 0.7


class Classifier(Strict):
    """How tasks that no keyword decides are classified by their intents' examples."""

    embedder: Name = Field(
        default="e5-small",
        description="An in-process embedder registered by a plugin; the built-in 'e5-small' "
        "(multilingual-e5-small, 4-bit, shipped on PyPI) needs no server and no model hub. "
        "Ignored when 'embedder_model' is set.",
    )
    embedder_model: Name | None = Field(
        default=None,
        description="A policy model with the 'embeddings' capability, served by its provider "
        "(/v1/embeddings on OpenAI-compatible servers, /api/embed on Ollama).",
    )
    method: Literal["linear", "knn", "centroid"] = Field(
        default="linear",
        description="'linear': a softmax regression trained on the examples (most accurate "
        "once intents have a few dozen examples); 'knn': the examples nearest the task "
        "vote; 'centroid': the nearest intent mean.",
    )
    threshold: float = Field(
        default=0.4,
        ge=0,
        le=1,
        description="Confidence below which the classifier is unsure (see 'on_unsure'). "
        "0.4 measured best with on_unsure 'default' on the example policies "
        "(benchmarks/bench_classify.py --policy-threshold).",
    )
    # Added after policies with a 'classifier' shipped: left out of the canonical JSON at
    # their defaults, so those policies keep their hashes.
    lexical: bool = Field(
        default=True,
        description="'linear' only: the model also reads the task's words and letter "
        "n-grams, which carry what an embedding blurs (names, exact phrases, pasted code).",
        strict=True,  # not 'yes' or 1
        exclude_if=lambda value: value is True,
    )
    shortcut: float | None = Field(
        default=SHORTCUT,
        ge=0,
        le=1,
        description="'linear' with 'lexical' only: a model of the words alone answers first, "
        "and when it is at least this sure (and at least 'threshold') the task is not "
        "embedded (classification method 'lexical'). null: every task is embedded.",
        strict=True,  # not true (1.0: never) or '0.8'
        exclude_if=lambda value: value == SHORTCUT,
    )
    on_unsure: Literal["router", "default", "refuse"] = Field(
        default="default",
        description="'router': ask 'router_role' to choose among the intents (schema-"
        "constrained, temperature 0, budgeted and audited); 'default': the default intent, "
        "said in the decision; 'refuse': refuse with INTENT_UNCERTAIN.",
    )
    router_role: Name | None = None
