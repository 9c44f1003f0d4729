"""Structured JSON logs on stderr; stdout belongs to MCP's stdio transport.

Every line is one JSON object, whether it comes from rolegate's structlog events or from a
stdlib ``logging`` record (httpx, the MCP SDK, uvicorn, asyncio, ``warnings``).

Never pass prompt or completion text to a logger: rolegate's events carry ids, model names,
token counts, codes and timings only. Library records are not trusted: their formatted
message, arguments and tracebacks may quote caller text (a tool argument, a Host header), so
they are reduced to the logger name, the level, the format template (only when the record
had arguments, so the template itself holds no data) and the exception type.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import types
import warnings
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

OMITTED = "library log record (message omitted: it may carry caller text)"
WARNING_EVENT = "python warning (message omitted: it may carry caller text)"

# Library chatter (httpx request lines, SDK internals, uvicorn access lines) stays at WARNING.
NOISY_LOGGERS = ("httpx", "httpcore", "mcp", "uvicorn.access")


def _error_type(exc_info: Any) -> str | None:
    """The exception's type name from any form structlog or logging accept; never its text."""
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        return type(exc_info).__name__
    if isinstance(exc_info, tuple) and exc_info and isinstance(exc_info[0], type):
        return exc_info[0].__name__
    return None


def exception_to_type(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace ``exc_info`` (``log.exception``) by ``error_type``: no traceback, no message."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("exception", None)
    event_dict.pop("stack_info", None)
    name = _error_type(exc_info) if exc_info else None
    if name is not None:
        event_dict.setdefault("error_type", name)
    return event_dict


def redact_foreign_record(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Rebuild a library record's event dict from what cannot carry caller text."""
    record: logging.LogRecord = event_dict["_record"]
    args = event_dict.get("positional_args")
    out: EventDict = {
        "_record": record,
        "_from_structlog": False,
        "logger": record.name,
        "level": record.levelname.lower(),
    }
    category = getattr(record, "warning_category", None)
    if category:
        out["event"] = WARNING_EVENT
        out["warning_category"] = category
        out["warning_location"] = getattr(record, "warning_location", None)
    elif args and isinstance(record.msg, str):
        out["event"] = record.msg
    else:
        out["event"] = OMITTED
    name = _error_type(record.exc_info) if record.exc_info else None
    if isinstance(record.msg, BaseException):  # logger.error(exc), as uvicorn does
        name = name or type(record.msg).__name__
        if isinstance(record.msg, OSError) and isinstance(record.msg.errno, int):
            out["errno"] = record.msg.errno  # e.g. 98: the port is in use
    if name is not None:
        out["error_type"] = name
    return out


def _add_logger_name(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("logger", record.name)
    return event_dict


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """A stream handler whose own failures are reported as a JSON line, not a traceback
    (``logging.Handler.handleError`` would print the record's message and arguments)."""

    def handleError(self, record: logging.LogRecord) -> None:
        line = {"event": "log_record_dropped", "level": "error", "logger": record.name}
        try:
            self.stream.write(json.dumps(line, sort_keys=True) + "\n")
            self.flush()
        except Exception:  # noqa: BLE001 - nothing sensible is left to do
            pass


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` as one JSON record: category and place, never the message."""
    del message, file, line  # the message (and the source line) may quote caller text
    logging.getLogger("py.warnings").warning(
        WARNING_EVENT,
        extra={
            "warning_category": getattr(category, "__name__", "Warning"),
            "warning_location": f"{os.path.basename(str(filename))[:200]}:{lineno}",
        },
    )


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) as JSON lines."""
    level = level.upper()
    out = stream or sys.stderr
    handler = JsonLineHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                redact_foreign_record,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                _add_logger_name,
                exception_to_type,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
            pass_foreign_args=True,
            use_get_message=False,  # getMessage() would interpolate the arguments
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    warnings.showwarning = _show_warning
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exception_to_type,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # One handler (one lock) writes every line, so lines never interleave.
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def install_excepthooks() -> None:
    """Uncaught exceptions (main thread, other threads, ``__del__``) become one JSON record
    with the exception type, instead of Python's traceback on stderr. For a running server;
    not called by ``configure_logging`` so test runners keep their own hooks."""
    log = get_logger()

    def on_exception(
        exc_type: type[BaseException],
        _exc: BaseException | None,
        _tb: types.TracebackType | None,
    ) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            log.info("server_interrupted")
        else:
            log.critical("unhandled_exception", error_type=exc_type.__name__)

    def on_thread_exception(hook: threading.ExceptHookArgs) -> None:
        if hook.exc_type is not SystemExit:
            log.error("unhandled_thread_exception", error_type=hook.exc_type.__name__)

    def on_unraisable(hook: Any) -> None:
        exc_type = getattr(hook, "exc_type", None)
        log.warning("unraisable_exception", error_type=getattr(exc_type, "__name__", None))

    sys.excepthook = on_exception
    threading.excepthook = on_thread_exception
    sys.unraisablehook = on_unraisable


def ensure_configured() -> None:
    """Configure the defaults (INFO, stderr) unless the host already configured structlog:
    structlog's own default prints to stdout, which would corrupt the stdio transport."""
    if not structlog.is_configured():
        configure_logging()


def get_logger() -> Any:
    """A lazy logger: it picks up the configuration at first use, not at import."""
    return structlog.get_logger("rolegate")
