"""The hooks a rolegate plugin may implement.

Every hook takes a ``register`` callback instead of returning a value, so one
plugin can register several things and results never depend on the order in
which pluggy calls the implementations: the registry collects everything and
refuses duplicate names, naming both plugins.

A plugin is a module or object with ``@hookimpl`` functions, found through the
``rolegate`` entry-point group (see ``examples/plugins/rolegate-echo``). Every hook is
called once per ``build_registry()``, at server start; implementations must not do I/O
or keep global state. A ``@hookimpl`` whose name is not one of these hooks is refused
at load (``PluginManager.check_pending``), so a misspelled hook is an error, not a no-op.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from rolegate.plugins.base import Checker, EmbedderType, ProviderType, RoleKind
from rolegate.plugins.sinks import AuditSink

PROJECT = "rolegate"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_providers(register: Callable[[ProviderType], None]) -> None:
    """Register provider types, one ``register(provider_type)`` call each.

    :param register: Call it once per provider type the plugin provides.

    ``provider_type.name`` is the value a policy's ``providers.<x>.type`` uses; the
    server calls ``provider_type.create(...)`` for each policy provider of that type.

    Results combine by union: every implementation is called and every registered type is
    kept. Two registrations of one name (from one plugin or two) are refused with a
    ``PluginError`` (PLUGIN_ERROR) that names both plugins; block one with ``--block``. A
    policy using a type that no loaded plugin provides fails at server start.
    """


@hookspec
def register_embedders(register: Callable[[EmbedderType], None]) -> None:
    """Register embedder types, one ``register(embedder_type)`` call each.

    :param register: Call it once per embedder type the plugin provides.

    An embedder type whose ``in_process`` is false is named after a provider type: the
    policy's ``classifier.embedder_model`` names a model with the ``embeddings``
    capability, and its provider's type picks the embedder type (the built-ins: ``openai``
    for ``/v1/embeddings``, ``ollama`` for ``/api/embed``). An in-process embedder type is
    named by ``classifier.embedder`` (built in: ``e5-small``).

    Results combine by union: every implementation is called and every registered type is
    kept. Two registrations of one name are refused with a ``PluginError`` (PLUGIN_ERROR)
    that names both plugins. A policy whose classifier needs an embedder type that no loaded
    plugin provides fails at server start.
    """


@hookspec
def register_roles(register: Callable[[RoleKind], None]) -> None:
    """Register role kinds, one ``register(role_kind)`` call each.

    :param register: Call it once per role kind the plugin provides.

    A policy role picks a kind with ``kind: <name>``; without one, the kind follows the
    role's ``authority`` (owner -> ``owner``, sidecar -> ``critic``, judge -> ``judge``,
    the built-in kinds). A role uses its kind's ``system_prompt`` when the caller sends
    none, and the kind's ``authority`` must equal the role's.

    Results combine by union: every implementation is called and every registered kind is
    kept. Two registrations of one name are refused with a ``PluginError`` (PLUGIN_ERROR)
    that names both plugins. At server start, a role naming a kind that no loaded plugin
    provides, or a kind whose authority differs from the role's, is refused
    (``rolegate.plugins.kinds.resolve_role_kinds``).
    """


@hookspec
def register_audit_sinks(register: Callable[[AuditSink], None]) -> None:
    """Register audit sinks, one ``register(sink)`` call each.

    :param register: Call it once per sink; a sink is a callable taking one record (a
        ``dict[str, object]``: ids, names, codes, counts, costs, timings; never prompt or
        completion text) and returning nothing.

    Results combine by concatenation: every implementation is called and every sink is
    kept, in plugin-name order, then in the order each plugin registered them; sinks have
    no names, so nothing is deduplicated (a sink registered twice receives each record
    twice).

    When sinks are called: once per audit record, after the record was durably written
    (``AuditSinks.deliver``), each with its own copy of the record. Sinks run inline on the
    request path, one after the other, and must not block: hand slow I/O to your own queue
    or thread. A sink that raises does not fail the request and does not keep the record
    from the other sinks; the failure is logged (plugin, sink, exception type) and counted.
    """


@hookspec
def register_checkers(register: Callable[[Checker], None]) -> None:
    """Register output checkers for eval suites, one ``register(checker)`` call each.

    :param register: Call it once per checker the plugin provides.

    ``checker.name`` is the value an eval case's ``check: {type: ...}`` uses (the built-ins:
    ``exact``, ``regex``, ``numeric``, ``contains``, ``contract``, ``json_schema``). When a
    suite is loaded, each case's ``check`` mapping, without ``type``, goes to the checker's
    ``validate`` before any model is called; each output then goes to its ``check``, which
    returns a ``Verdict`` whose reason never quotes the output.

    Results combine by union: every implementation is called and every registered checker
    is kept. Two registrations of one name are refused with a ``PluginError``
    (PLUGIN_ERROR) that names both plugins. A suite whose case names a checker that no
    loaded plugin provides is refused before any model is called, listing the loaded ones.
    """
