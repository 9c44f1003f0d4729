"""The fast router picks exactly what a straightforward reference would, at any size.

``route`` screens every intent in one RE2 pass and walks a cost order sorted once at
load time. The reference here does it the plain way: one search per intent in
(priority, name) order, then a sort of the models and every check written out. Policies
and requests are generated from fixed seeds: overlapping keywords (``fix`` in ``prefix``),
non-ASCII word edges, ties on price and rank, premium and escalation-only models, budgets.
"""

from __future__ import annotations

import functools
import json
import math
import random
from typing import Any

import pytest

from rolegate.errors import Code
from rolegate.policy import BudgetSnapshot, Policy, RouteRequest, ScopeUsage, classify, route
from rolegate.policy.budget import overrun
from rolegate.policy.loader import load_policy_text
from rolegate.policy.patterns import IntentMatcher, intent_pattern
from rolegate.policy.tokens import estimate_tokens
from rolegate.policy.understanding_schema import Intent

CAPS = ("chat", "code", "reasoning", "json", "tools", "summarize", "long_context")
KEYWORDS = (
    "fix", "prefix", "fixes", "fix_it", "why does", "plan", "planning", "café", "straße",
    "naïve", "c++", "-rf", "e-mail", ".net", "v2", "a.b", "(x)", "deploy", "x", "test",
    "TEST", "ſun", "\u212aelvin", "İstanbul", "e\u0301t\u00e9", "x²", "٣d", "日本", "über",
    "ǅungla",
)  # fmt: skip
REGEXES = (
    r"\bplan\w*", r"deploy(?:ment)?s?", r"[0-9]{3}-[0-9]{4}", r"^start", r"end$", r"\pL+ß",
    r"über|uber", r"x{2,}", r"(?:a|b)+c", r"\d+%", r"\bK", r"[^\x00-\x7f]{2}",
)  # fmt: skip
# Text pieces: keywords, parts of them, plain words, characters with tricky case folding
# or word-ness (long s, Kelvin sign, dotted and dotless i, a combining acute, superscript
# two, an Arabic-Indic digit, sharp s), and separators of every kind.
NOISE = ("hello", "report", "start", "end", "12%", "555-1234", "sun", "kelvin", "istanbul")
ODD = ("ſ", "\u212a", "İ", "ı", "\u0301", "²", "٣", "ß", "ẞ", "é", "É", "日", "_", "-", "+")
SEPARATORS = (" ", " ", " ", "", "_", "-", ".", "\n", "é", "\u0301", "٣", "ſ", "K")

STAGES = (
    Code.NO_SUFFICIENT_MODEL,
    Code.NO_POLICY,
    Code.LOCAL_ONLY_VIOLATION,
    Code.NOT_ALLOWLISTED,
    Code.OVER_BUDGET,
    Code.BUDGET_EXHAUSTED,
)
TIERS = {"hot": 0, "warm": 1, "cold": 2}


# --- generated policies ---------------------------------------------------------------


def _model(rng: random.Random, i: int) -> dict[str, Any]:
    model: dict[str, Any] = {"provider": rng.choice(("loc", "cl")), "name": f"model-{i}"}
    if rng.random() > 0.05:  # a few have no context policy (never routed to)
        model["context_window"] = rng.choice((4_096, 8_192, 32_768, 131_072))
        model["reserve_tokens"] = rng.choice((256, 1_024))
    caps = {c for c in CAPS[1:] if rng.random() < 0.3}
    if rng.random() < 0.85:
        caps.add("chat")
    model["capabilities"] = sorted(caps) or ["chat"]
    price = rng.choice((None, ("0", "0"), ("1", "2"), ("0.5", "0.5"), ("3", "15"), ("2.5", "0.5")))
    if price is not None:
        model["price"] = {"input_per_mtok": price[0], "output_per_mtok": price[1]}
    model["rank"] = rng.choice((50, 100, 100, 100))
    model["tier"] = rng.choice(("hot", "hot", "warm", "cold"))
    if (size := rng.choice((None, 3, 7, 7, 70))) is not None:
        model["params_b"] = size
    model["premium"] = rng.random() < 0.1
    model["escalation_only"] = not model["premium"] and rng.random() < 0.1
    return model


def _intent(rng: random.Random, models: dict[str, Any], roles: dict[str, Any]) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if rng.random() < 0.85:
        match["keywords"] = rng.sample(KEYWORDS, rng.choice((1, 1, 2, 3)))
    if rng.random() < 0.3:
        match["regex"] = rng.sample(REGEXES, rng.choice((1, 1, 2)))
    intent: dict[str, Any] = {"match": match, "priority": rng.choice((10, 50, 100, 100, 200))}
    # Requirements some model meets (the loader refuses others).
    donor = models[rng.choice(sorted(models))]["capabilities"]
    intent["requires"] = rng.sample(donor, rng.choice((0, 0, 1, 2)) if len(donor) > 1 else 0)
    needs = set(intent["requires"])
    fitting = [
        r for r, role in roles.items() if needs <= set(models[role["model"]]["capabilities"])
    ]
    if fitting and rng.random() < 0.3:
        intent["role"] = rng.choice(fitting)
    return intent


def _roles(rng: random.Random, models: dict[str, Any], count: int) -> dict[str, Any]:
    bindable = sorted(m for m, d in models.items() if not d["escalation_only"])
    plain = [m for m in bindable if not models[m]["premium"]]
    roles: dict[str, Any] = {}
    for k in range(count):
        primary = rng.choice(bindable)
        chain = rng.sample([m for m in plain if m != primary], min(rng.randint(0, 3), 3))
        roles[f"r{k}"] = {"model": primary, "fallback": {"models": chain}}
    return roles


def _jobs(rng: random.Random, models: dict[str, Any], roles: dict[str, Any]) -> dict[str, Any]:
    premium = sorted(m for m, d in models.items() if d["premium"])
    jobs: dict[str, Any] = {"scripted": {"script_only": True}}
    for k, rid in enumerate(sorted(roles)[:4]):
        primary = roles[rid]["model"]
        allow = set(rng.sample(premium, min(len(premium), rng.randint(0, 3))))
        if models[primary]["premium"]:
            allow.add(primary)
        job: dict[str, Any] = {"role": rid, "premium_allowlist": sorted(allow)}
        if models[primary]["provider"] == "loc" and rng.random() < 0.5:
            job["local_only"] = True
        if rng.random() < 0.5:
            job["budgets"] = [{"window": "day", "tokens": rng.choice((2_000, 50_000))}]
        jobs[f"j{k}"] = job
    return jobs


def _budgets(rng: random.Random, models: dict[str, Any], roles: dict[str, Any]) -> list[Any]:
    budgets: list[dict[str, Any]] = [{"scope": "global", "window": "month", "usd": "50"}]
    for mid in rng.sample(sorted(models), min(len(models), 6)):
        budgets.append({"scope": "model", "target": mid, "window": "day", "usd": "0.01"})
    budgets.append({"scope": "provider", "target": "cl", "window": "day", "tokens": 40_000})
    for rid in sorted(roles)[:2]:
        rolling = {"window": "rolling", "window_seconds": 3600, "usd": "0.05"}
        budgets.append({"scope": "role", "target": rid, **rolling})
    return budgets


def generate(seed: int, n_models: int, n_intents: int, *, with_roles: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    models = {f"m{i:03d}": _model(rng, i) for i in range(n_models)}
    roles = _roles(rng, models, rng.randint(3, 8)) if with_roles else {}
    intents = {f"i{j:03d}": _intent(rng, models, roles) for j in range(n_intents)}
    defaults: dict[str, Any] = {"max_output_tokens": rng.choice((256, 1_024, 4_096))}
    if rng.random() < 0.5:
        defaults["intent"] = rng.choice(sorted(intents))
    if roles and rng.random() < 0.5:
        defaults["role"] = rng.choice(sorted(roles))
    local = {"type": "ollama", "base_url": "http://127.0.0.1:11434", "locality": "local"}
    cloud = {
        "type": "openai",
        "base_url": "https://api.example.com/v1",
        "api_key_env": "CLOUD_KEY",
        "locality": "cloud",
    }
    return {
        "version": 1,
        "name": f"generated-{seed}",
        "providers": {"loc": local, "cl": cloud},
        "models": models,
        "roles": roles,
        "jobs": _jobs(rng, models, roles) if roles else {},
        "intents": intents,
        "budgets": _budgets(rng, models, roles),
        "defaults": defaults,
    }


def text(rng: random.Random, keywords: float = 0.4) -> str:
    """A task: ``keywords`` is the share of pieces that are whole keywords."""
    pieces: list[str] = []
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        if kind < keywords:
            word = rng.choice(KEYWORDS)
            word = rng.choice((word, word.upper(), word.title(), word.swapcase()))
        elif kind < keywords + 0.15:
            word = rng.choice(KEYWORDS)
            start = rng.randint(0, len(word))
            word = word[start : rng.randint(start, len(word))]
        elif kind < keywords + 0.4:
            word = rng.choice(NOISE)
        else:
            word = "".join(rng.choices(ODD, k=rng.randint(1, 3)))
        pieces.append(word)
        pieces.append(rng.choice(SEPARATORS))
    return "".join(pieces).strip() or "x"


def request(rng: random.Random, policy: Policy) -> RouteRequest:
    doc = policy.doc
    fields: dict[str, Any] = {"task": text(rng)}
    if doc.jobs and rng.random() < 0.3:
        fields["job"] = rng.choice(sorted(doc.jobs))
    if doc.roles and rng.random() < 0.2:
        fields["role"] = rng.choice(sorted(doc.roles))
    if rng.random() < 0.3:
        fields["needs"] = tuple(rng.sample(CAPS, rng.randint(1, 2)))
    if rng.random() < 0.2:
        fields["local_only"] = True
    if rng.random() < 0.3:
        fields["input_tokens"] = rng.choice((100, 3_000, 7_000, 30_000, 120_000))
    elif rng.random() < 0.4:
        fields["context_tokens"] = rng.choice((500, 5_000, 31_000, 200_000))
    if rng.random() < 0.3:
        fields["max_output_tokens"] = rng.choice((64, 2_048, 8_192))
    return RouteRequest(**fields)


def snapshot(rng: random.Random, policy: Policy) -> BudgetSnapshot:
    usage = {
        line.id: ScopeUsage(
            spent_micro=rng.choice((0, 5_000, 9_999, 49_000_000)),
            reserved_tokens=rng.choice((0, 1_000, 39_000)),
        )
        for line in policy.budgets
        if rng.random() < 0.5
    }
    return BudgetSnapshot(usage)


def load(data: dict[str, Any]) -> Policy:
    return load_policy_text(json.dumps(data), "json", "generated.json")


# --- the reference --------------------------------------------------------------------


class Reference:
    """Routing's choices computed the plain way, from the document."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        doc = policy.doc
        names = sorted(doc.intents, key=lambda n: (doc.intents[n].priority, n))
        self.intents = [(n, intent_pattern(doc.intents[n])) for n in names]

    def classify(self, task: str) -> str | None:
        """The one matching intent of best priority; None if none or a tie (never by name)."""
        doc = self.policy.doc
        hits = [n for n, p in self.intents if p is not None and p.search(task) is not None]
        if not hits:
            return None
        top = min(doc.intents[n].priority for n in hits)
        best = [n for n in hits if doc.intents[n].priority == top]
        return best[0] if len(best) == 1 else None

    def locality(self, mid: str) -> str:
        model = self.policy.doc.models[mid]
        return model.locality or self.policy.doc.providers[model.provider].locality

    def first_role(self, mid: str) -> str | None:
        roles = sorted(r for r, role in self.policy.doc.roles.items() if role.model == mid)
        return roles[0] if roles else None

    def candidates(self) -> list[str]:
        doc = self.policy.doc
        bound = {role.model for role in doc.roles.values()}
        pool = [m for m, d in doc.models.items() if not d.escalation_only]
        if doc.roles:
            pool = [m for m in pool if m in bound]

        def key(mid: str) -> tuple[Any, ...]:
            d = doc.models[mid]
            price = d.price.input_per_mtok + d.price.output_per_mtok
            size = d.params_b if d.params_b is not None else math.inf
            return (price, d.rank, TIERS[d.tier], size, mid)

        return sorted(pool, key=key)

    def refusal(self, mid: str, call: dict[str, Any]) -> str | None:
        doc = self.policy.doc
        d = doc.models[mid]
        inp, out, job = call["input_tokens"], call["max_output"], call["job"]
        if not call["needs"] <= set(d.capabilities):
            return Code.NO_SUFFICIENT_MODEL
        if d.context_window is None or d.reserve_tokens is None:
            return Code.NO_POLICY
        if call["local_only"] and self.locality(mid) == "cloud":
            return Code.LOCAL_ONLY_VIOLATION
        if d.premium and (job is None or mid not in doc.jobs[job].premium_allowlist):
            return Code.NOT_ALLOWLISTED
        if inp > d.context_window - d.reserve_tokens or inp + out > d.context_window:
            return Code.OVER_BUDGET
        cost = math.ceil(inp * d.price.input_per_mtok + out * d.price.output_per_mtok)
        where = {"job": job, "role": call["role"], "model": mid, "provider": d.provider}
        for line in self.policy.budgets:
            target = where.get(line.scope)
            if line.scope != "global" and (target is None or target != line.target):
                continue
            used = call["snapshot"].get(line.id)
            if overrun(line, used, cost_micro=cost, tokens=inp + out) is not None:
                return Code.BUDGET_EXHAUSTED
        return None

    def route(self, req: RouteRequest, snap: BudgetSnapshot) -> dict[str, Any]:
        """Intent, role, needs, the chosen model and every (model, code) refused before it."""
        doc = self.policy.doc
        job = doc.jobs.get(req.job) if req.job else None
        if job is not None and job.script_only:
            return {"outcome": "script_only"}
        matched = self.classify(req.task)
        intent = matched or doc.defaults.intent
        role = (
            req.role
            or (job.role if job else None)
            or (doc.intents[intent].role if intent else None)
            or (doc.defaults.role if matched is None else None)
        )
        needs = set(req.needs)
        if req.role is None and (job is None or job.role is None):
            if intent is not None:
                needs |= set(doc.intents[intent].requires)
            elif role is None:
                needs.add("chat")
        inp = req.input_tokens
        if inp is None:
            inp = estimate_tokens(req.task, doc.token_estimate) + (req.context_tokens or 0)
        call = {
            "job": req.job,
            "needs": needs,
            "local_only": req.local_only or self.policy.is_local_only(req.job),
            "input_tokens": inp,
            "max_output": req.max_output_tokens or doc.defaults.max_output_tokens,
            "snapshot": snap,
        }
        walk = [doc.roles[role].model] if role else self.candidates()
        rejected: list[tuple[str, str]] = []
        chosen = None
        for mid in walk:
            code = self.refusal(mid, {**call, "role": role or self.first_role(mid)})
            if code is None:
                chosen = mid
                break
            rejected.append((mid, code))
        furthest = None
        for mid, code in rejected:
            if furthest is None or STAGES.index(code) > STAGES.index(furthest[1]):
                furthest = (mid, code)
        return {
            "intent": intent,
            "role": role or (self.first_role(chosen) if chosen else None),
            "needs": sorted(needs),
            "chosen": chosen,
            "rejected": rejected,
            "furthest": furthest,
        }


def same_picks(policy: Policy, ref: Reference, req: RouteRequest, snap: BudgetSnapshot) -> None:
    got = route(req, policy, snap)
    want = ref.route(req, snap)
    if want.get("outcome") == "script_only":
        assert got.outcome == "script_only"
        return
    assert got.intent == want["intent"], req
    assert got.required_capabilities == want["needs"], req
    assert [(r.model, r.code) for r in got.rejected] == want["rejected"], req
    if want["chosen"] is not None:
        assert (got.outcome, got.model, got.role) == ("route", want["chosen"], want["role"]), req
    elif want["furthest"] is not None:
        mid, code = want["furthest"]
        assert (got.outcome, got.code, got.model) == ("refuse", code, mid), req
    else:
        assert (got.outcome, got.code, got.model) == ("refuse", Code.NO_SUFFICIENT_MODEL, None)


# --- the tests ------------------------------------------------------------------------

POLICIES = [  # seed, models, intents, roles
    (1, 40, 40, True),
    (2, 120, 150, False),
    (3, 80, 300, True),
    (4, 300, 60, False),
    (5, 60, 60, True),
]


@functools.cache
def generated_policy(index: int) -> tuple[Policy, Reference, int]:
    seed, n_models, n_intents, with_roles = POLICIES[index]
    policy = load(generate(seed, n_models, n_intents, with_roles=with_roles))
    return policy, Reference(policy), seed


@pytest.fixture(params=range(len(POLICIES)), ids=lambda i: "seed{}-{}m-{}i".format(*POLICIES[i]))
def generated(request: pytest.FixtureRequest) -> tuple[Policy, Reference, int]:
    return generated_policy(request.param)


def test_classify_matches_one_search_per_intent(generated: tuple[Policy, Reference, int]) -> None:
    policy, ref, seed = generated
    rng = random.Random(seed * 7919)
    hits = 0
    for n in range(1_500):
        task = text(rng, keywords=0.4 if n % 2 else 0.02)
        got = classify(policy, task)
        assert (got.name if got else None) == ref.classify(task), task
        hits += got is not None
    assert 150 < hits < 1_350  # both outcomes are well exercised
    # One screen for the whole policy: a pass over the task, whatever the intent count.
    assert [g.screen is not None for g in policy.intent_matcher._groups] == [True]


def test_route_picks_what_the_reference_picks(generated: tuple[Policy, Reference, int]) -> None:
    policy, ref, seed = generated
    rng = random.Random(seed * 104_729)
    outcomes: set[str] = set()
    for _ in range(400):
        req = request(rng, policy)
        snap = snapshot(rng, policy)
        same_picks(policy, ref, req, snap)
        outcomes.add(route(req, policy, snap).code)
    assert Code.ROUTED in outcomes
    assert len(outcomes) >= 2  # and refusals


def test_generated_policies_reach_every_refusal() -> None:
    """The generator is rich enough that the comparisons above cover every check."""
    codes: set[str] = set()
    for index in range(len(POLICIES)):
        policy, _, seed = generated_policy(index)
        rng = random.Random(seed)
        for _ in range(200):
            req = request(rng, policy)
            d = route(req, policy, snapshot(rng, policy))
            codes.update(r.code for r in d.rejected)
    assert codes >= set(STAGES)


def test_ties_on_cost_fall_to_rank_tier_size_then_id() -> None:
    data = generate(11, 4, 1, with_roles=False)
    base = {"provider": "loc", "context_window": 8_192, "reserve_tokens": 256}
    data["models"] = {
        "b": {**base, "name": "b"},
        "a": {**base, "name": "a"},
        "c-small": {**base, "name": "c", "params_b": 3},
        "d-warm": {**base, "name": "d", "tier": "warm", "params_b": 1},
        "e-rank": {**base, "name": "e", "rank": 101, "params_b": 1},
    }
    data["budgets"], data["intents"], data["defaults"] = [], {}, {}
    policy = load(data)
    ref = Reference(policy)
    assert ref.candidates() == ["c-small", "a", "b", "d-warm", "e-rank"]
    assert route(RouteRequest(task="hi"), policy).model == "c-small"
    # Refusing the first few walks on in the same order.
    d = route(RouteRequest(task="hi", needs=("vision",)), policy)
    assert [r.model for r in d.rejected] == ref.candidates()


# --- the matcher's own fallbacks ------------------------------------------------------


def _matcher_cases(seed: int, count: int) -> tuple[list[Intent], list[str]]:
    rng = random.Random(seed)
    models = {"m": {"capabilities": ["chat"]}}
    intents = [Intent.model_validate(_intent(rng, models, {})) for _ in range(count)]
    return intents, [text(rng) for _ in range(600)]


def _first_plain(intents: list[Intent], task: str) -> int | None:
    for i, intent in enumerate(intents):
        pattern = intent_pattern(intent)
        if pattern is not None and pattern.search(task) is not None:
            return i
    return None


def _check_matcher(matcher: IntentMatcher, intents: list[Intent], tasks: list[str]) -> None:
    for task in tasks:
        assert matcher.first(task) == _first_plain(intents, task), task


def test_matcher_splits_when_one_set_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    import rolegate.policy.patterns as patterns

    intents, tasks = _matcher_cases(21, 64)
    real = patterns._compile_screen
    sizes: list[int] = []

    def picky(regexes: Any) -> Any:
        sizes.append(len(regexes))
        return real(regexes) if len(regexes) <= 5 else None  # as if RE2 ran out of memory

    monkeypatch.setattr(patterns, "_compile_screen", picky)
    matcher = IntentMatcher([(i, intent_pattern(i)) for i in intents])
    assert sizes[0] >= sum(1 for i in intents if intent_pattern(i) is not None)
    assert len(matcher._groups) > 8
    _check_matcher(matcher, intents, tasks)


def test_matcher_tries_every_intent_when_a_screen_gives_up() -> None:
    intents, tasks = _matcher_cases(22, 40)
    matcher = IntentMatcher([(i, intent_pattern(i)) for i in intents])

    class GaveUp:
        """What the binding returns when the set's DFA fails: the same as no match."""

        def Match(self, text: bytes) -> None:  # RE2's name
            return None

    for group in matcher._groups:
        group.screen = GaveUp()
    _check_matcher(matcher, intents, tasks)


def test_matcher_with_no_screen_at_all_still_matches() -> None:
    intents, tasks = _matcher_cases(23, 30)
    matcher = IntentMatcher([(i, intent_pattern(i)) for i in intents])
    for group in matcher._groups:
        group.screen = None
    _check_matcher(matcher, intents, tasks)


@pytest.mark.parametrize(
    ("keyword", "hit", "miss"),
    [
        ("café", "un CAFÉ noir", "cafés"),
        ("fix", "FIX.", "préfix"),  # é is a letter: no word edge before 'fix'
        ("fix", "x\u0301fix", "ſfix"),  # a combining mark is not a word character
        ("sun", "the ſun", "ſunny"),  # long s folds to s
        ("kelvin", "\u212aELVIN", "_kelvin"),
        ("-rf", "rm-rf", "rm -rf"),  # a keyword starting with '-' needs a word before it
        ("x²", "x² y", "x²2"),  # '²' is a digit, so a word character
        ("日本", "日本 語", "日本語"),
        ("", "a", "- -"),  # an empty keyword is RE2's (ASCII) word boundary
    ],
)
def test_screen_never_rules_out_a_true_whole_word(keyword: str, hit: str, miss: str) -> None:
    intents = [Intent.model_validate({"match": {"keywords": [keyword]}})]
    matcher = IntentMatcher([(i, intent_pattern(i)) for i in intents])
    assert matcher.first(hit) == 0 == _first_plain(intents, hit)
    assert matcher.first(miss) is None is _first_plain(intents, miss)


def test_a_lone_surrogate_is_read_as_a_question_mark() -> None:
    # A CLI argument that was not UTF-8 reaches the matcher with lone surrogates: it must
    # neither raise nor let the surrogate match a word.
    intents = [
        Intent.model_validate({"match": {"keywords": ["fix"]}}),
        Intent.model_validate({"match": {"regex": ["^\\?$"]}}),
    ]
    matcher = IntentMatcher([(i, intent_pattern(i)) for i in intents])
    assert matcher.first("fix \ud800") == 0
    assert matcher.first("\ud800") == 1
    assert matcher.first("mend \udcff") is None
    assert IntentMatcher([]).first("fix \ud800") is None
