"""Which intent a task has: signals first, then keywords, then the classifier's proposal.

The order (seed 003 step 1): a role or job the caller names decides the route, and the
intent is only recorded; an intent's ``min_input_tokens`` decides by size; the policy's
keywords and regexes are high-precision overrides; otherwise the engine's classifier
proposes a label from the intents' examples (or the router model chose one). When nothing
decides, the policy's ``classifier.on_unsure`` says what happens. Ties are never broken by
intent names: two keyword intents of equal priority go to the classifier, or are unsure.
"""

from __future__ import annotations

from dataclasses import dataclass

from rolegate.policy.compiled import CompiledIntent, Policy
from rolegate.policy.decision import Classification, RouteRequest
from rolegate.policy.understanding_schema import Classifier

DEFAULT_CLASSIFIER = Classifier()


@dataclass(frozen=True, slots=True)
class IntentChoice:
    """The intent in force, whether something matched it, and how it was found."""

    intent: CompiledIntent | None
    matched: bool
    classification: Classification
    refusal: str | None = None  # an INTENT_UNCERTAIN sentence: the policy fails closed


def classifier_settings(policy: Policy) -> Classifier:
    return policy.doc.classifier or DEFAULT_CLASSIFIER


def has_classifier(policy: Policy) -> bool:
    """Whether any intent has examples, so that tasks are classified by them."""
    return any(i.intent.examples for i in policy.intents)


def caller_decides(policy: Policy, request: RouteRequest) -> bool:
    """A role the caller names, or the role of the caller's job, picks the model."""
    if request.role is not None:
        return True
    job = policy.doc.jobs.get(request.job) if request.job else None
    return job is not None and job.role is not None


def by_size(policy: Policy, input_tokens: int) -> CompiledIntent | None:
    """The intent with the largest ``min_input_tokens`` the input reaches (then priority)."""
    best: CompiledIntent | None = None
    for compiled in policy.intents:  # in precedence order: the first of a size wins
        floor = compiled.intent.min_input_tokens
        if floor is None or input_tokens < floor:
            continue
        if best is None or floor > (best.intent.min_input_tokens or 0):
            best = compiled
    return best


def keyword_ties(policy: Policy, task: str) -> list[CompiledIntent]:
    """The keyword/regex intents that match ``task`` at the best priority among matches."""
    matches = [policy.intents[p] for p in policy.intent_matcher.all(task)]
    if not matches:
        return []
    top = min(m.intent.priority for m in matches)
    return [m for m in matches if m.intent.priority == top]


def needs_proposal(policy: Policy, request: RouteRequest, input_tokens: int) -> bool:
    """Whether the engine should ask the classifier: nothing cheaper decides the intent."""
    if not has_classifier(policy) or caller_decides(policy, request):
        return False
    if by_size(policy, input_tokens) is not None:
        return False
    return len(keyword_ties(policy, request.task)) != 1


def choose_intent(
    policy: Policy,
    request: RouteRequest,
    input_tokens: int,
    proposal: Classification | None,
) -> IntentChoice:
    """The intent for ``request``; ``proposal`` is the engine's classification, if any."""
    if request.intent is not None:  # a replay: the recorded intent stands
        known = policy.intents_by_name.get(request.intent)
        method = "caller" if caller_decides(policy, request) else "recorded"
        info = Classification(method=method, label=request.intent)
        return (
            _fallback(policy, known, info)
            if known is not None
            else _fallback(
                policy, None, info.model_copy(update={"note": "the recorded intent is gone"})
            )
        )
    ties = keyword_ties(policy, request.task)
    if caller_decides(policy, request):
        intent = ties[0] if len(ties) == 1 else None
        label = intent.name if intent else None
        return _fallback(policy, intent, Classification(method="caller", label=label))
    sized = by_size(policy, input_tokens)
    if sized is not None:
        info = Classification(method="size", label=sized.name)
        return IntentChoice(sized, True, info)
    if len(ties) == 1:
        return IntentChoice(ties[0], True, Classification(method="keywords", label=ties[0].name))
    by_name = policy.intents_by_name
    if ties:
        names = sorted(t.name for t in ties)
        if proposal is not None and proposal.label in names:
            note = f"keywords of {names} matched at one priority; the classifier chose"
            info = proposal.model_copy(update={"note": note})
            return IntentChoice(by_name[proposal.label], True, info)
        note = f"keywords of {names} matched at one priority and nothing broke the tie"
        return _unsure(policy, proposal, note)
    if proposal is not None and proposal.label is not None and proposal.confident:
        return IntentChoice(by_name[proposal.label], True, proposal)
    if not has_classifier(policy):
        return _fallback(policy, None, Classification(method="default"))
    return _unsure(policy, proposal, proposal.note if proposal else None)


def _unsure(policy: Policy, proposal: Classification | None, note: str | None) -> IntentChoice:
    settings = classifier_settings(policy)
    base = proposal or Classification(method="default")
    if settings.on_unsure == "default":
        info = base.model_copy(update={"note": note or "the classifier was unsure"})
        return _fallback(policy, None, info)
    why = note or _unsure_sentence(proposal, settings.threshold)
    if settings.on_unsure == "router" and base.router_asked:
        why = f"the router model gave no usable intent ({base.note or 'no answer'})"
    info = base.model_copy(update={"note": why})
    return IntentChoice(None, False, info, refusal=f"the task's intent is uncertain: {why}")


def _unsure_sentence(proposal: Classification | None, threshold: float) -> str:
    if proposal is None or proposal.confidence is None:
        return "no classification"
    # Two decimals, unless they would show the confidence equal to the threshold.
    digits = 2 if round(proposal.confidence, 2) < round(threshold, 2) else 4
    return (
        f"best {proposal.label!r} at {proposal.confidence:.{digits}f} < threshold "
        f"{threshold:.{digits}f} (runner-up {proposal.runner_up!r})"
    )


def _fallback(policy: Policy, intent: CompiledIntent | None, info: Classification) -> IntentChoice:
    """``intent`` if a keyword gave it, else the default intent (not a match)."""
    if intent is not None:
        return IntentChoice(intent, True, info)
    default = policy.doc.defaults.intent
    if default is None:
        return IntentChoice(None, False, info)
    return IntentChoice(policy.intents_by_name[default], False, info)
