"""The declared fallback chain, walked in order: no silent switch, no step unchecked.

When the running model fails (or cannot be loaded: MODEL_COLD, MEMORY_EXCEEDED, LOAD_TIMEOUT,
LOAD_FAILED) with a code the role's ``fallback.on`` names, the next declared
model is tried, then the next, until one answers or the chain ends. Every step is held to
the run's constraints again (premium and escalation-only models are never fallbacks;
local_only, allowlist, capabilities, then context + reserve and budgets at admission), every
switch and every refused step is audited, and where the chain says ``mode: ask`` the user
consents per step: up front (the consent question names the allowed alternates in order) or
mid-call, else the run is refused with NEEDS_CONSENT naming the model.
"""

from __future__ import annotations

from rolegate.engine.accounting import Call
from rolegate.engine.calls import CallRunner
from rolegate.engine.consent import allowed_steps, ask_consent, declared_steps, static_refusal
from rolegate.engine.constraints import Constraints
from rolegate.engine.requests import Caller, Consent
from rolegate.engine.results import FallbackInfo, FallbackStep
from rolegate.errors import Code, ProviderError, RefusedError, RolegateError
from rolegate.logs import get_logger
from rolegate.plugins.base import ChatResult, Message
from rolegate.policy.compiled import ModelInfo

log = get_logger()


async def call_with_fallback(
    runner: CallRunner,
    limits: Constraints,
    info: ModelInfo,
    chat: list[Message],
    *,
    context: dict[str, object],
    caller: Caller,
    consent: Consent | None,
) -> tuple[Call, ChatResult, FallbackInfo | None]:
    fallback = runner.policy.doc.roles[limits.role].fallback
    try:
        call = await runner.admit(info, chat, limits)
    except RefusedError as exc:  # a COLD model, or no memory to load it: where `on` says so
        if str(exc.code) not in fallback.on:
            raise
        first: ProviderError | RefusedError = exc
    else:
        call.context.update(context, attempt=1)
        try:
            return call, await runner.invoke(call, chat, limits, caller), None
        except (ProviderError, RefusedError) as exc:
            if isinstance(exc, RefusedError) and str(exc.code) not in fallback.on:
                raise
            first = exc
    steps = declared_steps(runner.policy, limits.role, info.id)
    if str(first.code) not in fallback.on or not steps:
        raise first
    walk = _Walk(runner, limits, info, first, consent)
    for mid in steps:
        step_info = runner.policy.models[mid]
        if not await walk.allowed(step_info):
            continue
        # Every rule first (context + reserve, budgets), then consent, then the reservation:
        # nobody is asked about, and no switch is recorded to, a step that is refused.
        try:
            call = await runner.check(step_info, chat, limits)
        except RefusedError as exc:
            await walk.refused(step_info, exc.code, exc.message)
            continue
        await walk.approve(step_info, caller)
        try:
            await runner.reserve(call, limits)
        except RefusedError as exc:
            await walk.refused(step_info, exc.code, exc.message)
            continue
        call.context.update(context, attempt=1, fallback_from=info.id)
        try:
            result = await runner.invoke(call, chat, limits, caller)
        except (ProviderError, RefusedError) as exc:
            if str(exc.code) not in fallback.on:
                raise
            walk.failed(step_info, exc)
            continue
        return call, result, walk.done(step_info)
    raise walk.exhausted()


class _Walk:
    """The state of one walk down the chain: where it is, what happened at each step."""

    def __init__(
        self,
        runner: CallRunner,
        limits: Constraints,
        primary: ModelInfo,
        failure: ProviderError | RefusedError,
        consent: Consent | None,
    ) -> None:
        self.policy = runner.policy
        self.store = runner.store
        self.limits = limits
        self.primary = primary
        self.reason = str(failure.code)
        self.current = primary
        self.failure: ProviderError | RefusedError = failure  # why the current model is being left
        self.last: RolegateError = failure  # what ended the last step, for an exhausted chain
        self.consent = consent
        self.how = "auto"
        self.path = [FallbackStep(model=primary.id, code=str(failure.code), outcome="failed")]
        # What an up-front answer covers: the alternates its question named, in order.
        self.upfront = allowed_steps(self.policy, limits, primary.id)

    async def allowed(self, info: ModelInfo) -> bool:
        rejection = static_refusal(self.policy, self.limits, info)
        if rejection is None:
            return True
        await self.refused(info, rejection.code, f"{info.id} {rejection.reason}")
        return False

    async def refused(self, info: ModelInfo, code: str, message: str) -> None:
        self.path.append(FallbackStep(model=info.id, code=code, outcome="refused"))
        self.last = RefusedError(message, code=Code(code))
        await self.store.audit(self._record("fallback_refused", info, code, None))

    def failed(self, info: ModelInfo, exc: ProviderError | RefusedError) -> None:
        self.path.append(FallbackStep(model=info.id, code=str(exc.code), outcome="failed"))
        self.current, self.failure, self.last = info, exc, exc

    async def approve(self, info: ModelInfo, caller: Caller) -> None:
        """Consent for this step where the chain asks, or raise NEEDS_CONSENT."""
        mode = self.policy.doc.roles[self.limits.role].fallback.mode
        if mode == "auto":
            self.how = "auto"
        elif self.consent is not None and self.consent.asked and info.id in self.upfront:
            if not self.consent.granted:
                raise self._needs_consent(info, "the user declined")
            self.how = "user"
        else:
            why = str(self.failure.code)
            granted = await ask_consent(
                self.policy, self.store, caller, self.current.id, info.id, why
            )
            if granted is not True:
                reason = "the user declined" if granted is False else "this client cannot be asked"
                raise self._needs_consent(info, reason)
            self.how = "user"
        log.warning(
            "fallback",
            role=self.limits.role,
            from_model=self.current.id,
            to_model=info.id,
            reason=str(self.failure.code),
            consent=self.how,
            policy_hash=self.policy.hash,
        )
        code = str(self.failure.code)
        await self.store.audit(self._record("fallback", self.current, code, info))

    def done(self, info: ModelInfo) -> FallbackInfo:
        self.path.append(FallbackStep(model=info.id, code="OK", outcome="ok", consent=self.how))
        return FallbackInfo(
            from_model=self.primary.id,
            to_model=info.id,
            reason=self.reason,
            consent=self.how,
            path=self.path,
        )

    def exhausted(self) -> RolegateError:
        trail = ", ".join(f"{s.model} {s.code}" for s in self.path)
        message = f"{self.last.message} (declared fallback chain exhausted: {trail})"
        if isinstance(self.last, ProviderError):
            return ProviderError(message, code=self.last.code)
        return RefusedError(message, code=self.last.code)

    def _needs_consent(self, info: ModelInfo, reason: str) -> RefusedError:
        return RefusedError(
            f"{self.current.id} failed ({self.failure}) and the policy says ask before "
            f"switching to {info.id}; {reason}. Retry after consenting to {info.id}, or wait "
            f"for {self.current.id}",
            code=Code.NEEDS_CONSENT,
        )

    def _record(
        self, kind: str, info: ModelInfo, code: str, to: ModelInfo | None
    ) -> dict[str, object]:
        return {
            "kind": kind,
            "role": self.limits.role,
            "job": self.limits.job,
            "decision_id": self.limits.decision_id,
            "model": info.id,
            "to_model": to.id if to else None,
            "code": code,
            "consent": self.how if to else None,
            "policy_hash": self.policy.hash,
        }
