"""Cross-reference checks and lints over a schema-valid policy document.

Errors make the policy unusable (fail closed); warnings are printed by
``rolegate check`` but do not stop the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

import re2

from rolegate.errors import PolicyProblem
from rolegate.policy.patterns import combined_regex, compile_re2
from rolegate.policy.problems import error as _err
from rolegate.policy.problems import model_locality
from rolegate.policy.problems import warning as _warn
from rolegate.policy.quality_checks import check_quality
from rolegate.policy.schema import PolicyDocument
from rolegate.policy.topology_checks import check_topology
from rolegate.policy.understanding_checks import check_understanding
from rolegate.policy.vocabulary import API_KEY_ENV_PATTERN, KNOWN_CAPABILITIES


def check_document(doc: PolicyDocument) -> list[PolicyProblem]:
    """Every problem in ``doc``: errors and warnings, in a stable order."""
    problems: list[PolicyProblem] = []
    problems += _check_secrets(doc)
    problems += _check_models(doc)
    problems += _check_roles(doc)
    problems += _check_jobs(doc)
    problems += _check_intents(doc)
    problems += _check_budgets(doc)
    problems += _check_pipeline_and_risk(doc)
    problems += _check_defaults(doc)
    problems += check_understanding(doc)
    problems += check_topology(doc)
    problems += check_quality(doc)
    return problems


BUILTIN_PROVIDER_TYPES = frozenset({"ollama", "openai"})

# --- secrets pasted into the policy -------------------------------------------------
# A policy is shown by `policy show` and the rolegate://policy resource, so a key in it
# leaks. These checks refuse the shapes keys come in; their messages never repeat
# the value they looked at.

_ENV_NAME = re.compile(API_KEY_ENV_PATTERN)
# Prefixes of well-known key formats (AWS, GitHub, OpenAI/Anthropic/DeepSeek, Slack,
# Hugging Face, GitLab, Google, Groq, xAI, Stripe, Perplexity, Replicate, npm, PyPI),
# compared case-insensitively.
_KEY_PREFIXES = (
    "AKIA",
    "ASIA",
    "GHP_",
    "GHO_",
    "GHU_",
    "GHS_",
    "GHR_",
    "GITHUB_PAT_",
    "SK-",
    "SK_",
    "XOX",
    "HF_",
    "GLPAT",
    "AIZA",
    "GSK_",
    "XAI-",
    "RK_LIVE",
    "PPLX-",
    "R8_",
    "NPM_",
    "PYPI-",
)
_AWS_KEY_ID = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}", re.IGNORECASE)
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_HEX = re.compile(r"[0-9A-Fa-f]+")
# Query parameters that carry credentials (compared lower-case, '-' read as '_').
_SECRET_PARAMS = frozenset(
    {
        "api_key", "apikey", "key", "token", "access_token", "auth", "auth_token",
        "api_token", "x_api_key", "secret", "client_secret", "password", "passwd",
        "sig", "signature", "session_token", "bearer",
    }
)  # fmt: skip
_PUT_IT_IN_ENV = "put the key in an environment variable and name that variable in api_key_env"


def _long_mixed_run(text: str, *, allow_hex: bool = False) -> bool:
    """A run of 20+ letters and digits (no '_' or other separator) holding both."""
    for run in _ALNUM_RUN.findall(text):
        if len(run) < 20 or run.isalpha() or run.isdigit():
            continue
        if allow_hex and _HEX.fullmatch(run):
            continue  # ids and hashes in URL paths (e.g. an account id) are not keys
        return True
    return False


def _has_key_prefix(text: str) -> bool:
    if _AWS_KEY_ID.fullmatch(text):
        return True
    upper = text.upper()
    for prefix in _KEY_PREFIXES:
        if not upper.startswith(prefix):
            continue
        # What follows must look generated (16+ characters with a digit, or in mixed
        # case), so that names such as HF_TOKEN, SK_API_KEY or a path segment such as
        # asia-northeast1 are not taken for keys.
        body = "".join(_ALNUM_RUN.findall(text[len(prefix) :]))
        mixed_case = body != body.upper() and body != body.lower()
        if len(body) >= 16 and (mixed_case or any(c.isdigit() for c in body)):
            return True
    return False


def looks_like_key(text: str, *, allow_hex: bool = False) -> bool:
    """True if ``text`` has the shape of an API key or token rather than a name."""
    return _has_key_prefix(text) or _long_mixed_run(text, allow_hex=allow_hex)


def _check_secrets(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    for pid, prov in doc.providers.items():
        at = f"providers.{pid}"
        env = prov.api_key_env
        if env is not None and looks_like_key(env):
            yield _err(
                f"{at}.api_key_env",
                "looks like an API key, not the name of an environment variable; put the "
                "key in an environment variable and name that variable here",
            )
        elif env is not None and not _ENV_NAME.fullmatch(env):
            yield _err(
                f"{at}.api_key_env",
                "not an environment variable name: use upper snake case (A-Z, 0-9 and _, "
                "at most 64 characters), e.g. OPENAI_API_KEY; never the key itself",
            )
        yield from _url_secret_problems(f"{at}.base_url", prov.base_url)


def _url_secret_problems(at: str, url: str) -> Iterable[PolicyProblem]:
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        yield _err(at, "not a valid URL")
        return
    if "@" in parts.netloc:
        yield _err(at, f"holds credentials before the host (user:password@); {_PUT_IT_IN_ENV}")
    for name, value in query:
        canonical = name.lower().replace("-", "_")
        if canonical in _SECRET_PARAMS:
            yield _err(at, f"query parameter {canonical!r} carries a credential; {_PUT_IT_IN_ENV}")
        elif looks_like_key(value):
            yield _err(at, f"a query parameter's value looks like an API key; {_PUT_IT_IN_ENV}")
    if any(looks_like_key(seg, allow_hex=True) for seg in parts.path.split("/")):
        yield _err(at, f"a path segment looks like an API key; {_PUT_IT_IN_ENV}")
    if parts.fragment and looks_like_key(parts.fragment, allow_hex=True):
        yield _err(at, f"the fragment (#...) looks like an API key; {_PUT_IT_IN_ENV}")


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
        model = doc.models[mid]
        if doc.privacy.local_only and model_locality(doc, model) == "cloud":
            yield _err(f"{at}[{i}]", f"{what} to cloud model {mid!r} under local_only")
        # An escalation ladder may hold both kinds; a fallback chain holds neither.
        if what == "fallback" and model.escalation_only:
            yield _err(
                f"{at}[{i}]",
                f"{mid!r} is escalation-only: it is reached only through an escalation "
                "ladder, never as a fallback",
            )
        if what == "fallback" and model.premium:
            yield _err(
                f"{at}[{i}]",
                f"{mid!r} is premium: premium models are explicit and allowlisted, "
                "never a fallback",
            )


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
        yield from _regex_problems(at, intent.match.regex)
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


def _regex_problems(at: str, regexes: tuple[str, ...]) -> Iterable[PolicyProblem]:
    # Intent patterns are RE2, whose matching time is linear in the task's length (no
    # catastrophic backtracking).
    ok = True
    for i, pattern in enumerate(regexes):
        try:
            compile_re2(pattern)
        except re2.error as exc:
            ok = False
            yield _err(
                f"{at}.match.regex[{i}]",
                f"invalid regular expression ({_re2_reason(exc)}); patterns use RE2 "
                "syntax: no backreferences or lookaround",
            )
    if ok and len(regexes) > 1:
        try:
            compile_re2(combined_regex(regexes))
        except re2.error as exc:
            yield _err(
                f"{at}.match.regex",
                f"the patterns cannot be combined ({_re2_reason(exc)}); "
                "each named group may appear once per intent",
            )


def _re2_reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason)


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
