"""Reading a task before it is routed: the classifier's proposal, or the router model's.

``route()`` stays pure: the engine asks ``TaskReader.propose`` first, and only when no
signal or keyword decides the intent (``policy.intents.needs_proposal``). When the
classifier is unsure and the policy says ``on_unsure: router``, the router role's model
chooses among the intents: one call through the normal provider path (admitted, budgeted,
settled and audited like any other), temperature 0, its answer constrained by a JSON schema
whose only field is an enum of the intents. An embedder or router failure is reported in
the classification's note and treated as unsure, so the policy decides what follows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rolegate.engine.calls import CallRunner
from rolegate.engine.classifier import IntentClassifier
from rolegate.engine.constraints import resolve_constraints
from rolegate.engine.requests import NO_CALLER
from rolegate.errors import Code, ProviderError, RolegateError
from rolegate.logs import get_logger
from rolegate.plugins.base import Embedder, Message
from rolegate.plugins.manager import Registry
from rolegate.policy import Policy, RouteRequest
from rolegate.policy.decision import Classification
from rolegate.policy.intents import classifier_settings, has_classifier, needs_proposal
from rolegate.policy.router import count_input, validate_request

log = get_logger()

ROUTER_MAX_OUTPUT = 64
ROUTER_PROMPT = (
    'You route tasks. Answer with a JSON object whose only key is "intent", one of the '
    "intents below, for the user's task. Intents:\n"
)


class TaskReader:
    """The classifier (when the policy has examples) and the router-model fallback."""

    def __init__(
        self, policy: Policy, classifier: IntentClassifier | None, calls: CallRunner | None
    ) -> None:
        self.policy = policy
        self.classifier = classifier
        self.calls = calls
        self.settings = classifier_settings(policy)

    async def warm(self) -> None:
        """Embed the examples now (a failure is logged; the first task retries)."""
        if self.classifier is None:
            return
        try:
            await self.classifier.prepare()
        except ProviderError as exc:
            log.warning(
                "classifier_warmup_failed", code=str(exc.code), policy_hash=self.policy.hash
            )

    async def read(self, request: RouteRequest) -> Classification | None:
        """The classifier's (or router model's) proposal, when nothing cheaper decides the
        intent; None otherwise. Malformed requests are refused before anything is read."""
        if self.classifier is None:
            return None
        validate_request(request, self.policy)
        if not needs_proposal(self.policy, request, count_input(request, self.policy).input_tokens):
            return None
        return await self.propose(request)

    async def propose(self, request: RouteRequest) -> Classification | None:
        if self.classifier is None:
            return None
        try:
            proposal = await self.classifier.classify(request.task)
        except ProviderError as exc:
            log.warning("classifier_failed", code=str(exc.code), policy_hash=self.policy.hash)
            proposal = Classification(
                method="embedding", note=f"the embedder failed: {exc.code}: {exc.message}"
            )
        if proposal.confident or self.settings.on_unsure != "router":
            return proposal
        return await self.ask_router(request, proposal)

    async def ask_router(self, request: RouteRequest, proposal: Classification) -> Classification:
        role = self.settings.router_role
        asked = proposal.model_copy(update={"method": "router_model", "router_asked": True})
        if role is None or self.calls is None:
            return asked.model_copy(update={"note": "no router role or no providers loaded"})
        try:
            label = await self._router_label(role, request)
        except RolegateError as exc:
            return asked.model_copy(update={"note": f"{exc.code}: {exc.message}"})
        return asked.model_copy(
            update={"label": label, "confident": True, "confidence": None, "note": None}
        )

    async def _router_label(self, role: str, request: RouteRequest) -> str:
        assert self.calls is not None
        intents = self.policy.doc.intents
        labels = sorted(intents)
        listing = "\n".join(
            f"- {name}: {intents[name].description or ', '.join(intents[name].example_texts()[:3])}"
            for name in labels
        )
        limits = await resolve_constraints(
            self.policy,
            self.calls.store,
            role=role,
            job=request.job,
            channel=None,
            decision_id=None,
            local_only=request.local_only,
            max_output_tokens=ROUTER_MAX_OUTPUT,
        )
        info = self.policy.models[self.policy.doc.roles[role].model]
        messages = [Message("system", ROUTER_PROMPT + listing), Message("user", request.task)]
        call = await self.calls.admit(info, messages, limits)
        call.context.update(role=role, purpose="router")
        schema: dict[str, object] = {
            "type": "object",
            "properties": {"intent": {"type": "string", "enum": labels}},
            "required": ["intent"],
        }
        result = await self.calls.invoke(call, messages, limits, NO_CALLER, schema=schema)
        return _label(result.text, labels)


def _label(text: str, labels: list[str]) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    label = answer.get("intent") if isinstance(answer, dict) else None
    if label not in labels:
        raise ProviderError(
            "the router model's answer is not one of the intents", code=Code.BAD_RESPONSE
        )
    return str(label)


def build_reader(
    policy: Policy,
    registry: Registry,
    calls: CallRunner | None,
    env: Mapping[str, str],
    transports: Mapping[str, Any],
) -> TaskReader:
    """The policy's task reader; PLUGIN_ERROR when its embedder type is not loaded."""
    if not has_classifier(policy):
        return TaskReader(policy, None, calls)
    embedder = make_embedder(policy, registry, env, transports)
    examples = [
        (i.name, kind, texts) for i in policy.intents for kind, texts in i.intent.example_groups()
    ]
    settings = classifier_settings(policy)
    classifier = IntentClassifier(examples, embedder, settings, cache_dir=embedding_cache(env))
    return TaskReader(policy, classifier, calls)


def embedding_cache(env: Mapping[str, str]) -> Path | None:
    """ROLEGATE_CACHE_DIR, else $XDG_CACHE_HOME/rolegate, else ~/.cache/rolegate; 'off'
    keeps nothing on disk."""
    given = env.get("ROLEGATE_CACHE_DIR")
    if given == "off":
        return None
    if given:
        return Path(given)
    base = env.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "rolegate"


def make_embedder(
    policy: Policy, registry: Registry, env: Mapping[str, str], transports: Mapping[str, Any]
) -> Embedder:
    settings = classifier_settings(policy)
    mid = settings.embedder_model
    if mid is None:
        found = registry.embedders.get(settings.embedder)
        if found is None or not found.in_process:
            raise RolegateError(
                f"no loaded plugin provides the in-process embedder {settings.embedder!r} "
                f"(loaded: {sorted(n for n, e in registry.embedders.items() if e.in_process)})",
                code=Code.PLUGIN_ERROR,
            )
        return found.create(None, model=None, api_key=None)
    model = policy.doc.models[mid]
    provider = policy.doc.providers[model.provider]
    etype = registry.embedders.get(provider.type)
    if etype is None or etype.in_process:
        raise RolegateError(
            f"no loaded plugin serves embeddings for provider type {provider.type!r} "
            f"(classifier.embedder_model {mid!r})",
            code=Code.PLUGIN_ERROR,
        )
    api_key = env.get(provider.api_key_env) if provider.api_key_env else None
    transport = transports.get(model.provider)
    return etype.create(provider, model=model.name, api_key=api_key, transport=transport)
