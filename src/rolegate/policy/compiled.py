"""A validated policy, compiled once for fast, deterministic routing."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import re2

from rolegate.errors import PolicyProblem
from rolegate.policy.checks import model_locality
from rolegate.policy.schema import Budget, Intent, Model, PolicyDocument, Stage

_TIER_ORDER = {"hot": 0, "warm": 1, "cold": 2}


def canonical_json(doc: PolicyDocument) -> str:
    """The policy as canonical JSON: defaults filled in, keys sorted, no spaces."""
    data = doc.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the router needs of a model, computed once."""

    id: str
    model: Model
    locality: str
    capabilities: frozenset[str]
    max_input_tokens: int | None
    sort_key: tuple[Any, ...]

    def worst_case_cost_micro(self, input_tokens: int, output_tokens: int) -> int:
        """Cost in micro-dollars, rounded up (1 USD per Mtok = 1 micro-dollar per token)."""
        price = self.model.price
        total = input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok
        return math.ceil(total)


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One cap on one scope and window, with a stable id for the ledger."""

    id: str
    scope: str
    target: str | None
    window: str
    window_seconds: int | None
    usd_micro: int | None
    tokens: int | None


class IntentPattern(Protocol):
    """A compiled RE2 pattern: matching time is linear in the task's length."""

    def search(self, text: str) -> object | None: ...


@dataclass(frozen=True, slots=True)
class CompiledIntent:
    name: str
    intent: Intent
    pattern: IntentPattern | None


def _budget_line(budget: Budget) -> BudgetLine:
    window = budget.window if budget.window != "rolling" else f"rolling{budget.window_seconds}s"
    bid = f"{budget.scope}:{budget.target or '*'}:{window}"
    usd_micro = None if budget.usd is None else math.floor(budget.usd * 1_000_000)
    return BudgetLine(
        bid,
        budget.scope,
        budget.target,
        budget.window,
        budget.window_seconds,
        usd_micro,
        budget.tokens,
    )


def re2_options() -> Any:
    """RE2 options for intent patterns: case-insensitive and quiet.

    RE2's default ``max_mem`` (8 MiB) bounds what compiling a pattern may use.
    """
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a bad pattern is reported by `check`, not on stderr
    return options


def compile_re2(pattern: str) -> IntentPattern:
    """Compile ``pattern`` with RE2 (raises ``re2.error``); matching never backtracks."""
    compiled: IntentPattern = re2.compile(pattern, re2_options())
    return compiled


def combined_regex(regexes: Sequence[str]) -> str:
    return "|".join(f"(?:{rx})" for rx in regexes)


# Python's \b is Unicode-aware and RE2's is ASCII-only, so a keyword's edges are
# spelled out: a word character is a letter, a digit or '_' in any script.
_WORD = r"[\pL\pN_]"
_NOT_WORD = r"[^\pL\pN_]"


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _keyword_regex(keyword: str) -> str:
    """``keyword`` as a whole word: what ``\\b keyword \\b`` means in Python's re."""
    if not keyword:
        return r"\b"
    before = f"(?:^|{_NOT_WORD})" if _is_word_char(keyword[0]) else _WORD
    after = f"(?:$|{_NOT_WORD})" if _is_word_char(keyword[-1]) else _WORD
    return before + str(re2.escape(keyword)) + after


def _intent_pattern(intent: Intent) -> IntentPattern | None:
    parts = [_keyword_regex(k) for k in intent.match.keywords]
    if intent.match.regex:
        parts.append(combined_regex(intent.match.regex))
    if not parts:
        return None
    return compile_re2("|".join(parts))


class Policy:
    """A loaded, checked policy: the document plus the indexes routing uses.

    Immutable once built; every lookup the router makes is a dict access.
    """

    def __init__(
        self, doc: PolicyDocument, *, source: str, warnings: list[PolicyProblem] | None = None
    ) -> None:
        self.doc = doc
        self.source = source
        self.warnings: list[PolicyProblem] = warnings or []
        self.canonical_json = canonical_json(doc)
        self.hash = "sha256:" + hashlib.sha256(self.canonical_json.encode("utf-8")).hexdigest()
        self.models: dict[str, ModelInfo] = {}
        for mid, model in doc.models.items():
            max_input = (
                None
                if model.context_window is None or model.reserve_tokens is None
                else model.context_window - model.reserve_tokens
            )
            price = model.price.input_per_mtok + model.price.output_per_mtok
            key = (
                price,
                model.rank,
                _TIER_ORDER[model.tier],
                model.params_b if model.params_b is not None else math.inf,
                mid,
            )
            self.models[mid] = ModelInfo(
                mid,
                model,
                model_locality(doc, model),
                frozenset(model.capabilities),
                max_input,
                key,
            )
        # Cheapest first; ties broken by rank, tier, size, then id: never by file order.
        self.models_by_cost: tuple[ModelInfo, ...] = tuple(
            sorted(
                (m for m in self.models.values() if not m.model.escalation_only),
                key=lambda m: m.sort_key,
            )
        )
        self.intents: tuple[CompiledIntent, ...] = tuple(
            CompiledIntent(name, intent, _intent_pattern(intent))
            for name, intent in sorted(doc.intents.items(), key=lambda kv: (kv[1].priority, kv[0]))
        )
        lines = [_budget_line(b) for b in doc.budgets]
        for jid, job in sorted(doc.jobs.items()):
            for cap in job.budgets:
                lines.append(_budget_line(Budget(scope="job", target=jid, **cap.model_dump())))
        self.budgets: tuple[BudgetLine, ...] = tuple(lines)
        self.roles_by_model: dict[str, tuple[str, ...]] = {}
        for rid in sorted(doc.roles):
            mid = doc.roles[rid].model
            self.roles_by_model[mid] = (*self.roles_by_model.get(mid, ()), rid)
        # Free routing picks among models some role runs, so that every decision it makes can
        # be run with run_role (a model reached only as a fallback has no role of its own).
        self.routable_by_cost: tuple[ModelInfo, ...] = (
            tuple(m for m in self.models_by_cost if m.id in self.roles_by_model)
            if doc.roles
            else self.models_by_cost
        )
        # Declared pipeline stages by name (names are unique: checked at load).
        self.stages: dict[str, Stage] = {stage.name: stage for stage in doc.pipeline.stages}

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def revision(self) -> str:
        return self.doc.revision

    def is_local_only(self, job: str | None = None) -> bool:
        if self.doc.privacy.local_only:
            return True
        return job is not None and job in self.doc.jobs and self.doc.jobs[job].local_only

    def budgets_touching(
        self, *, job: str | None, role: str | None, model: str, provider: str
    ) -> list[BudgetLine]:
        """Every cap that a call with these coordinates counts against."""
        wanted = {"global": None, "job": job, "role": role, "model": model, "provider": provider}
        return [
            b
            for b in self.budgets
            if b.scope == "global" or (wanted[b.scope] is not None and wanted[b.scope] == b.target)
        ]

    def price_of(self, model: str) -> tuple[Decimal, Decimal]:
        price = self.doc.models[model].price
        return price.input_per_mtok, price.output_per_mtok
