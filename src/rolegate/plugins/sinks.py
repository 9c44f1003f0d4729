"""Delivering audit records to the sinks plugins register (``register_audit_sinks``).

The engine calls ``AuditSinks.deliver(record)`` once per audit record, after the record was
durably written (the ledger transaction committed). Records carry ids, names, codes, counts,
costs and timings; never prompt or completion text.

What a sink may and may not do to a request:

- Sinks run inline, one after the other, in the thread that calls ``deliver`` (the engine
  calls it on the event loop). A sink must not block: no network round trip, no fsync, no
  lock held by a request. A sink that needs slow I/O hands the record to its own queue or
  thread and returns. A call longer than ``slow_after_s`` is logged (``audit_sink_slow``)
  and counted, so a slow sink is visible; it is not interrupted.
- A sink that raises never fails or alters the request: the exception is contained here,
  logged to stderr (``audit_sink_failed``, with the plugin's name, the sink and the
  exception type, never its message) and counted per sink; the other sinks still receive
  the record, and the failing sink still receives the next one.
- Every sink gets its own deep copy of the record, so a sink that mutates what it got
  changes nothing for the next sink, nor for the engine.
- Only ``Exception`` is contained. ``KeyboardInterrupt`` and ``SystemExit`` are not sink
  failures and propagate.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rolegate.logs import get_logger


class _HasSinks(Protocol):
    """A plugin Registry, as far as sinks go (the manager imports this module)."""

    @property
    def audit_sinks(self) -> Sequence[RegisteredSink]: ...


AuditSink = Callable[[dict[str, object]], None]
"""What ``register_audit_sinks`` registers: called with one audit record, returns nothing."""

SLOW_AFTER_S = 0.05
"""A sink call longer than this is logged as slow (it runs on the request path)."""

log = get_logger()


@dataclass(frozen=True, slots=True)
class RegisteredSink:
    """One registered sink and the plugin that registered it."""

    plugin: str
    sink: AuditSink

    @property
    def name(self) -> str:
        """The sink's own name: its function or class name."""
        sink = self.sink
        return str(getattr(sink, "__qualname__", None) or type(sink).__qualname__)

    def __call__(self, record: dict[str, object]) -> None:
        self.sink(record)


class AuditSinks:
    """The registered audit sinks, with per-sink failure and slow-call counts.

    Build it once per server (``AuditSinks.from_registry(registry)``) and call
    ``deliver(record)`` after each audit record is durably written. Safe to call from several
    threads: the counters are locked; the sinks themselves are not serialized.
    """

    def __init__(
        self, sinks: Iterable[RegisteredSink], *, slow_after_s: float = SLOW_AFTER_S
    ) -> None:
        self._sinks = tuple(sinks)
        self._slow_after_s = slow_after_s
        self._labels = _labels(self._sinks)
        self._failures = [0] * len(self._sinks)
        self._slow = [0] * len(self._sinks)
        self._lock = threading.Lock()

    @classmethod
    def from_registry(
        cls, registry: _HasSinks, *, slow_after_s: float = SLOW_AFTER_S
    ) -> AuditSinks:
        return cls(registry.audit_sinks, slow_after_s=slow_after_s)

    def __len__(self) -> int:
        return len(self._sinks)

    @property
    def labels(self) -> tuple[str, ...]:
        """``plugin:sink`` per sink, in delivery order (``#2``, ``#3`` on repeats)."""
        return self._labels

    def failures(self) -> dict[str, int]:
        """How many records each sink failed on since the server started, by label."""
        with self._lock:
            return dict(zip(self._labels, self._failures, strict=True))

    def slow_calls(self) -> dict[str, int]:
        """How many calls of each sink took longer than ``slow_after_s``, by label."""
        with self._lock:
            return dict(zip(self._labels, self._slow, strict=True))

    def deliver(self, record: Mapping[str, object]) -> None:
        """Hand ``record`` to every sink, in registration order; never raises for a sink."""
        if not self._sinks:
            return
        original = dict(record)
        for index, registered in enumerate(self._sinks):
            own = copy.deepcopy(original)
            started = time.perf_counter()
            try:
                registered.sink(own)
            # This is the error boundary for third-party sink code: a plugin's sink may raise
            # anything, and whatever it raises must not fail or alter the request, nor keep
            # the record from the other sinks. The failure is logged (plugin, sink, exception
            # type) and counted per sink below; it is never swallowed silently.
            except Exception as exc:  # noqa: BLE001
                with self._lock:
                    self._failures[index] += 1
                    failures = self._failures[index]
                log.warning(
                    "audit_sink_failed",
                    plugin=registered.plugin,
                    sink=self._labels[index],
                    error_type=type(exc).__name__,
                    failures=failures,
                    record_kind=original.get("kind"),
                )
                continue
            elapsed = time.perf_counter() - started
            if elapsed > self._slow_after_s:
                with self._lock:
                    self._slow[index] += 1
                log.warning(
                    "audit_sink_slow",
                    plugin=registered.plugin,
                    sink=self._labels[index],
                    ms=round(elapsed * 1000, 3),
                )


def _labels(sinks: tuple[RegisteredSink, ...]) -> tuple[str, ...]:
    seen: dict[str, int] = {}
    labels: list[str] = []
    for registered in sinks:
        label = f"{registered.plugin}:{registered.name}"
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return tuple(labels)
