"""The MCP resources: the active policy, the roles and models, and each task's record."""

from __future__ import annotations

import json

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from rolegate.engine.core import PolicyEngine
from rolegate.errors import Code, RolegateError


def add_resources(server: MCPServer, engine: PolicyEngine) -> None:
    @server.resource(
        "rolegate://policy",
        name="policy",
        title="Active policy",
        description="The active policy as canonical JSON, with its hash.",
        mime_type="application/json",
    )
    def policy_resource() -> str:
        p = engine.policy
        return json.dumps(
            {
                "name": p.name,
                "revision": p.revision,
                "hash": p.hash,
                "source": p.source,
                "policy": json.loads(p.canonical_json),
            },
            separators=(",", ":"),
        )

    @server.resource(
        "rolegate://roles",
        name="roles",
        title="Roles and models",
        description="Each role's model, fallback chain, escalation ladder and context limits.",
        mime_type="application/json",
    )
    def roles_resource() -> str:
        return json.dumps(engine.roles_overview(), separators=(",", ":"))

    @server.resource(
        "rolegate://tasks/{task_id}",
        name="task",
        title="Task",
        description="A task's stages, owners, critiques and escalations.",
        mime_type="application/json",
    )
    async def task_resource(task_id: str) -> str:
        try:
            task = await engine.task_view(task_id)
        except RolegateError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        if task is None:
            raise ResourceNotFoundError(
                f"{Code.UNKNOWN_TASK}: no task with this id has a record (an owner output, an "
                "escalation or a critique) in this ledger"
            )
        return json.dumps(task, separators=(",", ":"))
