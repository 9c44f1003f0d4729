"""The MCP server: four tools and the policy/roles/tasks resources.

(No `from __future__ import annotations` here: the SDK evaluates tool annotations,
and run_role's Resolve parameter refers to a local resolver.)

Tool functions are thin: they turn flat, typed arguments into service calls.
``_boundary`` is the single place where errors become MCP tool errors
(``isError`` with ``CODE: sentence``); nothing else catches broadly.
"""

import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from rolegate import __version__
from rolegate.errors import Code, RolegateError
from rolegate.server.consent import ConsentForm, consent_from, make_resolver
from rolegate.server.logs import get_logger
from rolegate.server.models import BudgetReport, EscalateResult, RouteResult, RunResult
from rolegate.server.service import Rolegate

log = get_logger()

INSTRUCTIONS = (
    "Rolegate enforces a model-routing policy. Call route_task to see which model a task would "
    "get (or why it is refused), run_role to run a prompt on the model bound to a role, "
    "check_budget before expensive calls, and escalate when a role's escalation signals fire."
)


async def _boundary(
    tool: str, call: Callable[[], Awaitable[BaseModel]], hash_: str
) -> CallToolResult:
    """Run ``call``; turn its result or error into a CallToolResult. Logs no text."""
    started = time.perf_counter()
    try:
        result = await call()
    except RolegateError as exc:
        log.info(
            "tool_call",
            tool=tool,
            outcome=str(exc.code),
            policy_hash=hash_,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
    except Exception as exc:  # noqa: BLE001 - the one error boundary: nothing crashes the server
        # Not log.exception: a traceback message could carry caller text; the type is enough.
        log.error(  # noqa: TRY400
            "tool_call",
            tool=tool,
            outcome=str(Code.INTERNAL_ERROR),
            error_type=type(exc).__name__,
            policy_hash=hash_,
        )
        text = (
            f"{Code.INTERNAL_ERROR}: rolegate failed unexpectedly ({type(exc).__name__}); "
            "the server is still running and the policy is unchanged"
        )
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    data = result.model_dump(mode="json")
    log.info(
        "tool_call",
        tool=tool,
        outcome=data.get("code", "OK"),
        policy_hash=hash_,
        model=data.get("model") or data.get("to_model") or _check_model(data),
        max_input_tokens=_tokens_field(data, "max_input_tokens"),
        reserve_tokens=_tokens_field(data, "reserve_tokens"),
        input_tokens=_tokens_field(data, "input_tokens"),
        ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, separators=(",", ":")))],
        structured_content=data,
    )


# Free text is typed plain `str` (empty = not given): the SDK JSON-decodes string arguments
# of any other annotation, which would turn a prompt such as '{"a": 1}' or 'null' into data.
TEXT_NOTE = "Free text. "


def _check_model(data: dict[str, Any]) -> Any:
    check = data.get("check")
    return check.get("model") if isinstance(check, dict) else None


def _tokens_field(data: dict[str, Any], key: str) -> Any:
    """``key`` from the first of the result's token-bearing parts that has it."""
    for part in ("tokens", "check", "usage"):
        section = data.get(part)
        if isinstance(section, dict) and section.get(key) is not None:
            return section[key]
    return data.get(key)


def _signals(
    confidence: float | None,
    failed_loops: int | None,
    context_estimate: int | None,
    contradictions: bool | None,
    tool_heavy: bool | None,
    full_sweep: bool | None,
    high_risk: bool | None,
    user_request: bool | None,
) -> dict[str, float | bool]:
    given = {
        "confidence": confidence,
        "failed_loops": failed_loops,
        "context_estimate": context_estimate,
        "contradictions": contradictions,
        "tool_heavy": tool_heavy,
        "full_sweep": full_sweep,
        "high_risk": high_risk,
        "user_request": user_request,
    }
    return {k: v for k, v in given.items() if v is not None}


def build_server(service: Rolegate) -> MCPServer:
    """An MCPServer exposing ``service``. Configure logging before calling this."""
    server = MCPServer(
        name="rolegate", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )

    def hash_() -> str:
        return service.policy.hash

    resolve_consent = make_resolver(service)

    async def route_task(
        task: Annotated[str, Field(description="What the work is, in words; used to classify it.")],
        job: Annotated[str | None, Field(description="Job name from the policy.")] = None,
        role: Annotated[str | None, Field(description="Pin the role; default: by intent.")] = None,
        channel: Annotated[str | None, Field(description="Output channel (cli, email...).")] = None,
        context_tokens: Annotated[
            int | None, Field(description="Tokens of attached material beyond the task text.")
        ] = None,
        needs: Annotated[
            list[str] | None, Field(description="Capabilities the model must have.")
        ] = None,
        local_only: Annotated[bool, Field(description="Forbid cloud models.")] = False,
        risk: Annotated[
            Literal["low", "normal", "high"] | None,
            Field(description="'high' requires the policy's cloud judge."),
        ] = None,
    ) -> Annotated[CallToolResult, RouteResult]:
        async def call() -> BaseModel:
            request = service.route_request(
                task,
                job=job,
                role=role,
                channel=channel,
                context_tokens=context_tokens,
                needs=needs,
                local_only=local_only,
                risk=risk,
            )
            return await service.route_task(request)

        return await _boundary("route_task", call, hash_())

    async def run_role(
        role: Annotated[str, Field(description="Role name from the policy.")],
        ctx: Context,
        consent: Annotated[ElicitationResult[ConsentForm], Resolve(resolve_consent)],
        prompt: Annotated[
            str, Field(description=TEXT_NOTE + "The user prompt (or messages).")
        ] = "",
        messages: Annotated[
            list[dict[str, str]] | None,
            Field(description="Chat messages [{role: system|user|assistant, content}]."),
        ] = None,
        system: Annotated[str, Field(description=TEXT_NOTE + "System prompt.")] = "",
        job: Annotated[
            str | None, Field(description="Job name (premium allowlist, budgets).")
        ] = None,
        task_id: Annotated[str | None, Field(description="Work item id for the pipeline.")] = None,
        stage: Annotated[str | None, Field(description="Pipeline stage this output owns.")] = None,
        decision_id: Annotated[
            str | None, Field(description="A route_task decision to run exactly.")
        ] = None,
        max_output_tokens: Annotated[int | None, Field(description="Output cap.", ge=1)] = None,
        channel: Annotated[
            str | None, Field(description="Output channel (streaming rules).")
        ] = None,
    ) -> Annotated[CallToolResult, RunResult]:
        async def call() -> BaseModel:
            return await service.run_role(
                consent=consent_from(consent),
                role=role,
                prompt=prompt or None,
                messages=messages,
                system=system or None,
                job=job,
                task_id=task_id,
                stage=stage,
                decision_id=decision_id,
                max_output_tokens=max_output_tokens,
                channel=channel,
                ctx=ctx,
            )

        return await _boundary("run_role", call, hash_())

    async def check_budget(
        job: Annotated[str | None, Field(description="Job name.")] = None,
        role: Annotated[str | None, Field(description="Role name.")] = None,
        model: Annotated[str | None, Field(description="Model id.")] = None,
        text: Annotated[str, Field(description=TEXT_NOTE + "Input text to count.")] = "",
        input_tokens: Annotated[int | None, Field(description="Input tokens, if known.")] = None,
        output_tokens: Annotated[int | None, Field(description="Max output tokens.")] = None,
    ) -> Annotated[CallToolResult, BudgetReport]:
        async def call() -> BaseModel:
            return service.check_budget(
                job=job,
                role=role,
                model=model,
                text=text or None,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )

        return await _boundary("check_budget", call, hash_())

    async def escalation_consent(
        ctx: Context,
        role: str,
        task_id: str | None = None,
        job: str | None = None,
        confidence: float | None = None,
        failed_loops: int | None = None,
        context_estimate: int | None = None,
        contradictions: bool | None = None,
        tool_heavy: bool | None = None,
        full_sweep: bool | None = None,
        high_risk: bool | None = None,
        user_request: bool | None = None,
    ) -> Elicit[ConsentForm] | None:
        """Ask before an escalation whose role demands consent, if one would happen."""
        signals = _signals(
            confidence,
            failed_loops,
            context_estimate,
            contradictions,
            tool_heavy,
            full_sweep,
            high_risk,
            user_request,
        )
        preview = service.preview_escalation(role, signals, job=job, task_id=task_id)
        caps = ctx.client_capabilities
        if preview is None or caps is None or caps.elicitation is None:
            return None
        return Elicit(
            f"The policy asks before escalating role {role}: switch from {preview[0]} to "
            f"{preview[1]}?",
            ConsentForm,
        )

    async def escalate(
        role: Annotated[str, Field(description="The role whose work may need escalating.")],
        consent: Annotated[ElicitationResult[ConsentForm], Resolve(escalation_consent)],
        task_id: Annotated[str | None, Field(description="Work item id.")] = None,
        job: Annotated[str | None, Field(description="Job name.")] = None,
        confidence: Annotated[float | None, Field(description="Self-reported confidence.")] = None,
        failed_loops: Annotated[int | None, Field(description="Failed compile/test loops.")] = None,
        context_estimate: Annotated[int | None, Field(description="Context tokens needed.")] = None,
        contradictions: Annotated[bool | None, Field(description="Contradictions found.")] = None,
        tool_heavy: Annotated[bool | None, Field(description="Tool-heavy work.")] = None,
        full_sweep: Annotated[bool | None, Field(description="A full sweep is needed.")] = None,
        high_risk: Annotated[bool | None, Field(description="High-risk change.")] = None,
        user_request: Annotated[bool | None, Field(description="The user asked.")] = None,
        reason: Annotated[str, Field(description="Free-text reason (never logged).")] = "",
    ) -> Annotated[CallToolResult, EscalateResult]:
        signals = _signals(
            confidence,
            failed_loops,
            context_estimate,
            contradictions,
            tool_heavy,
            full_sweep,
            high_risk,
            user_request,
        )

        async def call() -> BaseModel:
            return await service.escalate(
                role,
                signals,
                job=job,
                task_id=task_id,
                reason=reason or None,
                consent=consent_from(consent),
            )

        return await _boundary("escalate", call, hash_())

    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    server.add_tool(
        route_task,
        description="Classify a task and pick the lowest-cost model the policy allows for it, "
        "or refuse with a reason code. Returns the decision and a decision_id.",
        annotations=ToolAnnotations(
            read_only_hint=True, idempotent_hint=True, open_world_hint=False, title="Route task"
        ),
    )
    server.add_tool(
        run_role,
        description="Run a prompt on the model the policy binds to a role, under the policy's "
        "context, locality, allowlist, budget, concurrency and fallback rules.",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
            title="Run role",
        ),
    )
    server.add_tool(
        check_budget,
        description="Report spend, reservations and what is left per budget scope, and whether "
        "a call of a given size would fit the model's context and the budgets.",
        annotations=read_only,
    )
    server.add_tool(
        escalate,
        description="Evaluate the policy's escalation predicates for a role and pick the next "
        "allowed model on its ladder, with a provenance record.",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
            title="Escalate",
        ),
    )

    @server.resource(
        "rolegate://policy",
        name="policy",
        title="Active policy",
        description="The active policy as canonical JSON, with its hash.",
        mime_type="application/json",
    )
    def policy_resource() -> str:
        p = service.policy
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
        return json.dumps(service.roles_overview(), separators=(",", ":"))

    @server.resource(
        "rolegate://tasks/{task_id}",
        name="task",
        title="Task",
        description="A task's stages, owners, critiques and escalations.",
        mime_type="application/json",
    )
    def task_resource(task_id: str) -> str:
        task = service.task_view(task_id)
        if task is None:
            raise ResourceNotFoundError(f"no task {task_id!r}")
        return json.dumps(task, separators=(",", ":"))

    return server
