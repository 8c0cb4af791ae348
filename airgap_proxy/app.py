"""Wiring only: build the aiohttp application from a :class:`Config`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractResolver

from airgap_proxy import crypto, policy
from airgap_proxy.api import admin, health, openai, status
from airgap_proxy.config import Config
from airgap_proxy.egress import EgressClient
from airgap_proxy.logs import get_logger
from airgap_proxy.middleware import request_middleware
from airgap_proxy.state import STATE, AppState
from airgap_proxy.upstreams import UpstreamPool, probe_loop

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
    keyring = crypto.Keyring.from_texts(config.secret_key, config.previous_secret_keys, os.urandom)
    app[STATE] = AppState(
        config=config, egress=egress, pool=UpstreamPool(config), canned=config.fallback.canned, keyring=keyring
    )
    # The store first: if it cannot open, nothing else has started yet.
    app.cleanup_ctx.append(_tenant_store)
    app.cleanup_ctx.append(_egress_lifecycle)
    app.cleanup_ctx.append(_health_probes)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/api/v1/llm/status", status.llm_status)
    admin.add_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", openai.proxy_v1)
    return app


async def _egress_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.egress.start()
    state.started = True
    for runtime in state.pool.runtimes.values():
        upstream, decision = runtime.config, runtime.decision
        _log.info(
            "upstream_configured",
            upstream=upstream.name,
            provider_type=upstream.provider_type.value,
            base_url=upstream.target.url if upstream.target else None,
            verdict=decision.verdict.value if decision else "checked_at_connect",
            reason=decision.reason if decision else None,
        )
        if not state.pool.permitted(upstream.name):
            assert decision is not None
            _log.warning("upstream_blocked", upstream=upstream.name, reason=decision.reason)
    yield
    state.started = False
    await state.egress.close()


async def _tenant_store(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await admin.open_store(state)
    yield
    if state.store is not None:
        await state.store.close()
        state.store = None


async def _health_probes(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    task = None
    if state.pool.runtimes:
        loop = asyncio.get_running_loop()
        task = loop.create_task(probe_loop(state.pool, state.egress, state.config.health.interval_s))
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
