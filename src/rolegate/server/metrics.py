"""Prometheus metrics for one server, served at ``GET /metrics`` next to ``/mcp``.

Every server has its own :class:`Metrics` and its own ``CollectorRegistry`` (never the
process-wide default registry), so two servers in one process count separately. Two
sources feed it, and both count with or without a ledger:

- the engine's observer hook (``Store.observers``): the ``call`` record of every settled
  provider call and the ``decision`` record of every route_task;
- the error boundary (``GatedServer.observer``): every tool call's outcome code and time.

Label values are names from the policy (models, providers, roles), the four tool names,
the lanes and the stable codes; a value that is none of these is reported as ``other``,
so no caller's text can ever become a label, and the number of series is bounded.

Metrics (the counters are ``_total`` in the exposition):

- ``rolegate_calls_total{model,provider,role,code}``: provider calls by outcome (``OK``, a
  provider error code such as ``PROVIDER_TIMEOUT``, or ``CANCELLED``), fallback steps,
  validation retries, critics and the router model's questions included;
- ``rolegate_tokens_total{model,direction}``: tokens charged (``input``, ``output``): the
  provider's usage, else what the ledger charges; a call that produced nothing adds none;
- ``rolegate_spend_usd_total{model,provider}``: what those calls cost, in US dollars. It is
  counted in integer micro-USD (as the ledger does) and divided by 10^6 only when scraped;
- ``rolegate_decisions_total{outcome,code}``: route_task decisions (route, refuse,
  script_only) by code;
- ``rolegate_refusals_total{tool,code}``: refused route_task decisions (``tool="route_task"``)
  and tool calls the policy refused (RefusedError: BUDGET_EXHAUSTED, LOCAL_ONLY_VIOLATION,
  NEEDS_CONSENT, ...; and OVER_BUDGET), e.g. ``tool="run_role"``;
- ``rolegate_tool_calls_total{tool,code}``: tool calls by outcome (``OK`` or the error code);
- ``rolegate_call_latency_seconds{model}``: provider call latency (without a load on demand);
- ``rolegate_tool_latency_seconds{tool}``: tool call latency at the boundary;
- ``rolegate_in_flight{lane}`` / ``rolegate_lane_limit{lane}``: calls (and loads on demand)
  holding each weight lane the policy declares (``lanes: {heavy, light}``), and the lane's
  size, read when scraped;
- ``rolegate_info{policy_name,policy_hash,version}``: always 1.

With OpenTelemetry configured (a tracer provider set by the application; the API alone, which
the MCP SDK brings, makes no spans), each provider call also becomes a ``chat {model}`` span
with the GenAI semantic conventions (see :class:`GenAiSpans`).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response

from rolegate import __version__
from rolegate.engine.core import PolicyEngine
from rolegate.errors import Code
from rolegate.policy import Policy

__all__ = ["METRICS_PATH", "GenAiSpans", "Metrics", "metrics_endpoint"]

METRICS_PATH = "/metrics"
OTHER = "other"
"""The label value for anything that is not a name the policy or rolegate defines."""
LANES = ("heavy", "light")
OUTCOMES = frozenset({"route", "refuse", "script_only"})
CODES = frozenset(c.value for c in Code) | {"OK", "CANCELLED"}
MICRO_PER_USD = 1_000_000
CALL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TOOL_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                  120, 300, 600)  # fmt: skip


def _label(value: object, known: Iterable[str] | Mapping[str, Any]) -> str:
    """``value`` if it is one of ``known``; "" when absent; else ``other``."""
    if value is None:
        return ""
    return value if isinstance(value, str) and value in known else OTHER


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Metrics:
    """One server's counters, histograms and scrape-time gauges, in its own registry.

    ``observe`` is the engine's observer (``Store.observers``); ``tool_call`` is the
    boundary's (``GatedServer.observer``). Both run on the event loop, like the scrape.
    """

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        # Counters are kept as integers (spend in micro-USD) and exposed by ``_Collector``.
        self.calls: Counter[tuple[str, str, str, str]] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.spend_micro: Counter[tuple[str, str]] = Counter()
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.tool_calls: Counter[tuple[str, str]] = Counter()
        self.call_latency = Latency(CALL_BUCKETS_S)  # by model
        self.tool_latency = Latency(TOOL_BUCKETS_S)  # by tool
        self.registry.register(_Collector(self))

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    # -- the engine's events -------------------------------------------------
    def observe(self, record: Mapping[str, object]) -> None:
        kind = record.get("kind")
        if kind == "call":
            self._call(record)
        elif kind == "decision":
            self._decision(record)

    def _call(self, record: Mapping[str, object]) -> None:
        policy = self.policy
        model = _label(record.get("model"), policy.models)
        provider = _label(record.get("provider"), policy.doc.providers)
        role = _label(record.get("role"), policy.doc.roles)
        self.calls[model, provider, role, _label(record.get("code"), CODES)] += 1
        if not record.get("released"):
            self.tokens[model, "input"] += _count(record.get("input_tokens"))
            self.tokens[model, "output"] += _count(record.get("output_tokens"))
            self.spend_micro[model, provider] += _count(record.get("cost_micro"))
        ms = record.get("ms")
        if isinstance(ms, int | float) and ms >= 0:
            self.call_latency.observe(model, ms / 1000)

    def _decision(self, record: Mapping[str, object]) -> None:
        outcome = _label(record.get("outcome"), OUTCOMES)
        code = _label(record.get("code"), CODES)
        self.decisions[outcome, code] += 1
        if outcome == "refuse":
            self.refusals["route_task", code] += 1

    # -- the boundary's events -----------------------------------------------
    def tool_call(self, tool: str, code: str, refused: bool, elapsed_s: float) -> None:
        """One tool call's outcome; ``tool`` is a registered tool's name or ``(unknown)``."""
        code = _label(code, CODES)
        self.tool_calls[tool, code] += 1
        if refused:
            self.refusals[tool, code] += 1
        self.tool_latency.observe(tool, max(elapsed_s, 0.0))

    # -- the scrape ----------------------------------------------------------
    def exposition(self) -> bytes:
        """The Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    def lanes(self) -> dict[str, tuple[int, int]]:
        """(calls holding the lane, its size) for each lane the policy declares."""
        policy, pool = self.policy, self.engine.pool
        declared = policy.doc.lanes
        out: dict[str, tuple[int, int]] = {}
        for lane in LANES:
            size = getattr(declared, lane)
            if size is None:
                continue
            held = 0
            if pool is not None:
                # The pool keeps one limiter per lane, shared by the lane's local models.
                for info in policy.models.values():
                    if info.locality == "local" and info.model.weight == lane:
                        limiter = pool.lane(info)
                        if isinstance(limiter, anyio.CapacityLimiter):
                            held = limiter.borrowed_tokens
                        break
            out[lane] = (held, size)
        return out


class Latency:
    """A histogram per label value: counts per bucket (not cumulative) and the sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = [*(repr(float(bound)) for bound in bounds), "+Inf"]
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, label: str, seconds: float) -> None:
        counts = self.counts.setdefault(label, [0] * (len(self.bounds) + 1))
        counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le: the bound is inclusive
        self.sums[label] = self.sums.get(label, 0.0) + seconds

    def family(self, name: str, documentation: str, label: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=[label])
        for value, counts in sorted(self.counts.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self.les, counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric([value], buckets, self.sums[value])
        return family


class _Collector:
    """The counters, lane gauges and info, built from :class:`Metrics` at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        policy = m.policy
        yield m.call_latency.family(
            "rolegate_call_latency_seconds",
            "Provider call latency, without the model's load on demand.",
            "model",
        )
        yield m.tool_latency.family(
            "rolegate_tool_latency_seconds", "MCP tool call latency at the error boundary.", "tool"
        )
        yield _counter(
            "rolegate_calls",
            "Provider calls by outcome code.",
            ["model", "provider", "role", "code"],
            m.calls,
        )
        yield _counter(
            "rolegate_tokens", "Tokens charged, by direction.", ["model", "direction"], m.tokens
        )
        spend = CounterMetricFamily(
            "rolegate_spend_usd",
            "Spend in US dollars (counted in integer micro-USD, converted when scraped).",
            labels=["model", "provider"],
        )
        for labels, micro in sorted(m.spend_micro.items()):
            spend.add_metric(list(labels), micro / MICRO_PER_USD)
        yield spend
        yield _counter(
            "rolegate_decisions",
            "route_task decisions by outcome and code.",
            ["outcome", "code"],
            m.decisions,
        )
        yield _counter(
            "rolegate_refusals",
            "Refused decisions (tool=route_task) and tool calls the policy refused.",
            ["tool", "code"],
            m.refusals,
        )
        yield _counter(
            "rolegate_tool_calls", "Tool calls by outcome code.", ["tool", "code"], m.tool_calls
        )
        in_flight = GaugeMetricFamily(
            "rolegate_in_flight", "Calls holding each weight lane now.", labels=["lane"]
        )
        limit = GaugeMetricFamily(
            "rolegate_lane_limit", "Calls each weight lane admits at once.", labels=["lane"]
        )
        for lane, (held, size) in m.lanes().items():
            in_flight.add_metric([lane], held)
            limit.add_metric([lane], size)
        yield in_flight
        yield limit
        info = GaugeMetricFamily(
            "rolegate_info",
            "The policy this server enforces, and rolegate's version.",
            labels=["policy_name", "policy_hash", "version"],
        )
        info.add_metric([policy.name, policy.hash, __version__], 1)
        yield info


def _counter(
    name: str, documentation: str, labels: list[str], counts: Mapping[Any, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in sorted(counts.items()):
        family.add_metric(list(values), count)
    return family


def metrics_endpoint(
    metrics: Metrics, security: Callable[[], TransportSecuritySettings | None]
) -> Callable[[Request], Awaitable[Response]]:
    """The ``GET /metrics`` handler. It gets the Host/Origin checks of ``/mcp``
    (``security()``: the settings the HTTP app was built with), and ``rolegate serve``'s
    bearer token like every other path (``BearerAuth`` wraps the whole app)."""

    async def endpoint(request: Request) -> Response:
        settings = security()
        if settings is not None:
            refused = await TransportSecurityMiddleware(settings).validate_request(request)
            if refused is not None:
                return refused
        return Response(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return endpoint


class GenAiSpans:
    """An engine observer that turns each settled provider call into an OpenTelemetry span
    (kind CLIENT, named ``chat {model}``) with the GenAI semantic conventions:
    ``gen_ai.operation.name``, ``gen_ai.system`` / ``gen_ai.provider.name`` (the provider's
    type), ``gen_ai.request.model`` (the name the provider knows the model by),
    ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``error.type`` (the code) on failure,
    and ``rolegate.*`` ids (model, role, request id, cost). Never any text.

    The span is recorded when the call settles, with its start set back by the call's
    latency; its parent is the current span (the SDK's ``tools/call`` span, when traced).
    Nothing is made unless the application has set a tracer provider: with the API alone,
    spans would be no-ops anyway.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._provider: object = None
        self._tracer: trace.Tracer | None = None

    def _current_tracer(self) -> trace.Tracer | None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
        if provider is not self._provider or self._tracer is None:
            self._provider = provider
            self._tracer = provider.get_tracer("rolegate", __version__)
        return self._tracer

    def observe(self, record: Mapping[str, object]) -> None:
        if record.get("kind") != "call":
            return
        tracer = self._current_tracer()
        if tracer is None:
            return
        policy = self.policy
        model_id = record.get("model")
        info = policy.models.get(model_id) if isinstance(model_id, str) else None
        if info is None:
            return
        provider = policy.doc.providers.get(info.model.provider)
        system = provider.type if provider is not None else OTHER
        ms = record.get("ms")
        elapsed_ns = int(ms * 1_000_000) if isinstance(ms, int | float) and ms >= 0 else 0
        end_ns = time.time_ns()
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": system,
            "gen_ai.provider.name": system,
            "gen_ai.request.model": info.model.name,
            "rolegate.model": info.id,
            "rolegate.provider": info.model.provider,
            "rolegate.code": str(record.get("code")),
            "rolegate.request_id": str(record.get("request_id")),
        }
        role = record.get("role")
        if isinstance(role, str):
            attributes["rolegate.role"] = role
        if not record.get("released"):
            attributes["gen_ai.usage.input_tokens"] = _count(record.get("input_tokens"))
            attributes["gen_ai.usage.output_tokens"] = _count(record.get("output_tokens"))
            attributes["rolegate.cost_micro_usd"] = _count(record.get("cost_micro"))
        code = record.get("code")
        failed = code != "OK"
        if failed:
            attributes["error.type"] = str(code)
        span = tracer.start_span(
            f"chat {info.model.name}",
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=end_ns - elapsed_ns,
        )
        if failed:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end(end_time=end_ns)
