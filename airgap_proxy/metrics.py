"""Prometheus metrics: one registry per application, fed once per request from the audit record.

Labels are bounded: routes outside the known set collapse to ``/v1/other`` or
``other``, tenants' own providers to ``tenant`` (tenant ids are never a
label), violations carry the policy rule, never the free-text reason. Every
metric is described in ``docs/metrics.md``.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from airgap_proxy.audit import Action, Audit
from airgap_proxy.egress import guard
from airgap_proxy.tenants import UPSTREAM_PREFIX
from airgap_proxy.upstreams import UpstreamPool
from airgap_proxy.upstreams.health import HealthStatus

PREFIX = "airgap_proxy"
V1_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/input_tokens",
    }
)
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
    ("/v1/messages", False): "message",
    ("/v1/messages", True): "message_stream",
    ("/v1/messages/count_tokens", False): "count_tokens",
    ("/v1/responses", False): "response",
    ("/v1/responses", True): "response_stream",
    ("/v1/responses/input_tokens", False): "input_tokens",
}
NO_API = "none"
NO_CATEGORY = "none"
FORWARD_PROXY_ROUTE = "forward_proxy"
_NEVER_STREAMED = frozenset({"/v1/embeddings", "/v1/messages/count_tokens", "/v1/responses/input_tokens"})
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


class _GuardCollector(Collector):
    """Stray connection attempts the self-egress guard saw (:mod:`airgap_proxy.egress.guard`)."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_self_egress_attempts",
            "Connections the proxy's own process tried outside the egress path, by action.",
            labels=["action"],
        )
        refused, reported = guard.counts()
        family.add_metric(["block"], float(refused))
        family.add_metric(["would_block"], float(reported))
        yield family


class _Counter:
    """A labelled counter kept as plain numbers (the event loop is its only writer)."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        return family


class _Histogram:
    """A labelled histogram kept as per-bucket counts; one bisection per observation."""

    def __init__(self, name: str, documentation: str, labels: list[str], bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.bounds) + 1)
            self.sums[key] = 0.0
        counts[bisect_left(self.bounds, value)] += 1  # buckets are "less than or equal"
        self.sums[key] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, counts in self.counts.items():
            cumulative = list(itertools.accumulate(counts))
            family.add_metric(list(key), list(zip(self._les, cumulative, strict=True)), self.sums[key])
        return family


class _RequestMetrics(Collector):
    """The per-request metrics: fed on the hot path as plain numbers, exported at scrape time."""

    def __init__(self) -> None:
        self.requests = _Counter(
            f"{PREFIX}_requests",
            "Requests answered, by route, upstream, HTTP status, decision and API surface.",
            ["route", "upstream", "status", "decision", "api"],
        )
        self.request_duration = _Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request to last byte sent, by route.",
            ["route"],
            LATENCY_BUCKETS,
        )
        self.violations = _Counter(
            f"{PREFIX}_airgap_violations",
            "Requests whose target the policy refused (action block) or would refuse (would_block), by rule.",
            ["rule", "action"],
        )
        self.fallbacks = _Counter(
            f"{PREFIX}_fallback_responses", "Responses from the deterministic fallback, by kind.", ["kind"]
        )
        self.errors = _Counter(f"{PREFIX}_errors", "Error responses and stream errors, by error code.", ["code"])
        self.first_byte = _Histogram(
            f"{PREFIX}_upstream_first_byte_seconds",
            "Time from sending a request upstream to its first body byte (time to first token), by upstream.",
            ["upstream"],
            LATENCY_BUCKETS,
        )
        self.upstream_duration = _Histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Time from sending a request upstream to its last body byte, by upstream.",
            ["upstream"],
            LATENCY_BUCKETS,
        )
        self.tokens = _Counter(
            f"{PREFIX}_tokens", "Tokens reported in responses' usage, by upstream and kind.", ["upstream", "kind"]
        )
        self.forward_proxy = _Counter(
            f"{PREFIX}_forward_proxy",
            "Forward-proxy requests (CONNECT tunnels and absolute-form), by decision and category (telemetry, none).",
            ["decision", "category"],
        )

    def collect(self) -> Iterator[Metric]:
        for metric in (
            self.requests,
            self.request_duration,
            self.violations,
            self.fallbacks,
            self.errors,
            self.first_byte,
            self.upstream_duration,
            self.tokens,
            self.forward_proxy,
        ):
            yield metric.family()


class Metrics:
    """The proxy's metrics in their own registry (never the global one)."""

    def __init__(self, pool: Callable[[], UpstreamPool], in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._per_request = _RequestMetrics()
        registry.register(self._per_request)
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
        registry.register(_GuardCollector())
        ProcessCollector(registry=registry)

    def observe(self, audit: Audit, route: str, duration_s: float) -> None:
        """Record one finished request from its audit record."""
        m = self._per_request
        upstream = upstream_label(audit.upstream)
        decision = audit.decision
        m.requests.inc((route, upstream, str(audit.status), decision.value, audit.api or NO_API))
        m.request_duration.observe((route,), duration_s)
        if decision is Action.BLOCK or decision is Action.WOULD_BLOCK:
            m.violations.inc((audit.rule or "unknown", decision.value))
        elif decision is Action.FALLBACK:
            kind = FALLBACK_KINDS.get((route, audit.stream and route not in _NEVER_STREAMED))
            if kind is not None:
                m.fallbacks.inc((kind,))
        if audit.error_code is not None:
            m.errors.inc((audit.error_code,))
        if audit.upstream_first_byte_s is not None:
            m.first_byte.observe((upstream,), audit.upstream_first_byte_s)
        if audit.upstream_total_s is not None:
            m.upstream_duration.observe((upstream,), audit.upstream_total_s)
        if audit.tunnel is not None:
            m.forward_proxy.inc((decision.value, audit.tunnel.category or NO_CATEGORY))
        if audit.prompt_tokens:
            m.tokens.inc((upstream, "prompt"), audit.prompt_tokens)
        if audit.completion_tokens:
            m.tokens.inc((upstream, "completion"), audit.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format."""
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
