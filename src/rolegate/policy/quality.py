"""Quality-aware routing: the candidates a quality rule allows, in the order they are tried.

A rule on a role applies to the role's ``model`` and ``candidates``; a rule on an intent
applies when no role picks the model (free selection). Models whose evidence qualifies
(at least ``min_cases`` judged cases, pass rate at least ``min_pass_rate``) go first,
cheapest first. Then, under ``without_evidence: capability``, the capability rule: for a
role its own model, for free selection the models not measured below the bar. Models
measured below the bar are rejected with QUALITY_BELOW_BAR (a role's own model excepted:
it is the role's declared binding). The decision's ``quality`` says which evidence chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from rolegate.errors import Code
from rolegate.policy.compiled import CompiledIntent, ModelInfo, Policy
from rolegate.policy.decision import QualityEvidence, QualityReport
from rolegate.policy.evidence import Evidence, EvidenceBook, QualityRule


def evidence_key(rule: QualityRule) -> str:
    """The book's key for a rule's suite: rules with different ages see different evidence."""
    return rule.suite if rule.max_age_days is None else f"{rule.suite}|{rule.max_age_days:g}d"


def rules(policy: Policy) -> list[QualityRule]:
    """Every quality rule of the policy (roles', then intents'), for the engine to load."""
    found = [r.quality for r in policy.doc.roles.values() if r.quality is not None]
    found += [i.quality for i in policy.doc.intents.values() if i.quality is not None]
    return found


def rule_for(
    policy: Policy, role: str | None, intent: CompiledIntent | None
) -> tuple[QualityRule, str] | None:
    """The rule in force: the role's when a role picks the model, else the intent's."""
    if role is not None:
        declared = policy.doc.roles[role].quality
        return (declared, f"role {role!r}") if declared is not None else None
    if intent is not None and intent.intent.quality is not None:
        return intent.intent.quality, f"intent {intent.name!r}"
    return None


def role_pool(policy: Policy, role: str) -> tuple[ModelInfo, ...]:
    """A role's own model and its candidates, cheapest first."""
    declared = policy.doc.roles[role]
    names = {declared.model, *declared.candidates}
    return tuple(m for m in policy.models_by_cost if m.id in names)


def qualifies(rule: QualityRule, found: Evidence | None) -> bool:
    return (
        found is not None
        and found.cases >= rule.min_cases
        and found.pass_rate >= rule.min_pass_rate
    )


def below_bar(rule: QualityRule, found: Evidence | None) -> bool:
    return found is not None and found.cases >= rule.min_cases and not qualifies(rule, found)


@dataclass(frozen=True, slots=True)
class QualityPlan:
    """The candidates in the order to try, and what the evidence said of each."""

    rule: QualityRule
    source: str
    candidates: tuple[ModelInfo, ...]
    qualified: tuple[str, ...]
    below: list[dict[str, str]]
    measured: dict[str, Evidence]

    def report(self, chosen: ModelInfo | None) -> QualityReport:
        found = self.measured.get(chosen.id) if chosen is not None else None
        met = chosen is not None and chosen.id in self.qualified
        return QualityReport(
            suite=self.rule.suite,
            source=self.source,
            min_pass_rate=self.rule.min_pass_rate,
            min_cases=self.rule.min_cases,
            max_age_days=self.rule.max_age_days,
            qualified=met,
            qualified_models=list(self.qualified),
            evidence=_shown(found) if found is not None else None,
            note=None if met else self._note(chosen),
        )

    def _note(self, chosen: ModelInfo | None) -> str:
        rule = self.rule
        if not self.qualified:
            why = (
                f"no candidate has {rule.min_cases} judged cases at >= "
                f"{rule.min_pass_rate:.0%} on suite {rule.suite!r}"
            )
        else:
            why = f"no qualified model ({', '.join(self.qualified)}) passed the call's checks"
        if chosen is None:
            return why
        return f"{why}: capability rule chose {chosen.id}"


def plan_quality(
    rule: QualityRule,
    source: str,
    pool: tuple[ModelInfo, ...],
    own: str | None,
    book: EvidenceBook,
) -> QualityPlan:
    """Order ``pool`` (cheapest first) by the evidence in ``book``; ``own``: a role's model."""
    key = evidence_key(rule)
    measured = {m.id: e for m in pool if (e := book.get((key, m.id))) is not None}
    good = tuple(m for m in pool if qualifies(rule, measured.get(m.id)))
    names = {m.id for m in good}
    below: list[dict[str, str]] = []
    tail: list[ModelInfo] = []
    for m in pool:
        found = measured.get(m.id)
        if m.id in names:
            continue
        if below_bar(rule, found) and m.id != own:
            assert found is not None
            reason = _below(rule, found)
            below.append({"model": m.id, "code": Code.QUALITY_BELOW_BAR, "reason": reason})
        elif rule.without_evidence == "capability" and (own is None or m.id == own):
            tail.append(m)
    return QualityPlan(rule, source, (*good, *tail), tuple(m.id for m in good), below, measured)


def _below(rule: QualityRule, found: Evidence) -> str:
    return (
        f"passed {found.passed}/{found.cases} ({found.pass_rate:.0%}) on suite {rule.suite!r}; "
        f"the policy asks for {rule.min_pass_rate:.0%}"
    )


def _shown(found: Evidence) -> QualityEvidence:
    low, high = found.interval()
    return QualityEvidence(
        model=found.model,
        passed=found.passed,
        cases=found.cases,
        pass_rate=round(found.pass_rate, 4),
        interval=[round(low, 4), round(high, 4)],
        last_at=datetime.fromtimestamp(found.last_us / 1e6, UTC).isoformat(timespec="seconds"),
    )
