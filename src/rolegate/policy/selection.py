"""Which model may take a call: the per-model checks, and the walk down the cost order.

Pure and deterministic, like the router that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rolegate.errors import Code
from rolegate.policy.budget import overrun
from rolegate.policy.compiled import ModelInfo, Policy
from rolegate.policy.decision import BudgetSnapshot, Rejection

# Checks run in this order; a refusal reports the candidate that got furthest.
_STAGES = (
    Code.NO_SUFFICIENT_MODEL,
    Code.MODEL_COLD,
    Code.NO_POLICY,
    Code.LOCAL_ONLY_VIOLATION,
    Code.NOT_ALLOWLISTED,
    Code.OVER_BUDGET,
    Code.BUDGET_EXHAUSTED,
)
_STAGE_OF = {code: stage for stage, code in enumerate(_STAGES)}


class Refusal:
    """Why one model may not take a call; ``stage`` orders how far it got."""

    __slots__ = ("code", "reason", "stage")

    def __init__(self, code: Code, reason: str) -> None:
        self.code = code
        self.reason = reason
        self.stage = _STAGE_OF[code]

    def sentence(self, model_id: str) -> str:
        """The refusal as a sentence about ``model_id`` (OVER_BUDGET already names it)."""
        return self.reason if self.code == Code.OVER_BUDGET else f"{model_id} {self.reason}"


def _missing(needs: frozenset[str], capabilities: frozenset[str]) -> str:
    return "lacks capabilities: " + ", ".join(sorted(needs - capabilities))


def _refusal(
    info: ModelInfo,
    policy: Policy,
    job_name: str | None,
    role: str | None,
    local_only: bool,
    input_tokens: int,
    max_output: int,
    snapshot: BudgetSnapshot,
    needs: frozenset[str],
) -> tuple[Code, str] | None:
    """``check_model``'s answer as a (code, reason) pair: no object unless refused."""
    model = info.model
    if not needs <= info.capabilities:
        return Code.NO_SUFFICIENT_MODEL, _missing(needs, info.capabilities)
    if info.max_input_tokens is None:
        return (
            Code.NO_POLICY,
            "has no context policy (context_window + reserve_tokens): fail closed",
        )
    if local_only and info.locality == "cloud":
        return Code.LOCAL_ONLY_VIOLATION, "is a cloud model and local_only is in force"
    if model.premium:
        job = policy.doc.jobs.get(job_name) if job_name else None
        if job is None or info.id not in job.premium_allowlist:
            who = f"job {job_name!r}" if job_name else "a request with no job"
            return Code.NOT_ALLOWLISTED, f"is premium and not on the allowlist of {who}"
    if input_tokens > info.max_input_tokens:
        return (
            Code.OVER_BUDGET,
            f"input is {input_tokens:,} tokens; {info.id} accepts {info.max_input_tokens:,} "
            f"({model.context_window:,} window - {model.reserve_tokens:,} reserve)",
        )
    window = model.context_window or 0
    if input_tokens + max_output > window:
        return (
            Code.OVER_BUDGET,
            f"input of {input_tokens:,} tokens plus an output cap of {max_output:,} exceeds "
            f"{info.id}'s {window:,}-token window; lower max_output_tokens",
        )
    if policy.budgets:
        cost = info.worst_case_cost_micro(input_tokens, max_output)
        tokens = input_tokens + max_output
        for line in policy.budgets_touching(
            job=job_name, role=role, model=info.id, provider=model.provider
        ):
            over = overrun(line, snapshot.get(line.id), cost_micro=cost, tokens=tokens)
            if over is not None:
                return (
                    Code.BUDGET_EXHAUSTED,
                    f"budget {line.id} has {over.what} (including open reservations); {over.need}",
                )
    return None


def check_model(
    info: ModelInfo,
    *,
    policy: Policy,
    job_name: str | None,
    role: str | None,
    local_only: bool,
    input_tokens: int,
    max_output: int,
    snapshot: BudgetSnapshot,
    needs: frozenset[str] = frozenset(),
) -> Refusal | None:
    """Every policy check one model must pass for one call, in a fixed order."""
    found = _refusal(
        info, policy, job_name, role, local_only, input_tokens, max_output, snapshot, needs
    )
    return None if found is None else Refusal(*found)


def fallback_refusal(
    policy: Policy,
    info: ModelInfo,
    *,
    job: str | None,
    role: str | None,
    local_only: bool,
    needs: frozenset[str],
    input_tokens: int,
    max_output: int,
    snapshot: BudgetSnapshot,
) -> Rejection | None:
    """Why ``info`` may not serve as a fallback step under these constraints, or None.

    Premium and escalation-only models are never fallbacks (``check`` refuses such chains;
    this holds even for a policy built without it); every other rule is ``check_model``'s.
    """
    if info.model.escalation_only:
        reason = "is escalation-only: reached only through an escalation ladder, never a fallback"
        return Rejection(model=info.id, code=Code.FALLBACK_FORBIDDEN, reason=reason)
    if info.model.premium:
        reason = "is premium: premium models are explicit and allowlisted, never a fallback"
        return Rejection(model=info.id, code=Code.FALLBACK_FORBIDDEN, reason=reason)
    found = _refusal(info, policy, job, role, local_only, input_tokens, max_output, snapshot, needs)
    if found is None:
        return None
    return Rejection(model=info.id, code=found[0], reason=found[1])


def role_for(policy: Policy, model_id: str) -> str | None:
    """The first role (by name) that runs ``model_id``, if any."""
    roles = policy.roles_by_model.get(model_id)
    return roles[0] if roles else None


@dataclass(frozen=True, slots=True)
class Selection:
    """The first candidate that passed, the ones refused before it, and the furthest refusal.

    ``rejected`` holds plain dicts in the shape of ``Rejection``: the Decision validates
    them in one pass, at about half the cost of building each Rejection on its own, and a
    refusal can list every model of a large policy.
    """

    chosen: ModelInfo | None
    rejected: list[dict[str, str]]
    best: tuple[Refusal, ModelInfo] | None


def select_model(
    policy: Policy,
    candidates: Sequence[ModelInfo],
    *,
    job_name: str | None,
    role: str | None,
    local_only: bool,
    input_tokens: int,
    max_output: int,
    snapshot: BudgetSnapshot,
    needs: frozenset[str],
    unavailable: Mapping[str, tuple[Code, str]] | None = None,
) -> Selection:
    """Walk ``candidates`` in order and stop at the first that passes ``check_model``.

    Without a role each candidate is checked as the first role that runs it. Every
    candidate before the chosen one is listed as rejected, so the walk is as long as
    the list it reports; it does nothing else per candidate. ``unavailable``: models that
    cannot be reached now whatever the call (a COLD model not loaded), with why.
    """
    rejected: list[dict[str, str]] = []
    best: tuple[int, Code, str, ModelInfo] | None = None
    lacking: dict[frozenset[str], str] = {}  # models share a few capability sets
    for info in candidates:
        caps = info.capabilities
        if needs <= caps and unavailable and info.id in unavailable:
            code, reason = unavailable[info.id]
        elif needs <= caps:
            who = role or role_for(policy, info.id)
            found = _refusal(
                info, policy, job_name, who, local_only, input_tokens, max_output, snapshot, needs
            )
            if found is None:
                return Selection(info, rejected, _best(best))
            code, reason = found
        else:
            code = Code.NO_SUFFICIENT_MODEL
            reason = lacking.get(caps) or lacking.setdefault(caps, _missing(needs, caps))
        rejected.append({"model": info.id, "code": code, "reason": reason})
        stage = _STAGE_OF[code]
        if best is None or stage > best[0]:
            best = (stage, code, reason, info)
    return Selection(None, rejected, _best(best))


def _best(best: tuple[int, Code, str, ModelInfo] | None) -> tuple[Refusal, ModelInfo] | None:
    return None if best is None else (Refusal(best[1], best[2]), best[3])
