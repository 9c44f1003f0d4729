"""The comparison baseline for bench_server.py: the smallest MCPServer, one tool, stdio.

Run: python benchmarks/bare_server.py

Nothing but the SDK: no policy, no plugins, no structured logging. The tool is async,
like rolegate's four tools, so both servers answer on the event loop (a sync tool would
add a worker-thread hop that rolegate does not pay). log_level matches rolegate's.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("bare", log_level="WARNING")


@server.tool()
async def ping(msg: str = "") -> str:
    """Reply pong."""
    return f"pong {msg}"


if __name__ == "__main__":
    server.run()
