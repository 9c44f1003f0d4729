"""Building the plugin manager and the registry of what plugins provide.

No import-time loading and no global registry: ``build_registry()`` makes a new
plugin manager each call, adds the built-ins exactly as third parties are added
(by their ``@hookimpl`` functions), loads the ``rolegate`` entry points, checks
that every hook implementation matches a spec, and collects registrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

import pluggy

from rolegate.errors import PluginError
from rolegate.plugins import hookspecs
from rolegate.plugins.base import Checker, EmbedderType, ProviderType, RoleKind
from rolegate.plugins.sinks import AuditSink, RegisteredSink

__all__ = ["AuditSink", "PluginInfo", "Registry", "build_registry", "make_plugin_manager"]


def builtin_plugins() -> list[ModuleType]:
    from rolegate.plugins.builtin import (
        checkers,
        e5_embedder,
        ollama_provider,
        openai_provider,
        roles,
    )

    return [openai_provider, ollama_provider, e5_embedder, roles, checkers]


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    provides: list[str] = field(default_factory=list)


@dataclass
class Registry:
    providers: dict[str, ProviderType] = field(default_factory=dict)
    embedders: dict[str, EmbedderType] = field(default_factory=dict)
    roles: dict[str, RoleKind] = field(default_factory=dict)
    checkers: dict[str, Checker] = field(default_factory=dict)
    # In delivery order: by plugin name, then in the order each plugin registered them.
    audit_sinks: list[RegisteredSink] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def build_registry(
    *,
    block: Iterable[str] = (),
    extra_plugins: Iterable[object] = (),
    load_entry_points: bool = True,
) -> Registry:
    """Load built-ins, entry-point plugins and ``extra_plugins``; collect registrations."""
    pm = make_plugin_manager()
    blocked = sorted(set(block))
    for name in blocked:
        pm.set_blocked(name)
    infos: dict[str, PluginInfo] = {}
    for module in builtin_plugins():
        name = module.__name__.rsplit(".", 1)[-1]
        if not pm.is_blocked(name):
            pm.register(module, name=name)
            infos[name] = PluginInfo(name, "rolegate (built-in)", None)
    if load_entry_points:
        for ep in sorted(metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            if pm.is_blocked(ep.name):
                continue
            if pm.get_plugin(ep.name) is not None:
                raise PluginError(f"two plugins are named {ep.name!r}; block one of them")
            try:
                plugin = ep.load()
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"plugin {ep.name!r} failed to load: {exc}") from exc
            pm.register(plugin, name=ep.name)
            dist = ep.dist
            infos[ep.name] = PluginInfo(
                ep.name, dist.name if dist else None, dist.version if dist else None
            )
    for plugin in extra_plugins:
        registered = pm.register(plugin)
        if registered is not None:
            infos[registered] = PluginInfo(registered, None, None)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin has a hook rolegate does not define: {exc}") from exc
    registry = Registry(blocked=blocked)
    _collect(pm, registry, infos)
    registry.plugins = [infos[k] for k in sorted(infos)]
    return registry


def _collect(pm: pluggy.PluginManager, registry: Registry, infos: dict[str, PluginInfo]) -> None:
    owners: dict[tuple[str, str], str] = {}
    for plugin_name, plugin in sorted(pm.list_name_plugin(), key=lambda kv: kv[0]):
        if plugin is None:
            continue
        info = infos.setdefault(plugin_name, PluginInfo(plugin_name, None, None))

        def claim(kind: str, name: str, plugin_name: str = plugin_name) -> None:
            other = owners.get((kind, name))
            if other is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered by both plugin {other!r} and plugin "
                    f"{plugin_name!r}; block one with --block"
                )
            owners[(kind, name)] = plugin_name

        def add_provider(p: ProviderType, info: PluginInfo = info) -> None:
            claim("provider type", p.name)
            registry.providers[p.name] = p
            info.provides.append(f"provider:{p.name}")

        def add_embedder(e: EmbedderType, info: PluginInfo = info) -> None:
            claim("embedder type", e.name)
            registry.embedders[e.name] = e
            info.provides.append(f"embedder:{e.name}")

        def add_role(r: RoleKind, info: PluginInfo = info) -> None:
            claim("role kind", r.name)
            registry.roles[r.name] = r
            info.provides.append(f"role:{r.name}")

        def add_checker(c: Checker, info: PluginInfo = info) -> None:
            claim("checker", c.name)
            registry.checkers[c.name] = c
            info.provides.append(f"checker:{c.name}")

        def add_sink(sink: AuditSink, info: PluginInfo = info) -> None:
            if not callable(sink):
                raise PluginError(
                    f"plugin {info.name!r} registered an audit sink that is not callable: "
                    f"{type(sink).__name__}"
                )
            registry.audit_sinks.append(RegisteredSink(info.name, sink))
            info.provides.append("audit-sink")

        caller = pm.subset_hook_caller  # call one plugin at a time to know who registered what
        others = [p for n, p in pm.list_name_plugin() if n != plugin_name and p is not None]
        caller("register_providers", others)(register=add_provider)
        caller("register_embedders", others)(register=add_embedder)
        caller("register_roles", others)(register=add_role)
        caller("register_audit_sinks", others)(register=add_sink)
        caller("register_checkers", others)(register=add_checker)
