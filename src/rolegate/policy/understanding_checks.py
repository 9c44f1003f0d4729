"""Checks of what the policy says about understanding tasks: intents' examples and sizes,
the classifier's references, and each model's tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from rolegate.errors import PolicyProblem
from rolegate.policy.problems import error as _err
from rolegate.policy.problems import model_locality
from rolegate.policy.problems import warning as _warn
from rolegate.policy.schema import PolicyDocument
from rolegate.policy.understanding_schema import Classifier

MIN_EXAMPLES = 3
# The linear classifier trains on the examples' pairwise products: memory and time grow with
# the square of their number (4,000: ~200 MB and ~10 s once, then cached; the default
# policy has 1,384).
MAX_EXAMPLES = 4000


def check_understanding(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    yield from _check_examples(doc)
    yield from _check_sizes(doc)
    if doc.classifier is not None:
        yield from _check_classifier(doc, doc.classifier)
    for mid, model in doc.models.items():
        provider = doc.providers.get(model.provider)
        if model.tokenizer == "server" and provider is not None and provider.type == "ollama":
            yield _err(
                f"models.{mid}.tokenizer",
                "Ollama has no tokenize endpoint; use 'estimate', 'file:PATH' or leave it unset",
            )


def _check_examples(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    with_examples = [iid for iid, intent in doc.intents.items() if intent.examples]
    if not with_examples:
        if doc.classifier is not None:
            yield _warn("classifier", "no intent has examples, so the classifier never runs")
        return
    total = sum(len(intent.example_texts()) for intent in doc.intents.values())
    if total > MAX_EXAMPLES:
        yield _err(
            "intents",
            f"{total:,} examples in all; the classifier takes at most {MAX_EXAMPLES:,} (its "
            "training grows with the square of their number). Keep the most varied ones",
        )
    for iid, intent in doc.intents.items():
        for kind, texts in intent.example_groups():
            where = f"intents.{iid}.examples" + (f".{kind}" if kind else "")
            if len(texts) < MIN_EXAMPLES:
                yield _err(
                    where,
                    f"{len(texts)} example(s); give at least {MIN_EXAMPLES}, or none (an intent "
                    "without examples is reached by its keywords, its size or as the default "
                    "only)",
                )
        seen: dict[str, str] = {}
        for other, other_intent in doc.intents.items():
            if other != iid:
                seen.update({e.casefold(): other for e in other_intent.example_texts()})
        for example in intent.example_texts():
            clash = seen.get(example.casefold())
            if clash is not None and iid < clash:
                yield _err(
                    f"intents.{iid}.examples",
                    f"the example {example[:60]!r} is also an example of intent {clash!r}",
                )


def _check_sizes(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    by_size: dict[tuple[int, int], str] = {}
    for iid, intent in sorted(doc.intents.items()):
        if intent.min_input_tokens is None:
            continue
        key = (intent.min_input_tokens, intent.priority)
        other = by_size.get(key)
        if other is not None:
            yield _err(
                f"intents.{iid}.min_input_tokens",
                f"intent {other!r} has the same min_input_tokens and priority; give one of "
                "them a lower priority (ties are never decided by names)",
            )
        by_size[key] = iid


def _check_classifier(doc: PolicyDocument, classifier: Classifier) -> Iterable[PolicyProblem]:
    at = "classifier"
    given = classifier.model_fields_set
    if classifier.method != "linear":
        for name in sorted({"lexical", "shortcut"} & given):
            yield _warn(
                f"{at}.{name}",
                f"only the 'linear' method reads the task's words; method "
                f"{classifier.method!r} ignores '{name}'",
            )
    elif not classifier.lexical and "shortcut" in given and classifier.shortcut is not None:
        yield _warn(
            f"{at}.shortcut",
            "the shortcut is a model of the task's words, and 'lexical: false' turns them off; "
            "remove 'shortcut' or set 'lexical: true'",
        )
    if classifier.embedder_model is not None:
        model = doc.models.get(classifier.embedder_model)
        if model is None:
            yield _err(f"{at}.embedder_model", f"unknown model {classifier.embedder_model!r}")
        elif "embeddings" not in model.capabilities:
            yield _err(
                f"{at}.embedder_model",
                f"model {classifier.embedder_model!r} lacks the 'embeddings' capability",
            )
        elif doc.privacy.local_only and model_locality(doc, model) == "cloud":
            yield _err(
                f"{at}.embedder_model",
                "the policy is local_only and this embedding model is in the cloud: every "
                "task's text would leave the machine",
            )
    if classifier.on_unsure == "router":
        role = classifier.router_role
        if role is None:
            yield _err(f"{at}.router_role", "on_unsure 'router' needs a router_role")
        elif role not in doc.roles:
            yield _err(f"{at}.router_role", f"unknown role {role!r}")
    elif classifier.router_role is not None:
        yield _warn(
            f"{at}.router_role",
            f"on_unsure is {classifier.on_unsure!r}, so the router role is never asked",
        )
    if classifier.on_unsure == "default" and doc.defaults.intent is None:
        yield _warn(
            f"{at}.on_unsure",
            "no defaults.intent: an unsure task gets no intent (the default role, or the "
            "cheapest model that chats)",
        )
