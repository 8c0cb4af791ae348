"""Liveness and readiness probes."""

from __future__ import annotations

from aiohttp import web

from airgap_proxy.state import STATE


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Config loaded, egress client running, and something can answer requests."""
    state = request.app[STATE]
    permitted = [
        name
        for name, decision in state.decisions.items()
        if decision is None or decision.is_local or not state.config.airgapped
    ]
    if not state.started:
        return web.json_response({"status": "starting"}, status=503)
    if not permitted:
        return web.json_response(
            {"status": "not_ready", "reason": "no upstream is configured that the egress policy permits"},
            status=503,
        )
    return web.json_response({"status": "ready", "upstreams": permitted})
