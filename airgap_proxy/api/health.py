"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from airgap_proxy.config import FallbackMode
from airgap_proxy.state import STATE


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the proxy can answer: a permitted, available upstream or the fallback.

    A shared (PostgreSQL) tenant store's state is reported under ``tenant_store``
    but does not make the proxy unready: requests without a tenant still work.
    """
    state = request.app[STATE]
    if not state.started:
        return web.json_response({"status": "starting"}, status=503)
    available = [n for n in state.pool.runtimes if state.pool.permitted(n) and state.pool.view(n).available]
    fallback = state.config.fallback.mode is FallbackMode.DETERMINISTIC
    if not available and not fallback:
        return web.json_response(
            {"status": "not_ready", "reason": "no permitted upstream is available and the fallback is disabled"},
            status=503,
        )
    body: dict[str, Any] = {"status": "ready", "upstreams": available, "fallback": fallback}
    health = state.store.health() if state.store is not None else None
    if health is not None:
        body["tenant_store"] = health
    return web.json_response(body)
