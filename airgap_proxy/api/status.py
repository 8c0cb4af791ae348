"""``GET /api/v1/llm/status``: is the resolved provider reachable and air-gap compliant?

The four fields of the reference page keep their meaning:
``provider_type`` and ``model`` of the configured provider (the upstream
that answers, else the one meant to: up or down), ``reachable`` (its last
health check succeeded: ``false`` while the local server is down, even when
the fallback answers), and ``airgap_compliant`` (no configured upstream would
make an external call). With no upstream configured the deterministic
fallback is the provider. ``airgapped``, ``fallback_active`` and per-upstream detail
come on top.

``?tenant=ID`` (or ``X-Tenant-ID``) gives that tenant's view: its own
provider (verdict now, reachability from a probe through the egress client,
reused for ``health.interval_s``), or, for a tenant without one, the default
view with ``tenant`` added. With ``clients`` configured a tenant view needs
that tenant's client key (or the admin token); without credentials the
default view is served as before.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from airgap_proxy import crypto, policy, tenants
from airgap_proxy.config import FallbackMode
from airgap_proxy.errors import InvalidRequest, ModelNotFound, NoHealthyUpstream
from airgap_proxy.pipeline.answer import DEFAULT_FALLBACK_MODEL, DETERMINISTIC
from airgap_proxy.state import AUDIT_KEY, STATE, AppState, TenantProbe
from airgap_proxy.tenants import TENANT_HEADER, StoredProvider
from airgap_proxy.upstreams import Probe, UpstreamPool, UpstreamRuntime, probe_endpoint, routing
from airgap_proxy.upstreams.health import HealthStatus


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


async def _decision(state: AppState, runtime: UpstreamRuntime) -> policy.Decision:
    if runtime.verdict is not None:
        return runtime.verdict  # a connect-time refusal stands until a probe gets through
    assert runtime.config.target is not None
    return await state.egress.decide(runtime.config.target)


def _upstream_detail(runtime: UpstreamRuntime, decision: policy.Decision, permitted: bool) -> dict[str, Any]:
    config = runtime.config
    return {
        "name": config.name,
        "provider_type": config.provider_type.value,
        "base_url": config.target.url if config.target is not None else None,
        "priority": config.priority,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "permitted": permitted,
        "health": runtime.health.status.value,
        "last_check": _iso(runtime.last_check_wall),
        "last_error": runtime.health.last_error,
        "in_flight": runtime.in_flight,
        "models": list(runtime.models) or list(config.models),
    }


async def status_report(state: AppState) -> dict[str, Any]:
    config = state.config
    pool = state.pool
    fallback_enabled = config.fallback.mode is FallbackMode.DETERMINISTIC
    runtimes = list(pool.runtimes.values())
    decisions = await asyncio.gather(*(_decision(state, r) for r in runtimes))
    details = [_upstream_detail(r, d, pool.permitted(r.config.name)) for r, d in zip(runtimes, decisions, strict=True)]
    compliant = all(d.is_local for d in decisions)
    try:
        candidates = routing.route(config.upstreams, config.default_model)
    except (ModelNotFound, NoHealthyUpstream):
        candidates = [routing.Candidate(r.config, None) for r in runtimes]
    attempts = routing.plan(candidates, pool.view)
    fallback_active = not attempts
    report: dict[str, Any] = {}
    upstream_name: str | None
    # The configured provider, whether or not it is up: the one that answers, else
    # the first permitted one, else the first configured. A stopped local server
    # shows reachable: false even while the fallback answers (fallback_active).
    described = attempts[0] if attempts else _configured(candidates, pool)
    if described is not None:
        chosen = pool.runtimes[described.upstream.name]
        report |= {
            "provider_type": chosen.config.provider_type.value,
            "model": config.default_model or described.model or _first_model(chosen),
            "reachable": bool(attempts) and chosen.health.status is HealthStatus.HEALTHY,
        }
        upstream_name = chosen.config.name
    else:
        report |= {
            "provider_type": DETERMINISTIC if fallback_enabled else None,
            "model": config.default_model or DEFAULT_FALLBACK_MODEL,
            "reachable": fallback_enabled,
        }
        upstream_name = DETERMINISTIC if fallback_enabled else None
    report |= {
        "airgap_compliant": compliant,
        "upstream": upstream_name,
        "airgapped": config.airgapped,
        "fallback_active": fallback_active,
        "fallback_mode": config.fallback.mode.value,
        "upstreams": details,
    }
    store_health = state.store.health() if state.store is not None else None
    if store_health is not None:
        report["tenant_store"] = store_health
    return report


def _configured(candidates: list[routing.Candidate], pool: UpstreamPool) -> routing.Candidate | None:
    """The provider a request for the default model is meant for, available or not."""
    permitted = [c for c in candidates if pool.permitted(c.upstream.name)]
    ranked = permitted or candidates
    return min(ranked, key=lambda c: c.upstream.priority) if ranked else None


def _first_model(runtime: UpstreamRuntime) -> str | None:
    if runtime.models:
        return runtime.models[0]
    exact = [m for m in runtime.config.models if not any(c in m for c in "*?[")]
    return exact[0] if exact else None


async def llm_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    tenant = status_tenant(request, state)
    if tenant is None:
        return web.json_response(await status_report(state))
    request[AUDIT_KEY].tenant = tenant
    provider = await state.tenant_provider(tenant)
    if provider is None:
        return web.json_response(await status_report(state) | {"tenant": tenant})
    return web.json_response(await tenant_report(state, provider))


def status_tenant(request: web.Request, state: AppState) -> str | None:
    """Whose view is asked for, with the same rules as proxied requests."""
    query = request.query.get("tenant")
    header = request.headers.get(TENANT_HEADER)
    if query is not None and header is not None and query.strip() != header.strip():
        raise InvalidRequest(f"?tenant= and {TENANT_HEADER} name different tenants", param="tenant")
    requested = (query if query is not None else header or "").strip() or None
    authorization = request.headers.get("Authorization")
    clients = state.config.clients
    if not clients or (requested is None and authorization is None):
        return tenants.check_tenant_id(requested) if requested is not None else None
    admin = state.config.admin.token
    if admin is not None and tenants.bearer_matches(authorization, admin):
        return tenants.check_tenant_id(requested) if requested is not None else None
    return tenants.identify(authorization, requested, clients).tenant


async def tenant_report(state: AppState, provider: StoredProvider) -> dict[str, Any]:
    """A tenant's own provider, in the shape of the default report's four fields and more."""
    config = state.config
    decision = tenants.request_time_decision(provider, config.rules)
    permitted = decision.is_local or (decision.verdict is not policy.Verdict.INVALID and not config.airgapped)
    probe = await _tenant_probe(state, provider) if permitted else None
    return {
        "provider_type": provider.provider_type.value,
        "model": provider.model,
        "reachable": probe is not None and probe.probe.ok,
        "airgap_compliant": decision.is_local,
        "tenant": provider.tenant,
        "upstream": tenants.upstream_name(provider.tenant),
        "airgapped": config.airgapped,
        "base_url": provider.base_url,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "permitted": permitted,
        "api_key_set": provider.sealed_key is not None,
        "last_check": _iso(probe.wall) if probe is not None else None,
        "last_error": probe.probe.error if probe is not None else None,
    }


async def _tenant_probe(state: AppState, provider: StoredProvider) -> TenantProbe:
    cached = state.tenant_probes.get(provider.tenant)
    now = time.monotonic()
    if cached is not None and cached.base_url == provider.base_url and now - cached.at < state.config.health.interval_s:
        return cached
    try:
        api_key = tenants.open_api_key(provider, state.keyring)
    except crypto.SealError as exc:
        return TenantProbe(now, time.time(), provider.base_url, Probe(False, f"the API key cannot be decrypted: {exc}"))
    probe = await probe_endpoint(state.egress, provider.upstream(api_key), state.config.health.timeout_s)
    result = TenantProbe(time.monotonic(), time.time(), provider.base_url, probe)
    state.tenant_probes[provider.tenant] = result
    return result
