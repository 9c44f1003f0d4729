"""Structured JSON logs on stderr; stdout belongs to MCP's stdio transport.

Never pass prompt or completion text to a logger: events carry ids, model
names, token counts, codes and timings only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) as JSON lines."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (httpx request lines, SDK internals) stays at WARNING.
    for noisy in ("httpx", "httpcore", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def ensure_configured() -> None:
    """Configure the defaults (INFO, stderr) unless the host already configured structlog:
    structlog's own default prints to stdout, which would corrupt the stdio transport."""
    if not structlog.is_configured():
        configure_logging()


def get_logger() -> Any:
    """A lazy logger: it picks up the configuration at first use, not at import."""
    return structlog.get_logger("rolegate")
