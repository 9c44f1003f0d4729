"""PolicyEngine: the four tools' domain, one object per server process.

It holds the active policy, the store (usage, decisions, tasks, audit), the provider pool
and the role kinds' prompts, and answers typed requests with typed results. Each method is
a few lines: the work is done by the step modules (routing, run, budgets, escalation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rolegate.engine import budgets, escalation, routing
from rolegate.engine.calls import CallRunner
from rolegate.engine.consent import Probes, consent_needed
from rolegate.engine.constraints import resolve_constraints
from rolegate.engine.overview import roles_overview
from rolegate.engine.providers import ProviderPool
from rolegate.engine.quality import QualityBook
from rolegate.engine.requests import NO_CALLER, BudgetQuery, Caller, EscalateRequest, RunRequest
from rolegate.engine.results import BudgetReport, EscalateResult, RouteResult, RunResult
from rolegate.engine.run import run_role
from rolegate.engine.store import Store
from rolegate.engine.understanding import TaskReader
from rolegate.errors import Code, ProviderError, RequestError, RolegateError
from rolegate.policy import Policy, RouteRequest
from rolegate.policy.limits import check_name
from rolegate.topology.residency import Residency


class PolicyEngine:
    """Routes, runs, checks budgets and escalates under one policy."""

    def __init__(
        self,
        policy: Policy,
        store: Store,
        *,
        pool: ProviderPool | None = None,
        prompts: Mapping[str, str] | None = None,
        reader: TaskReader | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.pool = pool
        # The default system prompt of each role, from its kind (critic, judge, plugins').
        self.prompts = dict(prompts or {})
        # What is loaded, and loads on demand (policies whose models' residency is tracked).
        self.residency = residency
        self.calls = CallRunner(policy, pool, store, residency) if pool is not None else None
        self.probes = Probes(pool) if pool is not None else None
        # Reads tasks that no keyword decides (see ``understanding``); set by ``build_engine``.
        self.reader = reader or TaskReader(policy, None, self.calls)
        # Measured pass rates for quality rules, read from the ledger (see ``quality``).
        self.quality = QualityBook(policy, store)

    async def aclose(self) -> None:
        """Close the provider clients (they reopen on the next call)."""
        if self.pool is not None:
            await self.pool.aclose()
        if self.reader.classifier is not None:
            await self.reader.classifier.embedder.aclose()
        if self.residency is not None:
            await self.residency.aclose()

    async def route_task(self, request: RouteRequest) -> RouteResult:
        proposal = await self.reader.read(request)
        resident = None
        if self.residency is not None and self.residency.active:
            resident = await self.residency.snapshot()
        evidence = await self.quality.book() if self.quality.active else None
        return await routing.route_task(
            self.policy, self.store, request, proposal, resident, evidence
        )

    async def run_role(self, request: RunRequest, caller: Caller = NO_CALLER) -> RunResult:
        if self.calls is None:
            if request.role not in self.policy.doc.roles:
                raise RequestError(f"unknown role {request.role!r}", code=Code.UNKNOWN_ROLE)
            raise ProviderError(
                "no provider plugins are loaded in this server", code=Code.PROVIDER_UNAVAILABLE
            )
        return await run_role(self.calls, self.prompts, request, caller, self.quality)

    async def check_budget(self, query: BudgetQuery) -> BudgetReport:
        return await budgets.check_budget(self.policy, self.store, query)

    async def escalate(self, request: EscalateRequest) -> EscalateResult:
        return await escalation.run_escalation(self.policy, self.store, request)

    async def preview_escalation(self, request: EscalateRequest) -> tuple[str, str] | None:
        """(from, to) when an escalation would happen and the role demands consent."""
        return await escalation.preview(self.policy, self.store, request)

    async def consent_needed(
        self, role: str, job: str | None, local_only: bool, decision_id: str | None
    ) -> tuple[str, list[str]] | None:
        """(primary, allowed alternates in order) when ``role`` asks before falling back and
        its model is down: what the up-front consent question names."""
        role_def = self.policy.doc.roles.get(role)
        if role_def is None or role_def.fallback.mode != "ask" or self.probes is None:
            return None
        try:
            limits = await resolve_constraints(
                self.policy,
                self.store,
                role=role,
                job=job,
                channel=None,
                decision_id=decision_id,
                local_only=local_only,
                max_output_tokens=None,
            )
        except RolegateError:
            return None  # the tool body reports it
        return await consent_needed(self.policy, self.store, self.probes, limits)

    def roles_overview(self) -> dict[str, Any]:
        return roles_overview(self.policy)

    async def task_view(self, task_id: str) -> dict[str, Any] | None:
        check_name(task_id, "task_id")
        return await self.store.task_view(task_id)
