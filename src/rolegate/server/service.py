"""What the four tools do, independent of MCP: route, check budget, escalate, run."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from rolegate.errors import (
    Code,
    LedgerError,
    ProviderError,
    RefusedError,
    RequestError,
    RolegateError,
)
from rolegate.ledger.base import Ledger, WorkStore
from rolegate.ledger.memory import MemoryWork
from rolegate.policy import BudgetSnapshot, Decision, Policy, RouteRequest, route
from rolegate.policy.budget import utcnow
from rolegate.policy.decision import NO_USAGE, PolicyRef, Risk
from rolegate.policy.escalation import EscalationDecision, EscalationRequest, escalate
from rolegate.policy.limits import SignalValue, check_count, check_name
from rolegate.policy.router import check_model
from rolegate.server.budget_report import call_check, scope_report
from rolegate.server.models import (
    BudgetReport,
    EscalateResult,
    RouteResult,
    RunResult,
)
from rolegate.server.spool import Spool, spool_dir_for

PROBE_TTL_S = 2.0
CLAIM_LEASE_MARGIN_S = 60.0


def consent_message(failed: str, alternate: str, reason: str) -> str:
    return (
        f"{failed} is unavailable ({reason}). The policy says to ask before switching. "
        f"Run this on {alternate} instead?"
    )


def _can_elicit_now(ctx: Any) -> bool:
    caps = getattr(ctx, "client_capabilities", None)
    version = str(getattr(ctx, "protocol_version", "") or "")
    # The 2026-07-28 era has no server-to-client requests; consent is asked up front there.
    return caps is not None and caps.elicitation is not None and not version.startswith("2026")


class UsageLike(Protocol):
    description: str

    def snapshot(self, policy: Policy, now: datetime) -> BudgetSnapshot: ...


class UsageSource:
    """Where spent/reserved amounts come from. The base reports no usage at all."""

    description = "none (no ledger configured; spend is not counted)"

    def snapshot(self, policy: Policy, now: datetime) -> BudgetSnapshot:
        return BudgetSnapshot()


if TYPE_CHECKING:
    from rolegate.server.run import Consent


class RunnerLike(Protocol):
    async def run(self, service: Rolegate, **kwargs: Any) -> RunResult: ...

    async def probe(self, model: str) -> bool: ...


class Rolegate:
    """The server's state: the active policy, the ledger (usage, decisions, tasks), the clock."""

    def __init__(
        self,
        policy: Policy,
        *,
        usage: UsageLike | None = None,
        clock: Callable[[], datetime] = utcnow,
        runner: RunnerLike | None = None,
        ledger: Ledger | None = None,
        role_prompts: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self.usage: UsageLike = usage or UsageSource()
        self.clock = clock
        self.runner = runner
        self.ledger = ledger
        # Decisions and task state live in the ledger, shared by every process that opens
        # it; a server with no ledger keeps them in memory.
        self.work: WorkStore = ledger if ledger is not None else MemoryWork()
        self.spool: Spool | None = None
        if ledger is not None:
            self.usage = ledger
            self.spool = Spool(spool_dir_for(ledger))
        self.role_prompts = dict(role_prompts or {})
        self._probe_cache: dict[str, tuple[float, bool]] = {}
        self.last_sweep = 0.0  # monotonic time the ledger was last swept of dead reservations

    @property
    def policy_ref(self) -> PolicyRef:
        p = self.policy
        return PolicyRef(name=p.name, revision=p.revision, hash=p.hash)

    async def snapshot(self) -> BudgetSnapshot:
        """Usage per budget line, read off the event loop (a ledger read may wait on I/O)."""
        if not self.policy.budgets:
            return NO_USAGE
        usage, now = self.usage, self.clock()
        return await anyio.to_thread.run_sync(lambda: usage.snapshot(self.policy, now))

    async def _work(self, fn: Callable[..., Any], /, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(**kwargs))

    # -- route_task ---------------------------------------------------------
    async def route_task(self, request: RouteRequest) -> RouteResult:
        """The router's decision, stored under a decision_id (usable from any process on the
        same ledger) and audited in the same transaction (ids, no text)."""
        decision = route(request, self.policy, await self.snapshot())
        decision_id = "dec_" + uuid.uuid4().hex
        audit = {
            "kind": "decision",
            "decision_id": decision_id,
            "outcome": decision.outcome,
            "code": decision.code,
            "intent": decision.intent,
            "job": decision.job,
            "role": decision.role,
            "model": decision.model,
            "input_tokens": decision.tokens.input_tokens if decision.tokens else None,
            "policy_hash": self.policy.hash,
        }
        await self._work(
            self.work.put_decision,
            decision_id=decision_id,
            record=decision.model_dump(mode="json"),
            now=self.clock(),
            audit=audit if self.ledger is not None else None,
        )
        # The decision was validated when the router built it: no second validation.
        fields = {name: getattr(decision, name) for name in type(decision).model_fields}
        return RouteResult.model_construct(decision_id=decision_id, **fields)

    async def decision(self, decision_id: str) -> Decision:
        found = await self._work(self.work.get_decision, decision_id=decision_id)
        if found is None:
            raise RequestError(
                f"unknown decision_id {decision_id!r}; route the task again with route_task",
                code=Code.UNKNOWN_DECISION,
            )
        decision = Decision.model_validate(found)
        if decision.policy.hash != self.policy.hash:
            raise RequestError(
                f"decision {decision_id} was made under another policy "
                f"({decision.policy.hash}); route the task again",
                code=Code.UNKNOWN_DECISION,
            )
        return decision

    # -- tasks --------------------------------------------------------------
    async def current_model(self, task_id: str, role: str) -> str | None:
        found: str | None = await self._work(self.work.current_model, task_id=task_id, role=role)
        return found

    async def escalation_step(self, task_id: str, role: str) -> int:
        step: int = await self._work(self.work.escalation_step, task_id=task_id, role=role)
        return step

    async def was_escalated(self, task_id: str) -> bool:
        found: bool = await self._work(self.work.was_escalated, task_id=task_id)
        return found

    async def claim_stage(
        self, task_id: str | None, stage: str | None, role: str, model: str
    ) -> str | None:
        """Claim the stage's one authoritative output before any provider call, or raise
        CONSENSUS_FORBIDDEN; returns the claim id (None: nothing to claim)."""
        authority = self.policy.doc.roles[role].authority
        if task_id is None or stage is None or authority == "sidecar":
            return None
        declared = self.policy.stages.get(stage)
        if declared is not None and declared.owner != role:
            raise RefusedError(
                f"stage {stage!r} is owned by role {declared.owner!r}; role {role!r} "
                "cannot write it (one owner per stage; no consensus)",
                code=Code.CONSENSUS_FORBIDDEN,
            )
        claim = "claim_" + uuid.uuid4().hex
        await self._work(
            self.work.claim_stage,
            task_id=task_id,
            stage=stage,
            role=role,
            model=model,
            request_id=claim,
            now=self.clock(),
            lease_s=self._claim_lease(role),
        )
        return claim

    def _claim_lease(self, role: str) -> float:
        """Long enough for the whole run: every declared model's timeout, plus a margin."""
        role_def = self.policy.doc.roles[role]
        total = CLAIM_LEASE_MARGIN_S
        for mid in (role_def.model, *role_def.fallback.models):
            model = self.policy.doc.models[mid]
            total += model.timeout_s or self.policy.doc.providers[model.provider].timeout_s
        return total

    async def release_stage(
        self, task_id: str | None, stage: str | None, claim: str | None
    ) -> None:
        if task_id is None or stage is None or claim is None:
            return
        # If the ledger cannot take it, the claim's lease expires on its own.
        with anyio.CancelScope(shield=True), contextlib.suppress(LedgerError):
            await self._work(
                self.work.release_stage, task_id=task_id, stage=stage, request_id=claim
            )

    async def record_run(
        self,
        task_id: str,
        stage: str | None,
        role: str,
        authority: str,
        model: str,
        request_id: str,
        *,
        claim: str | None,
        contract_valid: bool | None,
    ) -> None:
        now = self.clock()
        if authority == "sidecar":
            await self._work(
                self.work.record_critique,
                task_id=task_id,
                stage=stage,
                role=role,
                model=model,
                request_id=request_id,
                contract_valid=contract_valid,
                now=now,
            )
        elif stage is not None and claim is not None:
            await self._work(
                self.work.finish_stage,
                task_id=task_id,
                stage=stage,
                request_id=claim,
                output_request_id=request_id,
                role=role,
                model=model,
                authority=authority,
                contract_valid=contract_valid,
                now=now,
            )

    # -- check_budget -------------------------------------------------------
    async def check_budget(self, **kwargs: Any) -> BudgetReport:
        """``budget_report`` off the event loop (it reads the ledger)."""
        return await anyio.to_thread.run_sync(lambda: self.budget_report(**kwargs))

    def budget_report(
        self,
        *,
        job: str | None = None,
        role: str | None = None,
        model: str | None = None,
        text: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> BudgetReport:
        doc = self.policy.doc
        for value, what in ((job, "job"), (role, "role"), (model, "model")):
            check_name(value, what)
        check_count(input_tokens, "input_tokens")
        check_count(output_tokens, "output_tokens")
        if job is not None and job not in doc.jobs:
            raise RequestError(f"unknown job {job!r}", code=Code.UNKNOWN_JOB)
        if role is not None and role not in doc.roles:
            raise RequestError(f"unknown role {role!r}", code=Code.UNKNOWN_ROLE)
        if model is not None and model not in doc.models:
            raise RequestError(
                f"unknown model {model!r}; the policy defines {sorted(doc.models)}",
                code=Code.UNKNOWN_MODEL,
            )
        if text is not None and input_tokens is not None:
            raise RequestError("give text or input_tokens, not both", code=Code.INVALID_ARGUMENT)
        now = self.clock()
        snapshot = self.usage.snapshot(self.policy, now)
        scopes = [scope_report(line, now, snapshot) for line in self.policy.budgets]
        check = None
        if text is not None or input_tokens is not None or model or role or job:
            check = call_check(
                self.policy, job, role, model, text, input_tokens, output_tokens, snapshot
            )
        return BudgetReport(
            policy=self.policy_ref, ledger=self.usage.description, scopes=scopes, check=check
        )

    # -- escalate -----------------------------------------------------------
    async def _escalation(
        self,
        role: str,
        signals: Mapping[str, SignalValue],
        job: str | None,
        task_id: str | None,
        local_only: bool = False,
    ) -> EscalationDecision:
        check_name(role, "role")
        check_name(job, "job")
        check_name(task_id, "task_id")
        current_step = await self.escalation_step(task_id, role) if task_id else 0
        return escalate(
            EscalationRequest(
                role=role,
                signals=signals,
                job=job,
                local_only=local_only,
                current_step=current_step,
            ),
            self.policy,
            await self.snapshot(),
        )

    async def preview_escalation(
        self,
        role: str,
        signals: Mapping[str, SignalValue],
        *,
        job: str | None,
        task_id: str | None,
        local_only: bool = False,
    ) -> tuple[str, str] | None:
        """(from, to) when an escalation would happen and the role demands consent."""
        role_def = self.policy.doc.roles.get(role)
        if role_def is None or not role_def.escalation.consent:
            return None
        try:
            decision = await self._escalation(role, signals, job, task_id, local_only)
        except RequestError:
            return None  # the tool body reports it
        if not decision.escalate or decision.from_model is None or decision.to_model is None:
            return None
        return decision.from_model, decision.to_model

    async def escalate(
        self,
        role: str,
        signals: Mapping[str, SignalValue],
        *,
        job: str | None = None,
        task_id: str | None = None,
        reason: str | None = None,
        local_only: bool = False,
        consent: Consent | None = None,
    ) -> EscalateResult:
        decision = await self._escalation(role, signals, job, task_id, local_only)
        provenance_id = "esc_" + uuid.uuid4().hex
        answer: str | None = None
        if decision.escalate and decision.consent_required:
            answer = (
                "not_asked" if consent is None else ("granted" if consent.granted else "declined")
            )
            if answer != "granted":
                why = "the user declined" if answer == "declined" else "this client cannot be asked"
                decision = decision.model_copy(
                    update={
                        "escalate": False,
                        "code": Code.NEEDS_CONSENT,
                        "message": f"escalating {role} to {decision.to_model} needs the user's "
                        f"consent; {why}",
                    }
                )
        if decision.escalate and decision.step is not None and task_id:
            recorded = await self._work(
                self.work.record_escalation,
                task_id=task_id,
                role=role,
                step=decision.step,
                provenance_id=provenance_id,
                from_model=decision.from_model,
                to_model=decision.to_model,
                fired=[f.signal for f in decision.fired],
                policy_hash=self.policy.hash,
                consent=answer,
                now=self.clock(),
            )
            if not recorded:
                raise RefusedError(
                    f"task {task_id!r}: role {role!r} was escalated by another call at the same "
                    "moment; read rolegate://tasks/{task_id} and escalate again if still needed",
                    code=Code.CONSENSUS_FORBIDDEN,
                )
        await self.audit(
            {
                "kind": "escalation",
                "request_id": provenance_id,
                "task_id": task_id,
                "role": role,
                "model": decision.from_model,
                "to_model": decision.to_model,
                "code": decision.code,
                "policy_hash": self.policy.hash,
                "consent": answer,
                "fired": ",".join(f.signal for f in decision.fired),
            }
        )
        return EscalateResult(provenance_id=provenance_id, consent=answer, **decision.model_dump())

    # -- run_role -----------------------------------------------------------
    async def run_role(self, **kwargs: Any) -> RunResult:
        if self.runner is None:
            role = kwargs.get("role")
            if role not in self.policy.doc.roles:
                raise RequestError(f"unknown role {role!r}", code=Code.UNKNOWN_ROLE)
            raise ProviderError(
                "no provider plugins are loaded in this server", code=Code.PROVIDER_UNAVAILABLE
            )
        return await self.runner.run(self, **kwargs)

    def default_system_prompt(self, role: str) -> str | None:
        """The role kind's prompt (critic, judge) when the caller gives none."""
        authority = self.policy.doc.roles[role].authority
        kind = {"sidecar": "critic", "judge": "judge"}.get(authority)
        return self.role_prompts.get(kind) if kind else None

    async def audit(self, record: Mapping[str, object]) -> None:
        """Append an audit record; the durable write runs in a worker thread, off the loop."""
        ledger = self.ledger
        if ledger is not None:
            await anyio.to_thread.run_sync(ledger.audit, record)

    async def ask_consent(self, ctx: Any, failed: str, alternate: str, reason: str) -> bool | None:
        """Ask mid-call through ctx.elicit (handshake era only); None when the client can't."""
        if ctx is None or not _can_elicit_now(ctx):
            return None
        from rolegate.server.consent import ConsentForm, elicit_consent

        answer = await elicit_consent(ctx, consent_message(failed, alternate, reason), ConsentForm)
        await self.audit(
            {
                "kind": "consent",
                "model": failed,
                "to_model": alternate,
                "code": "GRANTED" if answer else "DECLINED",
                "policy_hash": self.policy.hash,
            }
        )
        return answer

    async def consent_needed(
        self, role: str, job: str | None, local_only: bool, decision_id: str | None
    ) -> tuple[str, list[str]] | None:
        """(primary, allowed alternates in order) when ``role`` asks before falling back and
        its model is down: what the up-front consent question names."""
        role_def = self.policy.doc.roles.get(role)
        if role_def is None or role_def.fallback.mode != "ask" or not role_def.fallback.models:
            return None
        if self.runner is None:
            return None
        from rolegate.server.fallback import allowed_steps
        from rolegate.server.run import resolve_constraints

        try:
            limits = await resolve_constraints(
                self,
                role=role,
                job=job,
                channel=None,
                decision_id=decision_id,
                local_only=local_only,
                max_output_tokens=None,
            )
        except RolegateError:
            return None  # the tool body reports it
        primary = limits.decision_model or role_def.model
        info = self.policy.models[primary]
        # Never probe a server the run may not use (local_only, allowlist, capabilities,
        # budgets): admission refuses it without contacting it, and so must this.
        refusal = check_model(
            info,
            policy=self.policy,
            job_name=limits.job,
            role=role,
            local_only=limits.local_only,
            input_tokens=0,
            max_output=limits.max_output,
            snapshot=await self.snapshot(),
            needs=limits.needs,
        )
        if refusal is not None:
            return None
        alternates = allowed_steps(self.policy, limits, primary)
        if not alternates:
            return None
        now = time.monotonic()
        cached = self._probe_cache.get(primary)
        if cached is not None and now - cached[0] < PROBE_TTL_S:
            up = cached[1]
        else:
            up = await self.runner.probe(primary)
            self._probe_cache[primary] = (now, up)
        return None if up else (primary, alternates)

    # -- resources ----------------------------------------------------------
    def roles_overview(self) -> dict[str, Any]:
        doc = self.policy.doc
        models = {
            mid: {
                "provider": info.model.provider,
                "provider_model": info.model.name,
                "locality": info.locality,
                "context_window": info.model.context_window,
                "reserve_tokens": info.model.reserve_tokens,
                "max_input_tokens": info.max_input_tokens,
                "premium": info.model.premium,
                "escalation_only": info.model.escalation_only,
                "capabilities": sorted(info.capabilities),
                "price_per_mtok": {
                    "input": str(info.model.price.input_per_mtok),
                    "output": str(info.model.price.output_per_mtok),
                },
            }
            for mid, info in sorted(self.policy.models.items())
        }
        roles = {
            rid: {
                "model": role.model,
                "authority": role.authority,
                "fallback": list(role.fallback.models),
                "fallback_mode": role.fallback.mode,
                "escalation_ladder": list(role.escalation.ladder),
                "output_contract": role.output_contract,
            }
            for rid, role in sorted(doc.roles.items())
        }
        return {"policy_hash": self.policy.hash, "roles": roles, "models": models}

    async def task_view(self, task_id: str) -> dict[str, Any] | None:
        check_name(task_id, "task_id")
        view: dict[str, Any] | None = await self._work(self.work.task_view, task_id=task_id)
        return view

    @staticmethod
    def route_request(
        task: str,
        *,
        job: str | None = None,
        role: str | None = None,
        channel: str | None = None,
        context_tokens: int | None = None,
        needs: list[str] | None = None,
        local_only: bool = False,
        risk: Risk | None = None,
        max_output_tokens: int | None = None,
        input_tokens: int | None = None,
    ) -> RouteRequest:
        return RouteRequest(
            task=task,
            job=job,
            role=role,
            channel=channel,
            context_tokens=context_tokens,
            needs=tuple(needs or ()),
            local_only=local_only,
            risk=risk,
            max_output_tokens=max_output_tokens,
            input_tokens=input_tokens,
        )
