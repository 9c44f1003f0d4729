"""The MCP server: four tools and the policy/roles/tasks resources.

(No `from __future__ import annotations` here: the SDK evaluates tool annotations,
and run_role's Resolve parameter refers to a local resolver.)

Tool functions are thin: they turn flat, typed arguments into the engine's typed requests
and raise on failure; ``boundary.GatedServer`` is the single place where errors become MCP
tool errors (``isError`` with ``CODE: sentence``). The server's lifespan closes the provider
clients (and the ledger, when the server opened it). Every server has its own metrics
(``server/metrics.py``, in its own registry), served at ``GET /metrics`` by the HTTP transport.
"""

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from inspect import Parameter
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from rolegate import __version__
from rolegate.engine.core import PolicyEngine
from rolegate.engine.requests import BudgetQuery, EscalateRequest, RunRequest
from rolegate.engine.results import BudgetReport, EscalateResult, RouteResult, RunResult
from rolegate.policy import RouteRequest
from rolegate.policy.limits import (
    MAX_COUNT,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_NEEDS,
    MAX_PROMPT_CHARS,
    MAX_REASON_CHARS,
    MAX_TASK_CHARS,
    MAX_TOKENS,
    SIGNALS,
    signal_names,
)
from rolegate.server.boundary import GatedServer, ok
from rolegate.server.caller import McpCaller
from rolegate.server.consent import ConsentForm, consent_from, make_resolver
from rolegate.server.dashboard import dashboard_routes
from rolegate.server.metrics import METRICS_PATH, GenAiSpans, Metrics, metrics_endpoint
from rolegate.server.resources import add_resources

KEYWORD_ONLY = Parameter.KEYWORD_ONLY
INSTRUCTIONS = (
    "Rolegate enforces a model-routing policy. Call route_task to see which model a task would "
    "get (or why it is refused), run_role to run a prompt on the model bound to a role, "
    "check_budget before expensive calls, and escalate when a role's escalation signals fire."
)


# Free text is typed plain `str` (empty = not given): the SDK JSON-decodes string arguments
# of any other annotation, which would turn a prompt such as '{"a": 1}' or 'null' into data.
TEXT_NOTE = "Free text. "
NameArg = Annotated[str | None, Field(min_length=1, max_length=MAX_NAME_CHARS)]
# strict: a flag is true or false and a count a whole number, never 1, "yes" or 5.0.
TokensArg = Annotated[int | None, Field(ge=0, le=MAX_TOKENS, strict=True)]
FlagArg = Annotated[bool, Field(strict=True, description="Forbid cloud models.")]
OutputCapArg = Annotated[
    int | None, Field(ge=1, le=MAX_TOKENS, strict=True, description="Output cap.")
]
_SIGNAL_TYPES: dict[str, Any] = {"fraction": float, "count": int, "tokens": int, "flag": bool}
_SIGNAL_BOUNDS: dict[str, dict[str, Any]] = {
    "fraction": {"ge": 0, "le": 1, "allow_inf_nan": False},
    "count": {"ge": 0, "le": MAX_COUNT},
    "tokens": {"ge": 0, "le": MAX_TOKENS},
    "flag": {},
}


def _signal_parameters() -> list[inspect.Parameter]:
    """One optional keyword parameter per escalation signal, from the one signal table."""
    out = []
    for name in signal_names():
        spec = SIGNALS[name]
        field = Field(description=spec.description, strict=True, **_SIGNAL_BOUNDS[spec.kind])
        kind: Any = _SIGNAL_TYPES[spec.kind]
        annotation: Any = Annotated[kind | None, field]
        out.append(inspect.Parameter(name, KEYWORD_ONLY, default=None, annotation=annotation))
    return out


def _takes_signals(fn: Callable[..., Any], fixed: dict[str, tuple[Any, Any]]) -> None:
    """Give ``fn(**kwargs)`` the parameters ``fixed`` (name -> (annotation, default)) plus
    every signal, so the SDK derives the tool's schema and its resolver's from one table."""
    params = [
        inspect.Parameter(name, KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in fixed.items()
    ] + _signal_parameters()
    hints = inspect.get_annotations(fn)
    fn.__signature__ = inspect.Signature(params, return_annotation=hints.get("return"))  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": hints.get("return")}


def _given(kwargs: dict[str, Any]) -> dict[str, float | bool]:
    return {k: v for k, v in kwargs.items() if k in SIGNALS and v is not None}


def build_server(engine: PolicyEngine, *, close_ledger: bool = False) -> MCPServer:
    """An MCPServer exposing ``engine``. Configure logging before calling this.

    ``close_ledger``: the server owns the engine's ledger and closes it when it stops."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as group:
                # The classifier's examples are embedded (or read from the cache) while the
                # client connects, not in the first route_task.
                group.start_soon(engine.reader.warm)
                yield
                group.cancel_scope.cancel()
        finally:
            await engine.aclose()
            ledger = engine.store.ledger
            if close_ledger and ledger is not None:
                ledger.close()

    server = GatedServer(
        name="rolegate",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        lifespan=lifespan,
    )
    server.policy_hash = lambda: engine.policy.hash
    _add_metrics(server, engine)
    _add_dashboard(server, engine)
    _add_route_task(server, engine)
    _add_run_role(server, engine)
    _add_check_budget(server, engine)
    _add_escalate(server, engine)
    server.inline_output_schemas()
    add_resources(server, engine)
    return server


def _add_metrics(server: GatedServer, engine: PolicyEngine) -> None:
    """This server's metrics: fed by the boundary and by the engine's observer hook (call
    and decision events, ledger or not), served at /metrics (behind the same bearer token
    and Host/Origin checks as /mcp), and GenAI spans when OpenTelemetry is configured."""
    metrics = Metrics(engine)
    server.observer = metrics
    engine.store.observers += [metrics.observe, GenAiSpans(engine.policy).observe]
    endpoint = metrics_endpoint(metrics, lambda: server.http_security)
    server.custom_route(METRICS_PATH, methods=["GET"], include_in_schema=False)(endpoint)


READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def _add_route_task(server: MCPServer, engine: PolicyEngine) -> None:
    async def route_task(
        task: Annotated[
            str,
            Field(
                max_length=MAX_TASK_CHARS,
                description="What the work is, in words; used to classify it.",
            ),
        ],
        job: Annotated[NameArg, Field(description="Job name from the policy.")] = None,
        role: Annotated[NameArg, Field(description="Pin the role; default: by intent.")] = None,
        channel: Annotated[NameArg, Field(description="Output channel (cli, email...).")] = None,
        context_tokens: Annotated[
            TokensArg, Field(description="Tokens of attached material beyond the task text.")
        ] = None,
        needs: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]] | None,
            Field(max_length=MAX_NEEDS, description="Capabilities the model must have."),
        ] = None,
        local_only: FlagArg = False,
        risk: Annotated[
            Literal["low", "normal", "high"] | None,
            Field(description="'high' requires the policy's cloud judge."),
        ] = None,
        max_output_tokens: OutputCapArg = None,
    ) -> Annotated[CallToolResult, RouteResult]:
        request = RouteRequest(
            task=task,
            job=job,
            role=role,
            channel=channel,
            context_tokens=context_tokens,
            needs=tuple(needs or ()),
            local_only=local_only,
            risk=risk,
            max_output_tokens=max_output_tokens,
        )
        return ok(await engine.route_task(request))

    server.add_tool(
        route_task,
        description="Classify a task and pick the lowest-cost model the policy allows for it, "
        "or refuse with a reason code. Returns the decision and a decision_id.",
        # Read-only for the world: the decision record it keeps is the server's bookkeeping,
        # like its audit line, so clients may run it without asking.
        annotations=ToolAnnotations(
            read_only_hint=True, idempotent_hint=True, open_world_hint=False, title="Route task"
        ),
    )


def _add_run_role(server: MCPServer, engine: PolicyEngine) -> None:
    resolve_consent = make_resolver(engine)

    async def run_role(
        role: Annotated[str, Field(max_length=MAX_NAME_CHARS, description="Role name.")],
        ctx: Context,
        consent: Annotated[ElicitationResult[ConsentForm], Resolve(resolve_consent)],
        # Prompt sizes are checked by run_role itself: too long is OVER_BUDGET, not a typo.
        prompt: Annotated[str, Field(description=TEXT_NOTE + "The user prompt.")] = "",
        messages: Annotated[
            list[dict[str, str]] | None,
            Field(
                max_length=MAX_MESSAGES,
                description="Chat messages [{role: system|user|assistant, content}].",
            ),
        ] = None,
        system: Annotated[str, Field(description=TEXT_NOTE + "System prompt.")] = "",
        job: Annotated[NameArg, Field(description="Job name (premium allowlist, budgets).")] = None,
        task_id: Annotated[NameArg, Field(description="Work item id for the pipeline.")] = None,
        stage: Annotated[NameArg, Field(description="Pipeline stage this output owns.")] = None,
        decision_id: Annotated[
            NameArg,
            Field(description="A route_task decision to run; its constraints bind the run."),
        ] = None,
        max_output_tokens: OutputCapArg = None,
        channel: Annotated[NameArg, Field(description="Output channel (streaming rules).")] = None,
        local_only: FlagArg = False,
    ) -> Annotated[CallToolResult, RunResult]:
        request = RunRequest(
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
            local_only=local_only,
            consent=consent_from(consent),
        )
        return ok(await engine.run_role(request, McpCaller(ctx)))

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


def _add_check_budget(server: MCPServer, engine: PolicyEngine) -> None:
    async def check_budget(
        job: Annotated[NameArg, Field(description="Job name.")] = None,
        role: Annotated[NameArg, Field(description="Role name.")] = None,
        model: Annotated[NameArg, Field(description="Model id.")] = None,
        text: Annotated[
            str, Field(max_length=MAX_PROMPT_CHARS, description=TEXT_NOTE + "Input to count.")
        ] = "",
        input_tokens: Annotated[TokensArg, Field(description="Input tokens, if known.")] = None,
        output_tokens: Annotated[TokensArg, Field(description="Max output tokens.")] = None,
    ) -> Annotated[CallToolResult, BudgetReport]:
        query = BudgetQuery(
            job=job,
            role=role,
            model=model,
            text=text or None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        return ok(await engine.check_budget(query))

    server.add_tool(
        check_budget,
        description="Report spend, reservations and what is left per budget scope, and whether "
        "a call of a given size would fit the model's context and the budgets.",
        annotations=READ_ONLY,
    )


ReasonArg = Annotated[
    str,
    Field(max_length=MAX_REASON_CHARS, description="Free-text reason (never logged or stored)."),
]
#: The escalation consent resolver's own parameters (the signals are added to them).
CONSENT_PARAMS: dict[str, tuple[Any, Any]] = {
    "ctx": (Context, Parameter.empty),
    "role": (str, Parameter.empty),
    "task_id": (str | None, None),
    "job": (str | None, None),
    "local_only": (bool, False),
}


def _escalate_request(kwargs: dict[str, Any]) -> EscalateRequest:
    return EscalateRequest(
        role=kwargs["role"],
        signals=_given(kwargs),
        job=kwargs["job"],
        task_id=kwargs["task_id"],
        reason=kwargs.get("reason") or None,
        local_only=kwargs["local_only"],
        consent=consent_from(kwargs["consent"]) if "consent" in kwargs else None,
    )


def _add_escalate(server: MCPServer, engine: PolicyEngine) -> None:
    async def escalation_consent(**kwargs: Any) -> Elicit[ConsentForm] | None:
        """Ask before an escalation whose role demands consent, if one would happen."""
        ctx: Context = kwargs["ctx"]
        preview = await engine.preview_escalation(_escalate_request(kwargs))
        caps = ctx.client_capabilities
        if preview is None or caps is None or caps.elicitation is None:
            return None
        return Elicit(
            f"The policy asks before escalating role {kwargs['role']}: switch from "
            f"{preview[0]} to {preview[1]}?",
            ConsentForm,
        )

    _takes_signals(escalation_consent, CONSENT_PARAMS)

    async def escalate(**kwargs: Any) -> Annotated[CallToolResult, EscalateResult]:
        return ok(await engine.escalate(_escalate_request(kwargs)))

    _takes_signals(
        escalate,
        {
            "role": (
                Annotated[str, Field(max_length=MAX_NAME_CHARS, description="The role.")],
                Parameter.empty,
            ),
            "consent": (
                Annotated[ElicitationResult[ConsentForm], Resolve(escalation_consent)],
                Parameter.empty,
            ),
            "task_id": (Annotated[NameArg, Field(description="Work item id.")], None),
            "job": (Annotated[NameArg, Field(description="Job name.")], None),
            "local_only": (FlagArg, False),
            "reason": (ReasonArg, ""),
        },
    )
    server.add_tool(
        escalate,
        name="escalate",
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


def _add_dashboard(server: GatedServer, engine: PolicyEngine) -> None:
    """GET /dashboard and /dashboard.json: behind the same bearer token (BearerAuth wraps
    the whole app in serve.py) and Host/Origin checks as /mcp."""
    for route in dashboard_routes(engine, security=lambda: server.http_security):
        server.custom_route(route.path, methods=["GET"], include_in_schema=False)(route.endpoint)
