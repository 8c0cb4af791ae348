"""Prometheus metrics: one registry per application, fed once per request from the audit record.

With ``serve --workers N`` (a :class:`~airgap_proxy.group.WorkerGroup`) the
registry reports the whole group through prometheus-client's multiprocess
mode: counters and histograms are written through to this worker's files as
they change, gauges are written every :data:`SYNC_S` seconds (and by the
worker that answers a scrape, just before), and a scrape merges every
worker's files (:class:`MultiProcessCollector`). See ``docs/metrics.md``.

Labels are bounded: routes outside the known set collapse to ``/v1/other`` or
``other``, tenants' own providers to ``tenant`` (tenant ids are never a
label), violations carry the policy rule, never the free-text reason. Every
metric is described in ``docs/metrics.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from airgap_proxy.audit import Action, Audit
from airgap_proxy.egress import guard
from airgap_proxy.logs import get_logger
from airgap_proxy.tenants import UPSTREAM_PREFIX
from airgap_proxy.upstreams import UpstreamPool
from airgap_proxy.upstreams.health import HealthStatus

PREFIX = "airgap_proxy"
WORKER_LABEL = "worker"
# How often each worker of ``--workers N`` writes its gauges for the others' scrapes.
SYNC_S = 1.0
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
_log = get_logger("airgap_proxy.metrics")


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


class _LocalGauges(Collector):
    """The process-wide gauges of a single process."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics.gauges()


class _GroupCollector(Collector):
    """Every worker's multiprocess files, merged by prometheus-client; gauges' ``pid`` label is ``worker``."""

    def __init__(self, path: Path) -> None:
        self._files = MultiProcessCollector(None, path=str(path))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for metric in self._files.collect():  # type: ignore[no-untyped-call]
            if metric.type == "gauge":
                metric.samples = [
                    sample._replace(labels={WORKER_LABEL if k == "pid" else k: v for k, v in sample.labels.items()})
                    for sample in metric.samples
                ]
            yield metric


def _write_gauges(directory: Path, name: str, families: list[Metric]) -> None:
    """Write ``families``' samples as one multiprocess gauge file (``gauge_MODE_PID.db``), atomically."""
    temporary = directory / f".{name}.tmp"  # not *.db: the collector never reads it half written
    file = MmapedDict(str(temporary))  # type: ignore[no-untyped-call]
    try:
        for family in families:
            for sample in family.samples:
                key = mmap_key(
                    sample.name, sample.name, list(sample.labels), list(sample.labels.values()), family.documentation
                )
                file.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        file.close()  # type: ignore[no-untyped-call]
    os.replace(temporary, directory / name)


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


class _Cell:
    """One series' value in a multiprocess file, written through on every change (no lock: one writer)."""

    __slots__ = ("_file", "_key", "value")

    def __init__(self, file: MmapedDict, key: str) -> None:
        self._file, self._key = file, key
        self.value: float = file.read_value(key)[0]  # type: ignore[no-untyped-call]  # a reused pid's file

    def inc(self, amount: float) -> None:
        self.value += amount
        self._file.write_value(self._key, self.value, 0.0)  # type: ignore[no-untyped-call]

    def set(self, value: float) -> None:
        self.value = value
        self._file.write_value(self._key, value, 0.0)  # type: ignore[no-untyped-call]


class _Files:
    """This worker's counter and histogram files (``counter_PID.db``, ``histogram_PID.db``).

    prometheus-client's own writer (``values.MultiProcessValue``) takes the
    directory from ``PROMETHEUS_MULTIPROC_DIR``; only ``cli.py`` touches the
    environment here, so the directory is passed in and the files are written
    with the library's ``MmapedDict`` in the layout its collector reads.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._pid = os.getpid()  # fixed: no fork follows the application's construction
        self._files: dict[str, MmapedDict] = {}

    def cell(self, typ: str, name: str, labels: dict[str, str], *, metric: str, documentation: str) -> _Cell:
        """The cell of sample ``name{labels}`` of family ``metric`` (``typ``: counter or histogram)."""
        file = self._files.get(typ)
        if file is None:
            file = self._files[typ] = MmapedDict(str(self._directory / f"{typ}_{self._pid}.db"))  # type: ignore[no-untyped-call]
        return _Cell(file, mmap_key(metric, name, list(labels), list(labels.values()), documentation))


class Level:
    """A gauge the event loop moves up and down (streams being relayed)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class _SharedCounter(_Counter):
    """A counter written through to this worker's multiprocess file (one mmap write per increment)."""

    def __init__(self, name: str, documentation: str, labels: list[str], files: _Files) -> None:
        super().__init__(name, documentation, labels)
        self._files = files
        self.cells: dict[tuple[str, ...], _Cell] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        cell = self.cells.get(key)
        if cell is None:
            labels = dict(zip(self.labels, key, strict=True))
            cell = self.cells[key] = self._files.cell(
                "counter", f"{self.name}_total", labels, metric=self.name, documentation=self.documentation
            )
        cell.inc(amount)

    def set(self, key: tuple[str, ...], value: float) -> None:
        """A count kept elsewhere (the self-egress guard's), copied in."""
        self.inc(key, 0.0)
        self.cells[key].set(value)


class _SharedHistogram(_Histogram):
    """A histogram written through to this worker's file: one bucket and the sum per observation."""

    def __init__(
        self, name: str, documentation: str, labels: list[str], bounds: tuple[float, ...], files: _Files
    ) -> None:
        super().__init__(name, documentation, labels, bounds)
        self._files = files
        self.cells: dict[tuple[str, ...], tuple[list[_Cell], _Cell]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        cells = self.cells.get(key)
        if cells is None:
            cells = self.cells[key] = self._new_cells(key)
        cells[0][bisect_left(self.bounds, value)].inc(1.0)  # not cumulative: the collector accumulates
        cells[1].inc(value)

    def _new_cells(self, key: tuple[str, ...]) -> tuple[list[_Cell], _Cell]:
        name, doc = self.name, self.documentation
        labels = dict(zip(self.labels, key, strict=True))
        buckets = [
            self._files.cell("histogram", f"{name}_bucket", labels | {"le": le}, metric=name, documentation=doc)
            for le in self._les
        ]
        return buckets, self._files.cell("histogram", f"{name}_sum", labels, metric=name, documentation=doc)


class _RequestMetrics(Collector):
    """The per-request metrics: fed on the hot path as plain numbers, exported at scrape time."""

    def __init__(self, files: _Files | None = None) -> None:
        """``files``: write through to this worker's multiprocess files (``--workers N``)."""

        def counter(name: str, documentation: str, labels: list[str]) -> _Counter:
            if files is None:
                return _Counter(name, documentation, labels)
            return _SharedCounter(name, documentation, labels, files)

        def histogram(name: str, documentation: str, labels: list[str]) -> _Histogram:
            if files is None:
                return _Histogram(name, documentation, labels, LATENCY_BUCKETS)
            return _SharedHistogram(name, documentation, labels, LATENCY_BUCKETS, files)

        self.requests = counter(
            f"{PREFIX}_requests",
            "Requests answered, by route, upstream, HTTP status, decision and API surface.",
            ["route", "upstream", "status", "decision", "api"],
        )
        self.request_duration = histogram(
            f"{PREFIX}_request_duration_seconds", "Time from request to last byte sent, by route.", ["route"]
        )
        self.violations = counter(
            f"{PREFIX}_airgap_violations",
            "Requests whose target the policy refused (action block) or would refuse (would_block), by rule.",
            ["rule", "action"],
        )
        self.fallbacks = counter(
            f"{PREFIX}_fallback_responses", "Responses from the deterministic fallback, by kind.", ["kind"]
        )
        self.errors = counter(f"{PREFIX}_errors", "Error responses and stream errors, by error code.", ["code"])
        self.first_byte = histogram(
            f"{PREFIX}_upstream_first_byte_seconds",
            "Time from sending a request upstream to its first body byte (time to first token), by upstream.",
            ["upstream"],
        )
        self.upstream_duration = histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Time from sending a request upstream to its last body byte, by upstream.",
            ["upstream"],
        )
        self.tokens = counter(
            f"{PREFIX}_tokens", "Tokens reported in responses' usage, by upstream and kind.", ["upstream", "kind"]
        )
        self.forward_proxy = counter(
            f"{PREFIX}_forward_proxy",
            "Forward-proxy requests (CONNECT tunnels and absolute-form), by decision and category (telemetry, none).",
            ["decision", "category"],
        )
        self.reloads = counter(f"{PREFIX}_config_reloads", "Configuration reloads, by result (ok, error).", ["result"])
        self.self_egress = counter(
            f"{PREFIX}_self_egress_attempts",
            "Connections the proxy's own process tried outside the egress path, by action.",
            ["action"],
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
            self.reloads,
        ):
            yield metric.family()


class Metrics:
    """The proxy's metrics in their own registry (never the global one).

    ``shared_dir``: this worker's group's multiprocess directory (``serve
    --workers N``); the registry then reports every worker's files.
    """

    def __init__(
        self, pool: Callable[[], UpstreamPool], in_flight: Callable[[], int], shared_dir: Path | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.shared_dir = shared_dir
        self._pool, self._in_flight = pool, in_flight
        self._per_request = _RequestMetrics(None if shared_dir is None else _Files(shared_dir))
        self.reloads = self._per_request.reloads
        self.active_streams = Level()
        if shared_dir is not None:
            registry.register(_GroupCollector(shared_dir))
            return
        registry.register(self._per_request)
        registry.register(_LocalGauges(self))
        registry.register(_UpstreamCollector(pool))
        registry.register(_GuardCollector())
        ProcessCollector(registry=registry)

    def gauges(self) -> Iterator[Metric]:
        """This process's gauges, read now."""
        active = GaugeMetricFamily(f"{PREFIX}_active_streams", "Streaming (SSE) responses being relayed right now.")
        active.add_metric([], float(self.active_streams.value))
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_requests", "/v1 requests being handled (limits.max_in_flight)."
        )
        in_flight.add_metric([], float(self._in_flight()))
        yield active
        yield in_flight

    def sync(self) -> None:
        """Write this worker's gauges (and the guard's counts) to its multiprocess files.

        Each gauge file is written whole under another name, then renamed over
        the last one: a reader sees one complete set, and a series that is gone
        (a removed upstream) goes with it.
        """
        assert self.shared_dir is not None
        refused, reported = guard.counts()
        self._per_request.self_egress.set(("block",), float(refused))  # type: ignore[attr-defined]
        self._per_request.self_egress.set(("would_block",), float(reported))  # type: ignore[attr-defined]
        upstream = list(_UpstreamCollector(self._pool).collect())
        summed = [*self.gauges(), upstream[2]]  # in flight, streams, in flight per upstream
        per_worker = [upstream[0], upstream[1], *ProcessCollector(registry=None).collect()]
        pid = os.getpid()
        _write_gauges(self.shared_dir, f"gauge_livesum_{pid}.db", summed)
        _write_gauges(self.shared_dir, f"gauge_liveall_{pid}.db", per_worker)

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
        if self.shared_dir is not None:
            self.sync()  # this worker's gauges as of now; the others' are at most SYNC_S old
        return generate_latest(self.registry)

    async def sync_loop(self) -> None:
        """Write this worker's gauges every :data:`SYNC_S` seconds until cancelled."""
        while True:
            try:
                self.sync()
            except OSError as exc:  # a full or vanished directory: the next round tries again
                _log.warning("metrics_sync_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(SYNC_S)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format."""
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
