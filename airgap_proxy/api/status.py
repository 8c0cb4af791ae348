"""``GET /api/v1/llm/status``: is the resolved provider reachable and air-gap compliant?

The four fields of the reference page keep their meaning:
``provider_type`` and ``model`` of the provider that would answer now,
``reachable`` (its last health check succeeded, or it is the deterministic
fallback), and ``airgap_compliant`` (no configured upstream would make an
external call). ``airgapped``, ``fallback_active`` and per-upstream detail
come on top.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from airgap_proxy import policy, routing
from airgap_proxy.config import FallbackMode
from airgap_proxy.errors import ModelNotFound, NoHealthyUpstream
from airgap_proxy.fallback_http import DEFAULT_FALLBACK_MODEL, DETERMINISTIC
from airgap_proxy.health import HealthStatus
from airgap_proxy.state import STATE, AppState
from airgap_proxy.upstreams import UpstreamRuntime


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


async def _decision(state: AppState, runtime: UpstreamRuntime) -> policy.Decision:
    if runtime.decision is not None:
        return runtime.decision
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
    if attempts:
        chosen = pool.runtimes[attempts[0].upstream.name]
        report |= {
            "provider_type": chosen.config.provider_type.value,
            "model": config.default_model or attempts[0].model or _first_model(chosen),
            "reachable": chosen.health.status is HealthStatus.HEALTHY,
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
    return report


def _first_model(runtime: UpstreamRuntime) -> str | None:
    if runtime.models:
        return runtime.models[0]
    exact = [m for m in runtime.config.models if not any(c in m for c in "*?[")]
    return exact[0] if exact else None


async def llm_status(request: web.Request) -> web.Response:
    return web.json_response(await status_report(request.app[STATE]))
