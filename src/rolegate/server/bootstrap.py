"""Assembling the service from a policy: plugins, providers, ledger."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rolegate.errors import Code, RolegateError
from rolegate.ledger import Ledger, open_ledger
from rolegate.plugins.manager import Registry, build_registry
from rolegate.policy import Policy
from rolegate.server.logs import ensure_configured
from rolegate.server.runner import Runner
from rolegate.server.service import Rolegate


def build_service(
    policy: Policy,
    *,
    block: Iterable[str] = (),
    ledger: Ledger | None = None,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
    transports: Mapping[str, Any] | None = None,
) -> Rolegate:
    """The service with plugins loaded; fails closed when a provider type has no plugin."""
    ensure_configured()
    registry = registry or build_registry(block=block)
    runner = Runner(policy, registry, env=env, transports=transports)
    missing = runner.missing_provider_types()
    if missing:
        raise RolegateError(
            f"the policy uses provider type(s) {missing} that no loaded plugin provides; "
            "install the plugin or unblock it",
            code=Code.PROVIDER_UNAVAILABLE,
        )
    prompts = {
        name: kind.system_prompt for name, kind in registry.roles.items() if kind.system_prompt
    }
    return Rolegate(policy, runner=runner, ledger=ledger, role_prompts=prompts)


def open_policy_ledger(policy: Policy, url: str | None) -> Ledger:
    """The ledger named on the command line, else in the policy, else the default SQLite file."""
    return open_ledger(url or policy.doc.ledger)
