"""Wiring only: build the aiohttp application from a :class:`Config`."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.abc import AbstractResolver

from airgap_proxy import reload
from airgap_proxy.api import admin, forward_proxy, health, ollama, openai, status, unknown
from airgap_proxy.config import Config
from airgap_proxy.group import GROUP, WorkerGroup
from airgap_proxy.metrics import METRICS, Metrics, metrics_endpoint
from airgap_proxy.middleware import expect_handler, request_middleware
from airgap_proxy.pipeline import answer
from airgap_proxy.router import Router
from airgap_proxy.state import STATE, AppState

# After the server has drained, how long closing the last replaced generation may take.
_RETIRE_WAIT_S = 5.0


def create_app(
    config: Config,
    *,
    resolver: AbstractResolver | None = None,
    loader: reload.Loader | None = None,
    group: WorkerGroup | None = None,
) -> web.Application:
    """The proxy application. ``resolver`` replaces the system DNS (tests).

    ``loader`` re-reads the configuration for a reload (SIGHUP or the admin
    endpoint): the same loader and environment as at start-up. Without it a
    reload is refused. ``group``: this process is a worker of ``serve
    --workers N`` (metrics and reloads span the group).
    """
    router = Router()
    router.forward_to(forward_proxy.is_forward_request, forward_proxy.forward_proxy)
    with warnings.catch_warnings():
        # aiohttp deprecates passing a router; ours answers Expect and picks out the forward proxy's requests.
        warnings.simplefilter("ignore", DeprecationWarning)
        app = web.Application(
            router=router, middlewares=[request_middleware], client_max_size=config.limits.max_body_bytes
        )
    if loader is not None:
        app[reload.LOADER] = loader
    if resolver is not None:
        app[reload.RESOLVER] = resolver
    shared = group.metrics_dir if group is not None else None
    metrics = Metrics(lambda: app[STATE].pool, lambda: app[STATE].in_flight, shared_dir=shared)
    app[METRICS] = metrics
    app[STATE] = AppState(generation=reload.build(config, resolver, 1, None), metrics=metrics)
    # The store first: if it cannot open, nothing else has started yet.
    app.cleanup_ctx.append(_tenant_store)
    app.cleanup_ctx.append(_generations)
    if group is not None:
        app[GROUP] = group
        app.cleanup_ctx.append(_group)
    app.cleanup_ctx.append(answer.executor_ctx)
    app[forward_proxy.TUNNELS] = set()
    app.on_shutdown.append(forward_proxy.drain)
    app.router.add_get("/healthz", health.healthz, expect_handler=expect_handler)
    app.router.add_get("/readyz", health.readyz, expect_handler=expect_handler)
    app.router.add_get("/metrics", metrics_endpoint, expect_handler=expect_handler)
    app.router.add_get("/api/v1/llm/status", status.llm_status, expect_handler=expect_handler)
    admin.add_routes(app, expect_handler)
    app.router.add_route("*", "/v1/{tail:.*}", openai.proxy_v1, expect_handler=expect_handler)
    ollama.add_routes(app, expect_handler)
    app.router.add_route("*", unknown.CATCH_ALL, unknown.unknown_route, expect_handler=expect_handler)
    return app


async def _generations(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await reload.start(state.generation)
    state.started = True
    yield
    state.started = False
    await reload.stop_probes(state.generation)
    retiring = state.retiring
    if retiring is not None:
        # The server has drained: requests still pinned to an old generation were cancelled.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(retiring), _RETIRE_WAIT_S)
        retiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retiring
    await state.generation.egress.close()


async def _group(app: web.Application) -> AsyncIterator[None]:
    """Publish this worker's record and write its gauges for the group until it stops."""
    app[GROUP].publish(app[STATE].generation.number)
    task = asyncio.get_running_loop().create_task(app[METRICS].sync_loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _tenant_store(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await admin.open_store(state)
    yield
    if state.store is not None:
        await state.store.close()
        state.store = None
