"""The hooks a rolegate plugin may implement.

Every hook takes a ``register`` callback instead of returning a value, so one
plugin can register several things and results never depend on the order in
which pluggy calls the implementations: the registry collects everything and
refuses duplicate names, naming both plugins.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from rolegate.plugins.base import ProviderType, RoleKind

PROJECT = "rolegate"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_providers(register: Callable[[ProviderType], None]) -> None:
    """Register provider types, one ``register(provider_type)`` call each.

    Every implementation is called. ``provider_type.name`` is the value a
    policy's ``providers.<x>.type`` uses; two plugins registering the same name
    is an error that names both.
    """


@hookspec
def register_roles(register: Callable[[RoleKind], None]) -> None:
    """Register role kinds, one ``register(role_kind)`` call each.

    Every implementation is called; names must be unique across plugins. A
    policy role picks a kind with ``kind: <name>`` (default: ``owner``).
    """


@hookspec
def register_audit_sinks(register: Callable[[Callable[[dict[str, object]], None]], None]) -> None:
    """Register callables that receive every audit record (ids, codes, counts; never text).

    Every implementation is called; every sink receives every record. A sink
    must not block: it runs inline on the request path.
    """
