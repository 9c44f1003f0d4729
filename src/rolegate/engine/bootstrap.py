"""Assembling an engine from a policy: plugins, provider pool, ledger, role kinds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from rolegate.engine.core import PolicyEngine
from rolegate.engine.providers import ProviderPool
from rolegate.engine.store import Store
from rolegate.engine.understanding import build_reader
from rolegate.errors import Code, RolegateError
from rolegate.ledger import Ledger, open_ledger
from rolegate.logs import ensure_configured
from rolegate.plugins.kinds import default_prompts, resolve_role_kinds
from rolegate.plugins.manager import Registry, build_registry
from rolegate.plugins.sinks import AuditSinks
from rolegate.policy import Policy
from rolegate.policy.budget import utcnow
from rolegate.topology.residency import Residency
from rolegate.topology.servers import Servers, default_state_dir


def build_engine(
    policy: Policy,
    *,
    block: Iterable[str] = (),
    ledger: Ledger | None = None,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
    transports: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> PolicyEngine:
    """The engine with plugins loaded; fails closed when a provider type has no plugin."""
    ensure_configured()
    registry = registry or build_registry(block=block)
    pool = ProviderPool(policy, registry, env=env, transports=transports)
    missing = pool.missing_provider_types()
    if missing:
        raise RolegateError(
            f"the policy uses provider type(s) {missing} that no loaded plugin provides; "
            "install the plugin or unblock it",
            code=Code.PROVIDER_UNAVAILABLE,
        )
    kinds = resolve_role_kinds(policy.doc.roles, registry.roles)  # PLUGIN_ERROR if unknown
    sinks = AuditSinks.from_registry(registry)
    store = Store(policy, ledger=ledger, clock=clock, sinks=sinks)
    residency = None
    if policy.managed:  # models whose residency is tracked: see rolegate.topology
        servers = Servers(default_state_dir(pool.env))
        residency = Residency(policy, servers, pool.client)
    engine = PolicyEngine(
        policy, store, pool=pool, prompts=default_prompts(kinds), residency=residency
    )
    engine.reader = build_reader(
        policy, registry, engine.calls, pool.env, transports or {}
    )  # PLUGIN_ERROR when the classifier's embedder type is not loaded
    return engine


def open_policy_ledger(policy: Policy, url: str | None) -> Ledger:
    """The ledger named on the command line, else in the policy, else the default SQLite file."""
    return open_ledger(url or policy.doc.ledger)
