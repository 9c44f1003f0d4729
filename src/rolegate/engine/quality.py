"""Measured quality in the engine: the evidence the router sees, the role's quality choice
on the run path, and run_role's contract checks fed back as live evidence.

Evidence is read from the ledger per rule (suite and age), at most once a second per
process, off the event loop, so route_task pays a dict lookup. Without a ledger there is
no evidence: every rule falls to its ``without_evidence`` behaviour and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

from rolegate.engine.constraints import Constraints
from rolegate.engine.results import RunResult
from rolegate.engine.store import Store
from rolegate.errors import Code, LedgerError, RefusedError, RequestError
from rolegate.ledger.quality import EvalResult, QualityStore
from rolegate.logs import get_logger
from rolegate.policy import Policy
from rolegate.policy.decision import NO_USAGE, QualityReport
from rolegate.policy.evidence import Evidence, EvidenceBook, QualityRule
from rolegate.policy.quality import evidence_key, plan_quality, role_pool, rules
from rolegate.policy.selection import check_model

log = get_logger()
REFRESH_S = 1.0
_DAY_US = 86_400 * 1_000_000


class QualityBook:
    """The evidence for the policy's quality rules, as of at most ``REFRESH_S`` ago."""

    def __init__(self, policy: Policy, store: Store, refresh_s: float = REFRESH_S) -> None:
        self.policy = policy
        self.store = store
        self.refresh_s = refresh_s
        self._has_rules = bool(rules(policy))
        self._book: dict[tuple[str, str], Evidence] = {}
        self._read_at: float | None = None
        self._lock = anyio.Lock()

    @property
    def active(self) -> bool:
        """Whether the policy has a quality rule (else the router needs no evidence)."""
        return self._has_rules

    def invalidate(self) -> None:
        """New evidence was written here: read it again on the next decision."""
        self._read_at = None

    async def book(self) -> EvidenceBook:
        """The evidence now; a ledger that cannot be read keeps the last book (logged)."""
        if self.store.ledger is None or not self._has_rules:
            return self._book
        if self._fresh():
            return self._book
        async with self._lock:
            if not self._fresh():
                await self._read()
        return self._book

    def _fresh(self) -> bool:
        read_at = self._read_at
        return read_at is not None and time.monotonic() - read_at < self.refresh_s

    async def _read(self) -> None:
        ledger = self.store.ledger
        assert ledger is not None
        policy, now_us = self.policy, int(self.store.clock().timestamp() * 1_000_000)
        try:
            book = await anyio.to_thread.run_sync(lambda: read_evidence(policy, ledger, now_us))
        except LedgerError as exc:
            log.warning("quality_evidence_unreadable", code=str(exc.code))
            self._read_at = time.monotonic()  # do not retry on every decision
            return
        self._book, self._read_at = book, time.monotonic()


def read_evidence(
    policy: Policy, ledger: QualityStore, now_us: int
) -> dict[tuple[str, str], Evidence]:
    """The ledger's evidence for each of the policy's quality rules, within its age at
    ``now_us``, keyed as the router looks it up (``evidence_key``). Blocking."""
    book: dict[tuple[str, str], Evidence] = {}
    for key, rule in {evidence_key(rule): rule for rule in rules(policy)}.items():
        for found in ledger.evidence(rule.suite, _since(rule, now_us)):
            book[(key, found.model)] = found
    return book


def _since(rule: QualityRule, now_us: int) -> int | None:
    return None if rule.max_age_days is None else now_us - int(rule.max_age_days * _DAY_US)


@dataclass(frozen=True, slots=True)
class RoleChoice:
    model: str
    report: QualityReport


def role_choice(policy: Policy, book: EvidenceBook, limits: Constraints) -> RoleChoice | None:
    """A role with a quality rule, run without a decision: the cheapest of its model and
    candidates that qualifies and passes the run's static checks (locality, allowlist,
    capabilities); admission then checks context and budgets as for any call."""
    declared = policy.doc.roles[limits.role]
    rule = declared.quality
    if rule is None:
        return None
    plan = plan_quality(rule, f"role {limits.role!r}", role_pool(policy, limits.role),
                        declared.model, book)  # fmt: skip
    for info in plan.candidates:
        refused = check_model(info, policy=policy, job_name=limits.job, role=limits.role,
                              local_only=limits.local_only, input_tokens=0,
                              max_output=0, snapshot=NO_USAGE, needs=limits.needs)  # fmt: skip
        if refused is None:
            return RoleChoice(info.id, plan.report(info))
    if rule.without_evidence == "refuse":  # fail closed, as route_task does
        raise RefusedError(
            f"{plan.report(None).note}, and role {limits.role!r}'s quality rule says to refuse "
            f"without it; run `rolegate eval` on suite {rule.suite!r} for its candidates",
            code=Code.QUALITY_UNPROVEN,
        )
    return RoleChoice(declared.model, plan.report(None))


def live_rule(policy: Policy, limits: Constraints) -> QualityRule | None:
    """The rule whose suite this run's contract check feeds, if the policy allows it."""
    role_rule = policy.doc.roles[limits.role].quality
    if role_rule is not None and role_rule.live:
        return role_rule
    intent = policy.doc.intents.get(limits.intent) if limits.intent else None
    if intent is not None and intent.quality is not None and intent.quality.live:
        return intent.quality
    return None


async def record_live(
    policy: Policy, store: Store, book: QualityBook, limits: Constraints, result: RunResult
) -> None:
    """Store the run's contract check as evidence (a warning on the result if it fails)."""
    rule = live_rule(policy, limits)
    ledger = store.ledger
    if rule is None or result.contract is None or ledger is None:
        return
    row = EvalResult(
        suite=rule.suite,
        case_id=result.request_id,
        model=result.model,
        source="live",
        outcome="pass" if result.contract.valid else "fail",
        at_us=int(store.clock().timestamp() * 1_000_000),
        score=1.0 if result.contract.valid else 0.0,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        cost_micro=result.cost_micro,
    )
    try:
        await anyio.to_thread.run_sync(lambda: ledger.put_eval_results([row]))
    except (LedgerError, RequestError) as exc:
        result.warnings.append(f"{exc.code}: the contract check was not stored as evidence: "
                               f"{exc.message}")  # fmt: skip
        return
    book.invalidate()
