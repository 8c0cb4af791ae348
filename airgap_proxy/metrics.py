"""Prometheus metrics: one registry per application, fed once per request from the audit record.

Labels are bounded: routes outside the known set collapse to ``/v1/other`` or
``other``, tenants' own providers to ``tenant`` (tenant ids are never a
label), violations carry the policy rule, never the free-text reason. Every
metric is described in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from airgap_proxy.audit import Action, Audit
from airgap_proxy.health import HealthStatus
from airgap_proxy.tenants import UPSTREAM_PREFIX
from airgap_proxy.upstreams import UpstreamPool

PREFIX = "airgap_proxy"
V1_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
OTHER_V1_ROUTE = "/v1/other"
CATCH_ALL = "/{tail:.*}"  # the last route: unknown paths (api/unknown.py)
CATCH_ALL_CANONICAL = "/{tail}"
OTHER_ROUTE = "other"
TENANT_UPSTREAM = "tenant"
NO_UPSTREAM = "none"
HEALTH_VALUES = {HealthStatus.HEALTHY: 1.0, HealthStatus.UNHEALTHY: 0.0, HealthStatus.UNKNOWN: -1.0}
FALLBACK_KINDS = {
    ("/v1/chat/completions", False): "chat",
    ("/v1/chat/completions", True): "chat_stream",
    ("/v1/completions", False): "completion",
    ("/v1/completions", True): "completion_stream",
    ("/v1/embeddings", False): "embeddings",
    ("/v1/models", False): "models",
}
# Seconds: from a fast local embedding to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# No ``*_created`` series: they double the series count and Prometheus needs none of them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def route_label(request: web.Request) -> str:
    """The route label: a known path, ``/v1/other``, a route template, or ``other``."""
    path = request.path
    if path in V1_ROUTES:
        return path
    if path.startswith("/v1/"):
        return OTHER_V1_ROUTE
    resource = request.match_info.route.resource
    if resource is None or resource.canonical == CATCH_ALL_CANONICAL:
        return OTHER_ROUTE
    return resource.canonical


def upstream_label(upstream: str | None) -> str:
    if upstream is None:
        return NO_UPSTREAM
    if upstream.startswith(UPSTREAM_PREFIX):
        return TENANT_UPSTREAM
    return upstream


class _UpstreamCollector(Collector):
    """Per-upstream gauges read from the current pool at scrape time (so a reload drops removed upstreams)."""

    def __init__(self, pool: Callable[[], UpstreamPool]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        health = GaugeMetricFamily(
            f"{PREFIX}_upstream_health",
            "Upstream health: 1 healthy, 0 unhealthy, -1 unknown (not checked yet).",
            labels=["upstream"],
        )
        permitted = GaugeMetricFamily(
            f"{PREFIX}_upstream_permitted",
            "1 when the egress policy lets traffic go to the upstream, else 0.",
            labels=["upstream"],
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_upstream_in_flight", "Requests in flight to the upstream.", labels=["upstream"]
        )
        pool = self._pool()
        for name, runtime in pool.runtimes.items():
            health.add_metric([name], HEALTH_VALUES[runtime.health.status])
            permitted.add_metric([name], 1.0 if pool.permitted(name) else 0.0)
            in_flight.add_metric([name], float(runtime.in_flight))
        yield health
        yield permitted
        yield in_flight


class Metrics:
    """The proxy's metrics in their own registry (never the global one)."""

    def __init__(self, pool: Callable[[], UpstreamPool], in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by route, upstream, HTTP status and decision.",
            ["route", "upstream", "status", "decision"],
            registry=registry,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request to last byte sent, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.violations = Counter(
            f"{PREFIX}_airgap_violations",
            "Requests whose target the policy refused (action block) or would refuse (would_block), by rule.",
            ["rule", "action"],
            registry=registry,
        )
        self.fallbacks = Counter(
            f"{PREFIX}_fallback_responses",
            "Responses from the deterministic fallback, by kind.",
            ["kind"],
            registry=registry,
        )
        self.errors = Counter(
            f"{PREFIX}_errors", "Error responses and stream errors, by error code.", ["code"], registry=registry
        )
        self.first_byte = Histogram(
            f"{PREFIX}_upstream_first_byte_seconds",
            "Time from sending a request upstream to its first body byte (time to first token), by upstream.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Time from sending a request upstream to its last body byte, by upstream.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens reported in responses' usage, by upstream and kind.",
            ["upstream", "kind"],
            registry=registry,
        )
        self.active_streams = Gauge(
            f"{PREFIX}_active_streams", "Streaming (SSE) responses being relayed right now.", registry=registry
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests", "/v1 requests being handled (limits.max_in_flight).", registry=registry
        )
        self.in_flight.set_function(lambda: float(in_flight()))
        self.reloads = Counter(
            f"{PREFIX}_config_reloads", "Configuration reloads, by result (ok, error).", ["result"], registry=registry
        )
        registry.register(_UpstreamCollector(pool))
        ProcessCollector(registry=registry)
        # Labelled children, cached: the hot path does one dict lookup per metric.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, audit: Audit, route: str, duration_s: float) -> None:
        """Record one finished request from its audit record."""
        upstream = upstream_label(audit.upstream)
        decision = audit.decision
        self._child(self.requests, route, upstream, str(audit.status), decision.value).inc()
        self._child(self.request_duration, route).observe(duration_s)
        if decision is Action.BLOCK or decision is Action.WOULD_BLOCK:
            self._child(self.violations, audit.rule or "unknown", decision.value).inc()
        elif decision is Action.FALLBACK:
            kind = FALLBACK_KINDS.get((route, audit.stream and route != "/v1/embeddings"))
            if kind is not None:
                self._child(self.fallbacks, kind).inc()
        if audit.error_code is not None:
            self._child(self.errors, audit.error_code).inc()
        if audit.upstream_first_byte_s is not None:
            self._child(self.first_byte, upstream).observe(audit.upstream_first_byte_s)
        if audit.upstream_total_s is not None:
            self._child(self.upstream_duration, upstream).observe(audit.upstream_total_s)
        if audit.prompt_tokens:
            self._child(self.tokens, upstream, "prompt").inc(audit.prompt_tokens)
        if audit.completion_tokens:
            self._child(self.tokens, upstream, "completion").inc(audit.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format."""
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
