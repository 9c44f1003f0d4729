"""The one error boundary: every tool call's outcome becomes a result or ``CODE: sentence``.

The SDK reports a bad call in its own words (``Error executing tool x: 1 validation error
for xArguments ...``, ``Unknown tool: y``), echoing the caller's values, and silently drops
arguments a tool does not declare. ``GatedServer.call_tool`` sits where the SDK dispatches
every ``tools/call``: it refuses unknown tools and unknown arguments, turns validation
failures into INVALID_ARGUMENT naming the fields (never their values), a RolegateError
raised by a tool into its own code and sentence, and anything else into INTERNAL_ERROR.
It also writes the one log line per call (ids, codes, counts, timing; never text), and
tells its observer (the server's metrics) each call's tool, code, refusal and time.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, InputRequiredResult, TextContent
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette

from rolegate.engine.store import SESSION
from rolegate.engine.text import encodable
from rolegate.errors import Code, RefusedError, RolegateError
from rolegate.logs import get_logger

log = get_logger()
_SHOWN_NAME_CHARS = 64


def _encodable_data(value: Any) -> Any:
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return {encodable(str(k)): _encodable_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable_data(v) for v in value]
    return value


def ok(result: BaseModel) -> CallToolResult:
    """A tool's result: compact JSON text plus the same data as structured content."""
    data = result.model_dump(mode="json")
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if encodable(text) is not text:  # rare: only then walk the data
        data = _encodable_data(data)
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def failure(code: Code, sentence: str) -> CallToolResult:
    text = encodable(f"{code}: {sentence}")
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """``{"$ref": "#/$defs/X"}`` replaced by X itself (recursively; no def is recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


class ToolObserver(Protocol):
    def tool_call(self, tool: str, code: str, refused: bool, elapsed_s: float) -> None:
        """``tool``: a registered tool's name, or ``(unknown)``; ``code``: ``OK`` or the
        error's code; ``refused``: the policy refused the call (see ``_refused``)."""


UNKNOWN_TOOL_LABEL = "(unknown)"
SDK_LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Binds the SDK protects with its own Host/Origin settings when it is given none."""


class GatedServer(MCPServer):
    """An MCPServer whose tool calls all pass through one boundary."""

    policy_hash: Callable[[], str] = staticmethod(lambda: "")
    observer: ToolObserver | None = None
    # The Host/Origin settings of the last HTTP app built, for routes beside /mcp.
    http_security: TransportSecuritySettings | None = None

    def streamable_http_app(self, **kwargs: Any) -> Starlette:
        """The SDK's app; remembers its Host/Origin settings for ``/metrics``. Without
        settings, the SDK protects loopback binds with its own; so does this."""
        security = kwargs.get("transport_security")
        if security is None and kwargs.get("host", "127.0.0.1") in SDK_LOOPBACK:
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        self.http_security = security
        return super().streamable_http_app(**kwargs)

    def inline_output_schemas(self) -> None:
        """Publish every tool's output schema with its ``$defs`` inlined: the same schema,
        far cheaper for clients that validate each result against it (``$ref`` resolution
        dominates a jsonschema validation). The SDK reads this field live."""
        for tool in self._tool_manager.list_tools():
            schema = tool.fn_metadata.output_schema
            if schema and "$defs" in schema:
                defs = schema["$defs"]
                rest = {k: v for k, v in schema.items() if k != "$defs"}
                tool.fn_metadata.output_schema = _inline_refs(rest, defs)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        started = time.perf_counter()
        token = SESSION.set(session_of(context))
        try:
            result, refused = await self._gate(name, arguments, context)
        finally:
            SESSION.reset(token)
        if isinstance(result, CallToolResult):
            elapsed = time.perf_counter() - started
            # An unknown tool's name is the caller's text: it is never logged or counted.
            known = self._tool_manager.get_tool(name) is not None
            logged = name if known else UNKNOWN_TOOL_LABEL
            _log_call(logged, result, self.policy_hash(), elapsed)
            if self.observer is not None:
                code = _error_code(result) if result.is_error else "OK"
                self.observer.tool_call(logged, code, refused, elapsed)
        return result

    async def _gate(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None
    ) -> tuple[CallToolResult | InputRequiredResult, bool]:
        """The call's result, and whether the policy refused it."""
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            known = ", ".join(t.name for t in self._tool_manager.list_tools())
            return failure(
                Code.UNKNOWN_TOOL, f"there is no such tool; the tools are {known}"
            ), False
        declared = set(tool.parameters.get("properties", {}))
        unknown = sorted(set(arguments) - declared)
        if unknown:
            shown = ", ".join(repr(a[:_SHOWN_NAME_CHARS]) for a in unknown[:5])
            return failure(
                Code.INVALID_ARGUMENT,
                f"{name} has no argument(s) {shown}; it takes {', '.join(sorted(declared))}",
            ), False
        try:
            return await super().call_tool(name, arguments, context), False
        except ToolError as exc:  # UnexpectedToolError is a ToolError too
            return _from_tool_error(name, exc), _refused(exc.__cause__)
        except MCPError as exc:
            # Raised through a resolver when the client fails the consent question (an error
            # answer, or a form it cannot show): nobody consented.
            log.info("consent_unanswered", tool=name, mcp_code=exc.error.code)
            return failure(
                Code.NEEDS_CONSENT,
                "the client could not answer the consent question this call needs; answer it, "
                "or use a client that supports form elicitation",
            ), True


def _refused(cause: BaseException | None) -> bool:
    """A refusal is the policy saying no (a RefusedError: BUDGET_EXHAUSTED,
    LOCAL_ONLY_VIOLATION, NEEDS_CONSENT, MODEL_COLD, ...), or input too large (OVER_BUDGET);
    not a malformed request, a failed provider or a crash."""
    if isinstance(cause, RefusedError):
        return True
    return isinstance(cause, RolegateError) and cause.code is Code.OVER_BUDGET


def _error_code(result: CallToolResult) -> str:
    """The code of a ``CODE: sentence`` tool error."""
    first = result.content[0] if result.content else None
    text = first.text if isinstance(first, TextContent) else ""
    return text.split(":", 1)[0] or str(Code.INTERNAL_ERROR)


def _from_tool_error(tool: str, exc: ToolError) -> CallToolResult:
    cause = exc.__cause__
    if isinstance(cause, RolegateError):
        return failure(cause.code, cause.message)
    if isinstance(cause, ValidationError):
        return failure(Code.INVALID_ARGUMENT, _validation_sentence(tool, cause))
    text = str(exc)
    if "Resolver" in text:  # a consent answer that does not fit its form, or none at all
        return failure(
            Code.INVALID_ARGUMENT,
            "the answer to the consent question did not fit its form ({switch: true|false}); "
            "call the tool again and answer the question",
        )
    # Not log.exception: a traceback could carry caller text; the type is enough.
    log.error(
        "tool_crash", tool=tool, error_type=type(cause).__name__ if cause else type(exc).__name__
    )
    return failure(
        Code.INTERNAL_ERROR,
        f"rolegate failed unexpectedly ({type(cause).__name__ if cause else 'ToolError'}); "
        "the server is still running and the policy is unchanged",
    )


def _validation_sentence(tool: str, exc: ValidationError) -> str:
    """Which arguments are wrong and what they must be; never the values given."""
    parts: list[str] = []
    for err in exc.errors(include_input=False, include_url=False)[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where[:_SHOWN_NAME_CHARS]}: {_plain(err)}")
    more = len(exc.errors()) - len(parts)
    tail = f" (and {more} more)" if more > 0 else ""
    return f"invalid arguments for {tool}: " + "; ".join(parts) + tail


def _plain(err: Any) -> str:
    """pydantic's message, which names the rule but not the input (inputs are excluded)."""
    kind = err.get("type", "")
    if kind == "missing":
        return "required"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def _log_call(tool: str, result: CallToolResult, hash_: str, elapsed_s: float) -> None:
    ms = round(elapsed_s * 1000, 3)
    if result.is_error:
        log.info("tool_call", tool=tool, outcome=_error_code(result), policy_hash=hash_, ms=ms)
        return
    data = result.structured_content or {}
    log.info(
        "tool_call",
        tool=tool,
        outcome=data.get("code", "OK"),
        policy_hash=hash_,
        model=data.get("model") or data.get("to_model") or _check_model(data),
        max_input_tokens=_tokens_field(data, "max_input_tokens"),
        reserve_tokens=_tokens_field(data, "reserve_tokens"),
        input_tokens=_tokens_field(data, "input_tokens"),
        ms=ms,
    )


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


#: One label per connection-scoped session object that came without a session id (stdio,
#: an in-process client): stable while it lives, gone with it.
_CONNECTIONS: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def session_of(context: Context[Any, Any] | None) -> str | None:
    """The MCP session of a call: Streamable HTTP's ``mcp-session-id``, else one label per
    connection (a stdio client, an in-process one); None outside a request."""
    try:
        request_context = context.request_context if context is not None else None
    except ValueError:  # not inside a request
        return None
    if request_context is None or request_context.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None  # the stateless era: every request stands alone, there is no session
    headers = getattr(request_context.request, "headers", None)
    found = headers.get("mcp-session-id") if headers is not None else None
    if isinstance(found, str) and found:
        return found[:128]
    # The SDK makes a ServerSession per request around one Connection per client: the
    # connection is what lives as long as the client's session does.
    connection = getattr(request_context.session, "_connection", request_context.session)
    label = _CONNECTIONS.get(connection)
    if label is None:
        label = _CONNECTIONS.setdefault(connection, "conn_" + uuid.uuid4().hex[:12])
    return label
