"""Upstreams at run time: verdicts, health, in-flight counts, and the probe loop.

The probe loop is a background task owned by the application (started and
stopped with it); every probe goes through the egress client, so a probe can
never reach a target the policy refuses. Probes never ask for a completion:
each provider type has a free endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from airgap_proxy import policy
from airgap_proxy.config import Config, ProviderType, UpstreamConfig
from airgap_proxy.egress import EgressClient
from airgap_proxy.errors import AirgapViolation, ProxyError, UpstreamConnectTimeout, UpstreamTimeout
from airgap_proxy.logs import get_logger
from airgap_proxy.upstreams import health, routing

ROUTE_CACHE = 1024
_log = get_logger("airgap_proxy.health")

# Path of the free health endpoint per provider type: absolute paths are taken
# from the origin, relative ones from the base URL.
PROBE_PATHS = {
    ProviderType.LOCAL_OLLAMA: "/api/tags",
    ProviderType.LOCAL_VLLM: "/health",
    ProviderType.LOCAL_LITELLM: "/health/liveliness",
    # llama.cpp's llama-server has /health, llama-cpp-python's server does not;
    # both serve the model list, which also tells us the model names.
    ProviderType.LOCAL_LLAMACPP: "models",
    ProviderType.LOCAL_OPENAI_COMPATIBLE: "models",
}
MAX_PROBE_BODY = 1 << 20


@dataclass
class UpstreamRuntime:
    """One upstream's live state. Mutated only on the event loop."""

    config: UpstreamConfig
    decision: policy.Decision | None
    health: health.HealthState = field(default_factory=health.HealthState)
    in_flight: int = 0
    models: tuple[str, ...] = ()
    last_check_wall: float | None = None
    # The policy's refusal of an address at connect time (a name that resolved
    # outside): a compliance finding, kept until a probe gets through again.
    refused: policy.Decision | None = None

    @property
    def verdict(self) -> policy.Decision | None:
        """The decision that stands now: a connect-time refusal, else the load-time one."""
        return self.refused or self.decision


def probe_url(upstream: UpstreamConfig) -> str | None:
    if upstream.target is None:
        return None
    path = PROBE_PATHS.get(upstream.provider_type, "models")
    if path.startswith("/"):
        return upstream.target.origin + path
    return upstream.target.url.rstrip("/") + "/" + path


def models_from_probe(provider_type: ProviderType, body: bytes) -> tuple[str, ...]:
    """Model ids from a ``/v1/models`` or Ollama ``/api/tags`` answer (best effort)."""
    try:
        data = json.loads(body)
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    items = data.get("data") if provider_type is not ProviderType.LOCAL_OLLAMA else data.get("models")
    if not isinstance(items, list):
        return ()
    key = "name" if provider_type is ProviderType.LOCAL_OLLAMA else "id"
    return tuple(str(item[key]) for item in items if isinstance(item, dict) and isinstance(item.get(key), str))


class UpstreamPool:
    """All upstreams with their runtime state; the router's view of the world."""

    def __init__(
        self, config: Config, clock: Callable[[], float] = time.monotonic, previous: UpstreamPool | None = None
    ) -> None:
        """``previous`` (a reload): an upstream whose settings and verdict did not change keeps
        its runtime, so its health, discovered models and in-flight count carry over."""
        self.config = config
        self.clock = clock
        self.thresholds = health.Thresholds(config.health.unhealthy_after, config.health.healthy_after)
        self.runtimes: dict[str, UpstreamRuntime] = {}
        for upstream in config.upstreams:
            decision = routing.static_decision(upstream, config.rules)
            old = previous.runtimes.get(upstream.name) if previous is not None else None
            if old is not None and old.config == upstream and old.decision == decision:
                self.runtimes[upstream.name] = old
            else:
                self.runtimes[upstream.name] = UpstreamRuntime(upstream, decision)
        self._routes: dict[tuple[str | None, str], tuple[list[routing.Candidate], list[routing.Candidate]]] = {}

    @property
    def configured(self) -> bool:
        """Is any upstream configured?"""
        return bool(self.runtimes)

    def route(self, model: str | None, api: str = "openai") -> tuple[list[routing.Candidate], list[routing.Candidate]]:
        """The candidates for ``model`` on the ``api`` surface, and those of them the policy permits.

        Both depend only on this generation's configuration and load-time
        verdicts, so they are computed once per model and surface (for at
        most :data:`ROUTE_CACHE` model names: clients choose them).
        """
        key = (model, api)
        found = self._routes.get(key)
        if found is None:
            candidates = routing.route(self.config.upstreams, model, api)
            found = (candidates, [c for c in candidates if self.permitted(c.upstream.name)])
            if len(self._routes) < ROUTE_CACHE:
                self._routes[key] = found
        return found

    def verdict(self, name: str) -> policy.Decision | None:
        """The policy's decision on this upstream now (None: judged at connect time)."""
        return self.runtimes[name].verdict

    def health_error(self, name: str) -> str:
        """Why this upstream is not available: its last health failure, or its state."""
        health = self.runtimes[name].health
        return health.last_error or health.status.value

    def permitted(self, name: str) -> bool:
        """May traffic go to this upstream? (Names are re-checked at connect time.)"""
        runtime = self.runtimes[name]
        if runtime.refused is not None and self.config.airgapped:
            return False
        return self.permitted_at_load(name)

    def permitted_at_load(self, name: str) -> bool:
        """The load-time verdict alone: may this upstream be probed?"""
        runtime = self.runtimes[name]
        if runtime.decision is None or runtime.decision.is_local:
            return True
        if runtime.decision.verdict is policy.Verdict.INVALID:
            return False
        return not self.config.airgapped

    def record_refusal(self, name: str, decision: policy.Decision | None) -> None:
        """Note (or, with None, clear) a connect-time refusal of this upstream."""
        runtime = self.runtimes[name]
        if runtime.refused == decision:
            return
        if decision is not None:
            _log.warning("upstream_refused_at_connect", upstream=name, reason=decision.reason)
        runtime.refused = decision
        self._routes.clear()  # which candidates are permitted changed

    def view(self, name: str) -> routing.UpstreamView:
        runtime = self.runtimes[name]
        return routing.UpstreamView(
            permitted=self.permitted(name), available=runtime.health.available, in_flight=runtime.in_flight
        )

    def observe(self, name: str, ok: bool, error: str | None = None) -> None:
        runtime = self.runtimes[name]
        before = runtime.health.status
        runtime.health = health.observe(runtime.health, ok, self.clock(), self.thresholds, error)
        runtime.last_check_wall = time.time()
        if runtime.health.status is not before:
            _log.info(
                "upstream_health_changed",
                upstream=name,
                status=runtime.health.status.value,
                previous=before.value,
                error=error,
            )

    def full(self, name: str) -> bool:
        """Is the upstream at its ``max_in_flight``?"""
        runtime = self.runtimes[name]
        cap = runtime.config.max_in_flight
        return cap is not None and runtime.in_flight >= cap

    def any_available(self) -> bool:
        return any(self.permitted(n) and r.health.available for n, r in self.runtimes.items())


@dataclass(frozen=True, slots=True)
class Probe:
    """One health probe's outcome: reachable or the error, and the models it listed."""

    ok: bool
    error: str | None = None
    status: int | None = None
    models: tuple[str, ...] = ()
    timed_out: bool = False
    refused: policy.Decision | None = None


async def probe_endpoint(egress: EgressClient, upstream: UpstreamConfig, timeout_s: float) -> Probe:
    """GET the free health endpoint of ``upstream`` through the egress client (never a completion)."""
    url = probe_url(upstream)
    if url is None:
        return Probe(False, "the base URL is invalid")
    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
    try:
        response = await egress.request("GET", url, headers=headers, body=None, timeout_s=timeout_s)
        try:
            body = await egress.read_limited(response, MAX_PROBE_BODY)
        finally:
            response.release()
    except AirgapViolation as exc:
        return Probe(False, exc.message, refused=exc.decision)
    except UpstreamConnectTimeout as exc:
        # A busy server still accepts connections: this one is down, not busy.
        return Probe(False, exc.message)
    except UpstreamTimeout as exc:
        return Probe(False, exc.message, timed_out=True)
    except ProxyError as exc:
        return Probe(False, exc.message)
    if response.status >= 400:
        return Probe(False, f"probe answered HTTP {response.status}", response.status)
    return Probe(True, None, response.status, models_from_probe(upstream.provider_type, body))


async def probe_once(pool: UpstreamPool, egress: EgressClient, runtime: UpstreamRuntime) -> None:
    """Probe one upstream through the egress client and record the result."""
    if probe_url(runtime.config) is None or not pool.permitted_at_load(runtime.config.name):
        return
    probe = await probe_endpoint(egress, runtime.config, pool.config.health.timeout_s)
    if probe.refused is not None:
        # Not a health state: the upstream is refused (422) until a probe gets through.
        pool.record_refusal(runtime.config.name, probe.refused)
        return
    if probe.ok:
        pool.record_refusal(runtime.config.name, None)
    if probe.timed_out and runtime.in_flight > 0:
        # A single-slot server (llama.cpp) answers probes only between
        # generations: a slow probe while it is busy is not a failure.
        return
    pool.observe(runtime.config.name, probe.ok, probe.error)
    if probe.models:
        runtime.models = probe.models


async def probe_all(pool: UpstreamPool, egress: EgressClient) -> None:
    await asyncio.gather(*(probe_once(pool, egress, r) for r in pool.runtimes.values()))


async def probe_loop(pool: UpstreamPool, egress: EgressClient, interval_s: float) -> None:
    """Probe every upstream every ``interval_s`` seconds until cancelled."""
    while True:
        try:
            await probe_all(pool, egress)
        except Exception as exc:  # noqa: BLE001 - the loop must survive any probe bug
            _log.error("probe_loop_error", exc_type=type(exc).__name__)
        await asyncio.sleep(interval_s)
