"""The MCP request context as the engine's ``Caller``: progress out, consent questions in."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params

from rolegate.server.consent import ConsentForm, elicit_consent


class McpCaller:
    """One tools/call's client: streams partial output as progress notifications where the
    client asked for progress, and asks for consent mid-call where its era allows it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.wants_progress = _wants_progress(ctx)

    async def progress(self, chunks: int, text: str) -> None:
        await self.ctx.report_progress(chunks, None, text)

    async def ask(self, question: str) -> bool | None:
        if not _can_elicit_now(self.ctx):
            return None
        return await elicit_consent(self.ctx, question, ConsentForm)


def _can_elicit_now(ctx: Any) -> bool:
    caps = getattr(ctx, "client_capabilities", None)
    version = str(getattr(ctx, "protocol_version", "") or "")
    # The 2026-07-28 era has no server-to-client requests; consent is asked up front there.
    return caps is not None and caps.elicitation is not None and not version.startswith("2026")


def _wants_progress(ctx: Any) -> bool:
    """Did the client ask for progress? Without that the SDK sends nothing, so nothing may be
    reported as streamed. On the wire the ask is a progress token in the request; an
    in-process client hands its callback to the request's channel instead (the SDK keeps
    either on that channel; unknown channels count as not asking)."""
    request = getattr(ctx, "request_context", None)
    if progress_token_from_params(getattr(request, "params", None)) is not None:
        return True
    channel = getattr(getattr(request, "session", None), "_request_outbound", None)
    channel = getattr(channel, "_inner", channel)  # the 2026 era wraps the request's channel
    held = (getattr(channel, name, None) for name in ("_progress_token", "_on_progress"))
    return any(value is not None for value in held)
