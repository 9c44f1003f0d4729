"""MCP wiring and the command line."""
