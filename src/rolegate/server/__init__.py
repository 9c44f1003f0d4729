"""The MCP server: tools and resources over the engine (``app``, ``resources``), the one
error boundary (``boundary``), the request context as the engine's caller (``caller``,
``consent``), and the transports (``serve``: stdio and Streamable HTTP; ``http``: its
hardening). Nothing here decides a route or touches the ledger directly."""
