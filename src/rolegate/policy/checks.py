"""Cross-reference checks and lints over a schema-valid policy document.

Errors make the policy unusable (fail closed); warnings are printed by
``rolegate check`` but do not stop the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rolegate.errors import PolicyProblem
from rolegate.policy.schema import KNOWN_CAPABILITIES, Model, PolicyDocument


def model_locality(doc: PolicyDocument, model: Model) -> str:
    provider = doc.providers.get(model.provider)
    if model.locality is not None:
        return model.locality
    return provider.locality if provider is not None else "cloud"


def check_document(doc: PolicyDocument) -> list[PolicyProblem]:
    """Every problem in ``doc``: errors and warnings, in a stable order."""
    problems: list[PolicyProblem] = []
    problems += _check_models(doc)
    problems += _check_roles(doc)
    problems += _check_jobs(doc)
    problems += _check_intents(doc)
    problems += _check_budgets(doc)
    problems += _check_pipeline_and_risk(doc)
    problems += _check_defaults(doc)
    return problems


def _err(location: str, message: str) -> PolicyProblem:
    return PolicyProblem(location, message, "error")


def _warn(location: str, message: str) -> PolicyProblem:
    return PolicyProblem(location, message, "warning")


BUILTIN_PROVIDER_TYPES = frozenset({"ollama", "openai"})


def _check_models(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    for pid, prov in doc.providers.items():
        if prov.type not in BUILTIN_PROVIDER_TYPES:
            yield _warn(
                f"providers.{pid}.type",
                f"{prov.type!r} is not built in; the server starts only if a plugin "
                "provides it (see `rolegate plugins`)",
            )
    for mid, model in doc.models.items():
        at = f"models.{mid}"
        provider = doc.providers.get(model.provider)
        if provider is None:
            yield _err(f"{at}.provider", f"unknown provider {model.provider!r}")
        elif model.locality is not None and model.locality != provider.locality:
            yield _err(
                f"{at}.locality",
                f"model says {model.locality!r} but provider {model.provider!r} is "
                f"{provider.locality!r}",
            )
        if model.context_window is None or model.reserve_tokens is None:
            yield _warn(
                at,
                "no context policy (context_window and reserve_tokens): this model is never "
                "routed to",
            )
        elif model.reserve_tokens >= model.context_window:
            yield _err(
                f"{at}.reserve_tokens",
                f"reserve {model.reserve_tokens} leaves no input room in a "
                f"{model.context_window}-token window",
            )
        for cap in model.capabilities:
            if cap not in KNOWN_CAPABILITIES:
                yield _warn(f"{at}.capabilities", f"unrecognised capability {cap!r}")
        if doc.privacy.local_only and model_locality(doc, model) == "cloud":
            yield _warn(at, "cloud model in a local_only policy: it can never be used")
        for channel in model.streaming:
            if channel not in doc.channels and channel not in ("internal", "external"):
                yield _err(f"{at}.streaming", f"unknown channel {channel!r}")


def _chain_problems(
    doc: PolicyDocument, at: str, primary: str, chain: tuple[str, ...], what: str
) -> Iterable[PolicyProblem]:
    seen = {primary}
    for i, mid in enumerate(chain):
        if mid not in doc.models:
            yield _err(f"{at}[{i}]", f"unknown model {mid!r} in {what}")
            continue
        if mid in seen:
            yield _err(f"{at}[{i}]", f"cycle: {mid!r} appears twice in the {what} of {primary!r}")
        seen.add(mid)
        if doc.privacy.local_only and model_locality(doc, doc.models[mid]) == "cloud":
            yield _err(f"{at}[{i}]", f"{what} to cloud model {mid!r} under local_only")


def _check_roles(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    for rid, role in doc.roles.items():
        at = f"roles.{rid}"
        model = doc.models.get(role.model)
        if model is None:
            yield _err(f"{at}.model", f"unknown model {role.model!r}")
        elif doc.privacy.local_only and model_locality(doc, model) == "cloud":
            yield _err(
                f"{at}.model", f"cloud model {role.model!r} bound to a role under local_only"
            )
        elif model.escalation_only:
            yield _err(f"{at}.model", f"{role.model!r} is escalation-only and cannot be bound")
        yield from _chain_problems(
            doc, f"{at}.fallback.models", role.model, role.fallback.models, "fallback"
        )
        yield from _chain_problems(
            doc, f"{at}.escalation.ladder", role.model, role.escalation.ladder, "escalation"
        )
        if role.escalation.when and not role.escalation.ladder:
            yield _err(f"{at}.escalation", "escalation predicates but an empty ladder")
        if role.output_contract is not None and role.output_contract not in doc.contracts:
            yield _err(f"{at}.output_contract", f"unknown contract {role.output_contract!r}")
        if role.authority == "judge":
            for mid in (role.model, *role.fallback.models, *role.escalation.ladder):
                m = doc.models.get(mid)
                if m is not None and model_locality(doc, m) == "local":
                    yield _err(at, f"a local model ({mid!r}) can never be the approving judge")


def _check_jobs(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    for jid, job in doc.jobs.items():
        at = f"jobs.{jid}"
        if job.role is not None and job.role not in doc.roles:
            yield _err(f"{at}.role", f"unknown role {job.role!r}")
        for i, mid in enumerate(job.premium_allowlist):
            model = doc.models.get(mid)
            if model is None:
                yield _err(f"{at}.premium_allowlist[{i}]", f"unknown model {mid!r}")
            elif not model.premium:
                yield _warn(f"{at}.premium_allowlist[{i}]", f"{mid!r} is not premium")
        role = doc.roles.get(job.role) if job.role else None
        if role is not None:
            model = doc.models.get(role.model)
            if model is not None and model.premium and role.model not in job.premium_allowlist:
                yield _err(
                    f"{at}.premium_allowlist",
                    f"the job's role {job.role!r} runs premium model {role.model!r}, which "
                    "the job's allowlist does not name",
                )
            if job.local_only and model is not None and model_locality(doc, model) == "cloud":
                yield _err(
                    f"{at}.local_only", f"local_only job bound to cloud model {role.model!r}"
                )
            if job.local_only:
                for mid in dict.fromkeys((*role.fallback.models, *role.escalation.ladder)):
                    m = doc.models.get(mid)
                    if m is not None and model_locality(doc, m) == "cloud":
                        yield _warn(
                            f"{at}.local_only",
                            f"role {job.role!r} may fall back or escalate to cloud model "
                            f"{mid!r}; for this job that step is always refused",
                        )


def _check_intents(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    for iid, intent in doc.intents.items():
        at = f"intents.{iid}"
        for i, pattern in enumerate(intent.match.regex):
            try:
                re.compile(pattern)
            except re.error as exc:
                yield _err(f"{at}.match.regex[{i}]", f"invalid regular expression: {exc}")
        if intent.role is not None and intent.role not in doc.roles:
            yield _err(f"{at}.role", f"unknown role {intent.role!r}")
        needs = set(intent.requires)
        if needs and not any(needs <= set(m.capabilities) for m in doc.models.values()):
            yield _err(f"{at}.requires", f"no model has all of {sorted(needs)}")
        if intent.role is not None and intent.role in doc.roles:
            model = doc.models.get(doc.roles[intent.role].model)
            if model is not None and not needs <= set(model.capabilities):
                missing = sorted(needs - set(model.capabilities))
                yield _err(
                    f"{at}.role",
                    f"role {intent.role!r}'s model lacks required capabilities {missing}",
                )


def _check_budgets(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    sections: dict[str, dict[str, object]] = {
        "job": dict(doc.jobs),
        "role": dict(doc.roles),
        "model": dict(doc.models),
        "provider": dict(doc.providers),
    }
    for i, budget in enumerate(doc.budgets):
        if budget.scope != "global" and budget.target not in sections[budget.scope]:
            yield _err(f"budgets[{i}].target", f"unknown {budget.scope} {budget.target!r}")


def _check_pipeline_and_risk(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    names: set[str] = set()
    for i, stage in enumerate(doc.pipeline.stages):
        at = f"pipeline.stages[{i}]"
        if stage.name in names:
            yield _err(f"{at}.name", f"stage {stage.name!r} twice: one owner per stage")
        names.add(stage.name)
        owner = doc.roles.get(stage.owner)
        if owner is None:
            yield _err(f"{at}.owner", f"unknown role {stage.owner!r}")
        elif owner.authority == "sidecar":
            yield _err(f"{at}.owner", f"{stage.owner!r} is a sidecar and cannot own a stage")
        if stage.critic is not None:
            critic = doc.roles.get(stage.critic)
            if critic is None:
                yield _err(f"{at}.critic", f"unknown role {stage.critic!r}")
            elif critic.authority != "sidecar":
                yield _err(
                    f"{at}.critic",
                    f"critic {stage.critic!r} must have authority 'sidecar' (non-authoritative)",
                )
            if doc.pipeline.critic == "never":
                yield _warn(
                    f"{at}.critic",
                    f"pipeline.critic is 'never', so the critic {stage.critic!r} never runs",
                )
    judge = doc.risk.judge_role
    if judge is not None:
        role = doc.roles.get(judge)
        if role is None:
            yield _err("risk.judge_role", f"unknown role {judge!r}")
        elif role.authority != "judge":
            yield _err("risk.judge_role", f"role {judge!r} must have authority 'judge'")


def _check_defaults(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    d = doc.defaults
    if d.intent is not None and d.intent not in doc.intents:
        yield _err("defaults.intent", f"unknown intent {d.intent!r}")
    if d.role is not None and d.role not in doc.roles:
        yield _err("defaults.role", f"unknown role {d.role!r}")
    if d.channel is not None and d.channel not in doc.channels:
        yield _err("defaults.channel", f"unknown channel {d.channel!r}")
