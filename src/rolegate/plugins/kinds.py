"""Which role kind each policy role has: ``kind: <name>``, or the default for its authority.

A role kind (``register_roles``) carries a default system prompt and an authority. At
server start every policy role is resolved to a loaded kind; the server refuses to start
(PLUGIN_ERROR) when a role names a kind that no loaded plugin provides, or a kind whose
authority differs from the role's. Pure: no plugin loading, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from rolegate.errors import PluginError
from rolegate.plugins.base import RoleKind
from rolegate.policy.schema import Role

DEFAULT_KINDS: Final[Mapping[str, str]] = {
    "owner": "owner",
    "sidecar": "critic",
    "judge": "judge",
}
"""The kind a role without ``kind:`` has, by its authority (the built-in kinds)."""


def kind_name(role: Role) -> str:
    """The kind a role asks for: its ``kind``, else the default for its authority."""
    return role.kind if role.kind is not None else DEFAULT_KINDS[role.authority]


def resolve_role_kinds(
    roles: Mapping[str, Role], kinds: Mapping[str, RoleKind]
) -> dict[str, RoleKind]:
    """Map every role name to its kind; raise one ``PluginError`` listing every problem.

    ``roles`` is the policy's ``doc.roles``; ``kinds`` is ``Registry.roles``.
    """
    resolved: dict[str, RoleKind] = {}
    problems: list[str] = []
    available = sorted(kinds)
    for role_name in sorted(roles):
        role = roles[role_name]
        name = kind_name(role)
        kind = kinds.get(name)
        if kind is None:
            if role.kind is not None:
                problems.append(
                    f"role {role_name!r} asks for kind {name!r}, which no loaded plugin "
                    f"provides (loaded kinds: {available}); install or unblock the plugin "
                    "that provides it, or pick a loaded kind"
                )
            else:
                problems.append(
                    f"role {role_name!r} has no 'kind', so its authority {role.authority!r} "
                    f"gives it kind {name!r}, which no loaded plugin provides (loaded kinds: "
                    f"{available}); unblock the built-in 'roles' plugin, or give the role "
                    "a 'kind'"
                )
            continue
        if kind.authority != role.authority:
            problems.append(
                f"role {role_name!r} has authority {role.authority!r} but its kind {name!r} "
                f"is for {kind.authority!r} roles; set the role's authority to "
                f"{kind.authority!r} or pick a kind for {role.authority!r} roles"
            )
            continue
        resolved[role_name] = kind
    if problems:
        raise PluginError(
            f"the policy's roles do not match the loaded role kinds: {'; '.join(problems)}"
        )
    return resolved


def default_prompts(resolved: Mapping[str, RoleKind]) -> dict[str, str]:
    """Role name -> its kind's system prompt, for the roles whose kind has one."""
    return {role: kind.system_prompt for role, kind in resolved.items() if kind.system_prompt}
