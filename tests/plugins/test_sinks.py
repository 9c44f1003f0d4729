"""Audit sinks registered by plugins receive every record; a failing sink harms nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from rolegate.errors import PluginError
from rolegate.plugins.hookspecs import hookimpl
from rolegate.plugins.manager import build_registry
from rolegate.plugins.sinks import AuditSink, AuditSinks, RegisteredSink

RECORDS: list[dict[str, object]] = [
    {"kind": "decision", "decision_id": "dec_1", "code": "ROUTED", "input_tokens": 12},
    {"kind": "call", "request_id": "req_1", "code": "OK", "output_tokens": 3, "tags": ["a"]},
    {"kind": "consent", "model": "m", "code": "GRANTED"},
]


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def __call__(self, record: dict[str, object]) -> None:
        self.records.append(record)


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, record: dict[str, object]) -> None:
        self.calls += 1
        raise RuntimeError("secret detail that must not reach the log")


class SinkPlugin:
    def __init__(self, *sinks: AuditSink) -> None:
        self.sinks = sinks

    @hookimpl
    def register_audit_sinks(self, register: Callable[[AuditSink], None]) -> None:
        for sink in self.sinks:
            register(sink)


def test_every_sink_receives_every_record_in_order() -> None:
    first, second = Collect(), Collect()
    registry = build_registry(extra_plugins=[SinkPlugin(first, second)], load_entry_points=False)
    sinks = AuditSinks.from_registry(registry)
    assert len(sinks) == 2
    for record in RECORDS:
        sinks.deliver(record)
    assert first.records == RECORDS
    assert second.records == RECORDS
    assert sinks.failures() == dict.fromkeys(sinks.labels, 0)


def test_each_sink_gets_its_own_copy() -> None:
    def vandal(record: dict[str, object]) -> None:
        record["code"] = "CHANGED"
        tags = record["tags"]
        assert isinstance(tags, list)
        tags.append("x")

    after = Collect()
    sinks = AuditSinks([RegisteredSink("p", vandal), RegisteredSink("p", after)])
    record = RECORDS[1]
    original = {**record, "tags": list(record["tags"])}  # type: ignore[call-overload]
    sinks.deliver(record)
    assert after.records == [original]
    assert record == original


def test_a_raising_sink_does_not_stop_the_others_and_is_counted_and_logged() -> None:
    before, after, bad = Collect(), Collect(), Exploding()
    sinks = AuditSinks(
        [
            RegisteredSink("alpha", before),
            RegisteredSink("broken", bad),
            RegisteredSink("omega", after),
        ]
    )
    with capture_logs() as logs:
        for record in RECORDS:
            sinks.deliver(record)  # never raises
    assert before.records == RECORDS
    assert after.records == RECORDS
    assert bad.calls == len(RECORDS)  # still called for every record
    assert sinks.failures() == {
        "alpha:Collect": 0,
        "broken:Exploding": len(RECORDS),
        "omega:Collect": 0,
    }
    failed = [e for e in logs if e["event"] == "audit_sink_failed"]
    assert len(failed) == len(RECORDS)
    assert failed[-1]["plugin"] == "broken"
    assert failed[-1]["sink"] == "broken:Exploding"
    assert failed[-1]["error_type"] == "RuntimeError"
    assert failed[-1]["failures"] == len(RECORDS)
    assert failed[-1]["log_level"] == "warning"
    assert "secret detail" not in repr(logs)


def test_a_slow_sink_is_logged_and_counted() -> None:
    def slow(record: dict[str, object]) -> None:
        time.sleep(0.02)

    sinks = AuditSinks([RegisteredSink("sleepy", slow)], slow_after_s=0.001)
    with capture_logs() as logs:
        sinks.deliver(RECORDS[0])
    assert sinks.slow_calls() == {"sleepy:test_a_slow_sink_is_logged_and_counted.<locals>.slow": 1}
    assert [e["event"] for e in logs] == ["audit_sink_slow"]


def test_no_sinks_is_a_no_op() -> None:
    sinks = AuditSinks([])
    sinks.deliver(RECORDS[0])
    assert sinks.failures() == {}


def test_repeated_sinks_get_distinct_labels() -> None:
    sink = Collect()
    sinks = AuditSinks([RegisteredSink("p", sink), RegisteredSink("p", sink)])
    assert sinks.labels == ("p:Collect", "p:Collect#2")
    sinks.deliver(RECORDS[0])
    assert sink.records == [RECORDS[0], RECORDS[0]]


def test_sinks_are_attributed_to_the_plugin_that_registered_them() -> None:
    sink = Collect()
    registry = build_registry(extra_plugins=[SinkPlugin(sink)], load_entry_points=False)
    (registered,) = registry.audit_sinks
    assert registered.sink is sink
    info = next(p for p in registry.plugins if p.name == registered.plugin)
    assert info.provides == ["audit-sink"]


def test_a_sink_that_is_not_callable_is_refused_at_load() -> None:
    with pytest.raises(PluginError, match="audit sink that is not callable: str"):
        build_registry(extra_plugins=[SinkPlugin("not a sink")], load_entry_points=False)  # type: ignore[arg-type]
