"""A validated policy, compiled once for fast, deterministic routing."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rolegate.errors import PolicyProblem
from rolegate.policy.patterns import IntentMatcher, IntentPattern, intent_pattern

# Pattern helpers lived here first; `checks` imports them from this module.
from rolegate.policy.patterns import combined_regex as combined_regex
from rolegate.policy.patterns import compile_re2 as compile_re2
from rolegate.policy.patterns import re2_options as re2_options
from rolegate.policy.problems import model_locality
from rolegate.policy.schema import Budget, Model, PolicyDocument, Stage
from rolegate.policy.tokenizers import Counters
from rolegate.policy.topology_checks import managed
from rolegate.policy.understanding_schema import Intent

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
    """One cap on one scope and window, with a stable id for the ledger.

    ``tz`` is the policy's ``timezone``: where day and month windows start (local midnight,
    the local first of the month). It is not part of the id: the ledger keeps the moment of
    every charge, so a changed zone only moves where the windows are counted from.
    """

    id: str
    scope: str
    target: str | None
    window: str
    window_seconds: int | None
    usd_micro: int | None
    tokens: int | None
    tz: tzinfo = UTC


@dataclass(frozen=True, slots=True)
class CompiledIntent:
    name: str
    intent: Intent
    pattern: IntentPattern | None


def _budget_line(budget: Budget, tz: tzinfo) -> BudgetLine:
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
        tz,
    )


def _model_info(doc: PolicyDocument, mid: str, model: Model) -> ModelInfo:
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
    return ModelInfo(
        mid, model, model_locality(doc, model), frozenset(model.capabilities), max_input, key
    )


def _budget_lines(doc: PolicyDocument) -> tuple[BudgetLine, ...]:
    tz = UTC if doc.timezone is None else ZoneInfo(doc.timezone)
    lines = [_budget_line(b, tz) for b in doc.budgets]
    for jid, job in sorted(doc.jobs.items()):
        for cap in job.budgets:
            lines.append(_budget_line(Budget(scope="job", target=jid, **cap.model_dump()), tz))
    return tuple(lines)


def _base_dir(source: str) -> Path:
    path = Path(source)
    return path.parent if path.suffix and not source.startswith("<") else Path.cwd()


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
        self.models: dict[str, ModelInfo] = {
            mid: _model_info(doc, mid, model) for mid, model in doc.models.items()
        }
        # Cheapest first; ties broken by rank, tier, size, then id: never by file order.
        self.models_by_cost: tuple[ModelInfo, ...] = tuple(
            sorted(
                (m for m in self.models.values() if not m.model.escalation_only),
                key=lambda m: m.sort_key,
            )
        )
        # Precedence: priority, then name. The matcher answers with positions in this order.
        self.intents: tuple[CompiledIntent, ...] = tuple(
            CompiledIntent(name, intent, intent_pattern(intent))
            for name, intent in sorted(doc.intents.items(), key=lambda kv: (kv[1].priority, kv[0]))
        )
        self.intent_matcher = IntentMatcher([(i.intent, i.pattern) for i in self.intents])
        self.intents_by_name: dict[str, CompiledIntent] = {i.name: i for i in self.intents}
        self.budgets: tuple[BudgetLine, ...] = _budget_lines(doc)
        # Positions of the lines each (scope, target) names, so that finding the lines a call
        # touches costs what it finds, not one test per line (global lines touch every call).
        self._global_budgets = tuple(i for i, b in enumerate(self.budgets) if b.scope == "global")
        self._scoped_budgets: dict[tuple[str, str | None], list[int]] = {}
        for i, b in enumerate(self.budgets):
            if b.scope != "global":
                self._scoped_budgets.setdefault((b.scope, b.target), []).append(i)
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
        # Tokenizers by name, loaded on first use; 'file:' paths are relative to the policy.
        # Models whose residency is tracked (a server rolegate starts, or Ollama's).
        self.managed = frozenset(m for m in doc.models if managed(doc, m))
        self.base_dir = _base_dir(source)  # where relative paths in the policy start
        self.counters = Counters(doc.token_estimate, self.base_dir)

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
        """Every cap that a call with these coordinates counts against, in declared order."""
        if not self.budgets:
            return []
        found = list(self._global_budgets)
        scoped = self._scoped_budgets
        for key in (("job", job), ("role", role), ("model", model), ("provider", provider)):
            if key[1] is not None:
                found += scoped.get(key, ())
        found.sort()
        return [self.budgets[i] for i in found]

    def price_of(self, model: str) -> tuple[Decimal, Decimal]:
        price = self.doc.models[model].price
        return price.input_per_mtok, price.output_per_mtok
