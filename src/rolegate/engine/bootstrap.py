"""Assembling an engine from a policy: plugins, provider pool, ledger, role kinds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from rolegate.engine.core import PolicyEngine
from rolegate.engine.providers import ProviderPool
from rolegate.engine.store import Store
from rolegate.errors import Code, RolegateError
from rolegate.ledger import Ledger, open_ledger
from rolegate.logs import ensure_configured
from rolegate.plugins.manager import Registry, build_registry
from rolegate.policy import Policy
from rolegate.policy.budget import utcnow

#: The role kind a role's authority implies, where the role names none.
KIND_OF_AUTHORITY = {"owner": "owner", "sidecar": "critic", "judge": "judge"}


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
    store = Store(policy, ledger=ledger, clock=clock)
    return PolicyEngine(policy, store, pool=pool, prompts=role_prompts(policy, registry))


def role_prompts(policy: Policy, registry: Registry) -> dict[str, str]:
    """Each role's default system prompt: its kind's, where the kind has one."""
    out: dict[str, str] = {}
    for name, role in policy.doc.roles.items():
        kind = registry.roles.get(KIND_OF_AUTHORITY[role.authority])
        if kind is not None and kind.system_prompt:
            out[name] = kind.system_prompt
    return out


def open_policy_ledger(policy: Policy, url: str | None) -> Ledger:
    """The ledger named on the command line, else in the policy, else the default SQLite file."""
    return open_ledger(url or policy.doc.ledger)
