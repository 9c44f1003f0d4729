"""What the four tools do, independent of MCP: route, check budget, escalate, run."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from rolegate.errors import Code, ProviderError, RefusedError, RequestError
from rolegate.ledger.base import Ledger
from rolegate.policy import BudgetSnapshot, Decision, Policy, RouteRequest, route
from rolegate.policy.decision import PolicyRef, Risk
from rolegate.policy.escalation import (
    EscalationDecision,
    EscalationRequest,
    SignalValue,
    escalate,
)
from rolegate.server.budget_report import call_check, scope_report
from rolegate.server.models import (
    BudgetReport,
    EscalateResult,
    RouteResult,
    RunResult,
)
from rolegate.server.tasks import TaskStore
from rolegate.server.windows import utcnow

MAX_REMEMBERED_DECISIONS = 10_000
PROBE_TTL_S = 2.0


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
    """The server's state: the active policy, recent decisions, usage and the clock."""

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
        self._decisions: OrderedDict[str, Decision] = OrderedDict()
        self.tasks = TaskStore()
        self.runner = runner
        self.ledger = ledger
        if ledger is not None:
            self.usage = ledger
        self.role_prompts = dict(role_prompts or {})
        self._probe_cache: dict[str, tuple[float, bool]] = {}
        self.last_sweep = 0.0  # monotonic time the ledger was last swept of dead reservations

    @property
    def policy_ref(self) -> PolicyRef:
        p = self.policy
        return PolicyRef(name=p.name, revision=p.revision, hash=p.hash)

    def snapshot(self) -> BudgetSnapshot:
        return self.usage.snapshot(self.policy, self.clock())

    # -- route_task ---------------------------------------------------------
    async def route_task(self, request: RouteRequest) -> RouteResult:
        """The router's decision, remembered under a decision_id and audited (ids, no text)."""
        decision = route(request, self.policy, self.snapshot())
        decision_id = "dec_" + uuid.uuid4().hex
        self._decisions[decision_id] = decision
        while len(self._decisions) > MAX_REMEMBERED_DECISIONS:
            self._decisions.popitem(last=False)
        await self.audit(
            {
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
        )
        return RouteResult(decision_id=decision_id, **decision.model_dump())

    def decision(self, decision_id: str) -> Decision:
        found = self._decisions.get(decision_id)
        if found is None:
            raise RequestError(
                f"unknown decision_id {decision_id!r}; route the task again with route_task",
                code=Code.UNKNOWN_DECISION,
            )
        return found

    # -- check_budget -------------------------------------------------------
    def check_budget(
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
        for value, name in ((input_tokens, "input_tokens"), (output_tokens, "output_tokens")):
            if value is not None and value < 0:
                raise RequestError(f"{name} must be >= 0", code=Code.INVALID_ARGUMENT)
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
    def _escalation(
        self,
        role: str,
        signals: Mapping[str, SignalValue],
        job: str | None,
        task_id: str | None,
        local_only: bool = False,
    ) -> EscalationDecision:
        current_step = self.tasks.escalation_step(task_id, role) if task_id else 0
        return escalate(
            EscalationRequest(
                role=role,
                signals=signals,
                job=job,
                local_only=local_only,
                current_step=current_step,
            ),
            self.policy,
            self.snapshot(),
        )

    def preview_escalation(
        self,
        role: str,
        signals: Mapping[str, SignalValue],
        *,
        job: str | None,
        task_id: str | None,
    ) -> tuple[str, str] | None:
        """(from, to) when an escalation would happen and the role demands consent."""
        role_def = self.policy.doc.roles.get(role)
        if role_def is None or not role_def.escalation.consent:
            return None
        try:
            decision = self._escalation(role, signals, job, task_id)
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
        decision = self._escalation(role, signals, job, task_id, local_only)
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
            self.tasks.record_escalation(
                task_id, role, decision.step, provenance_id, decision, consent=answer
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

    def check_owner(self, task_id: str, stage: str, role: str, model: str) -> None:
        """One authoritative output per stage; a second only through an escalation."""
        authority = self.policy.doc.roles[role].authority
        if authority == "sidecar":
            return
        declared = self.policy.stages.get(stage)
        if declared is not None and declared.owner != role:
            raise RefusedError(
                f"stage {stage!r} is owned by role {declared.owner!r}; role {role!r} "
                "cannot write it (one owner per stage; no consensus)",
                code=Code.CONSENSUS_FORBIDDEN,
            )
        current = self.tasks.stage_owner(task_id, stage)
        if current is not None and current["model"] == model:
            raise RefusedError(
                f"stage {stage!r} of task {task_id!r} already has its owner output (from "
                f"{current['model']}); a second authoritative run needs an escalation first",
                code=Code.CONSENSUS_FORBIDDEN,
            )

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

    async def consent_needed(self, role: str, job: str | None) -> tuple[str, str] | None:
        """(primary, alternate) when ``role`` asks before falling back and its model is down."""
        role_def = self.policy.doc.roles.get(role)
        if role_def is None or role_def.fallback.mode != "ask" or not role_def.fallback.models:
            return None
        if self.runner is None or (job is not None and job not in self.policy.doc.jobs):
            return None
        if (
            self.policy.is_local_only(job)
            and self.policy.models[role_def.model].locality == "cloud"
        ):
            return None  # never probe a cloud server under local_only
        now = time.monotonic()
        cached = self._probe_cache.get(role_def.model)
        if cached is not None and now - cached[0] < PROBE_TTL_S:
            up = cached[1]
        else:
            up = await self.runner.probe(role_def.model)
            self._probe_cache[role_def.model] = (now, up)
        return None if up else (role_def.model, role_def.fallback.models[0])

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

    def task_view(self, task_id: str) -> dict[str, Any] | None:
        return self.tasks.view(task_id)

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
