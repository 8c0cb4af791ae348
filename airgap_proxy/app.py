"""Wiring only: build the aiohttp application from a :class:`Config`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractResolver

from airgap_proxy import policy, routing
from airgap_proxy.api import health, openai
from airgap_proxy.config import Config
from airgap_proxy.egress import EgressClient
from airgap_proxy.logs import get_logger
from airgap_proxy.middleware import request_middleware
from airgap_proxy.state import STATE, AppState

_log = get_logger("airgap_proxy.app")


def create_app(config: Config, *, resolver: AbstractResolver | None = None) -> web.Application:
    """The proxy application. ``resolver`` replaces the system DNS (tests)."""
    app = web.Application(middlewares=[request_middleware], client_max_size=config.limits.max_body_bytes)

    def on_would_block(decision: policy.Decision) -> None:
        _log.warning("egress_would_block", reason=decision.reason, host=decision.host)

    egress = EgressClient(
        config.rules,
        enforce=config.airgapped,
        connect_timeout_s=config.timeouts.connect_s,
        read_timeout_s=config.timeouts.upstream_s,
        resolver=resolver,
        on_would_block=on_would_block,
    )
    state = AppState(config=config, egress=egress)
    for upstream in config.upstreams:
        state.decisions[upstream.name] = routing.static_decision(upstream, config.rules)
    app[STATE] = state
    app.cleanup_ctx.append(_egress_lifecycle)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_route("*", "/v1/{tail:.*}", openai.proxy_v1)
    return app


async def _egress_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.egress.start()
    state.started = True
    for upstream in state.config.upstreams:
        decision = state.decisions[upstream.name]
        _log.info(
            "upstream_configured",
            upstream=upstream.name,
            provider_type=upstream.provider_type.value,
            base_url=upstream.target.url if upstream.target else None,
            verdict=decision.verdict.value if decision else "checked_at_connect",
            reason=decision.reason if decision else None,
        )
        if decision is not None and not decision.is_local and state.config.airgapped:
            _log.warning("upstream_blocked", upstream=upstream.name, reason=decision.reason)
    yield
    state.started = False
    await state.egress.close()
