"""Rolegate: an MCP server that makes a written model-routing policy executable."""

__version__ = "0.1.0"
