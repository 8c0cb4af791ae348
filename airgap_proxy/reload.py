"""Configuration generations: build, start, reload (SIGHUP or the admin endpoint), retire.

A generation (:class:`airgap_proxy.state.Generation`) is everything one
loaded configuration builds. The application starts with one; a reload builds
the next and swaps it in; a replaced one is closed when its last request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractResolver

from airgap_proxy import crypto, policy
from airgap_proxy.config import Config, ConfigError
from airgap_proxy.egress import EgressClient, guard
from airgap_proxy.group import GROUP
from airgap_proxy.logs import get_logger
from airgap_proxy.state import STATE, Generation
from airgap_proxy.upstreams import UpstreamPool, probe_loop

_log = get_logger("airgap_proxy.reload")

Loader = Callable[[], Config]
LOADER: web.AppKey[Loader] = web.AppKey("loader")
RESOLVER = web.AppKey("resolver", AbstractResolver)
# Settings read once when the server starts: a reload that changes them logs that a restart is needed.
RESTART_ONLY = (
    "listen",
    "logging",
    "tenants.store",
    "tenants.refresh_s",
    "tenants.max_stale_s",
    "tenants.pool_size",
    "tenants.timeout_s",
    "timeouts.client_header_s",
    "timeouts.shutdown_grace_s",
)


def build(config: Config, resolver: AbstractResolver | None, number: int, previous: UpstreamPool | None) -> Generation:
    """A generation for ``config``, not started yet (``previous``: the pool it replaces)."""

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
    return Generation(
        number=number,
        config=config,
        egress=egress,
        pool=UpstreamPool(config, previous=previous),
        canned=config.fallback.canned,
        keyring=keyring,
    )


async def start(generation: Generation) -> None:
    """Open the generation's egress client, log its upstreams, start its health probes."""
    await generation.egress.start()
    pool = generation.pool
    for runtime in pool.runtimes.values():
        upstream, decision = runtime.config, runtime.decision
        _log.info(
            "upstream_configured",
            upstream=upstream.name,
            provider_type=upstream.provider_type.value,
            base_url=upstream.target.url if upstream.target else None,
            verdict=decision.verdict.value if decision else "checked_at_connect",
            reason=decision.reason if decision else None,
        )
        if not pool.permitted_at_load(upstream.name):
            assert decision is not None
            _log.warning("upstream_blocked", upstream=upstream.name, reason=decision.reason)
    if pool.runtimes:
        loop = asyncio.get_running_loop()
        generation.probes = loop.create_task(probe_loop(pool, generation.egress, generation.config.health.interval_s))


async def stop_probes(generation: Generation) -> None:
    task, generation.probes = generation.probes, None
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def close_when_idle(generation: Generation, previous: asyncio.Task[None] | None) -> None:
    """Close a replaced generation's egress client once no request uses it (nor an older one)."""
    idle = generation.retire()
    if previous is not None:
        await previous
    await idle.wait()
    await generation.egress.close()
    _log.info("config_generation_closed", generation=generation.number)


@dataclass(frozen=True, slots=True)
class Reloaded:
    """A reload that took effect: the new generation number and settings that need a restart."""

    generation: int
    restart_needed: tuple[str, ...]


def restart_only_changes(old: Config, new: Config) -> tuple[str, ...]:
    """Which of :data:`RESTART_ONLY` differ between ``old`` and ``new``."""
    values: dict[str, Callable[[Config], object]] = {
        "listen": lambda c: c.listen,
        "logging": lambda c: c.logging,
        "tenants.store": lambda c: c.tenants.store,
        "tenants.refresh_s": lambda c: c.tenants.refresh_s,
        "tenants.max_stale_s": lambda c: c.tenants.max_stale_s,
        "tenants.pool_size": lambda c: c.tenants.pool_size,
        "tenants.timeout_s": lambda c: c.tenants.timeout_s,
        "timeouts.client_header_s": lambda c: c.timeouts.client_header_s,
        "timeouts.shutdown_grace_s": lambda c: c.timeouts.shutdown_grace_s,
    }
    return tuple(key for key in RESTART_ONLY if values[key](old) != values[key](new))


async def reload_app(app: web.Application) -> Reloaded:
    """Re-read the configuration and swap in a new generation atomically.

    1. Run the start-up loader again (same path, same environment captured at
       start). A :class:`ConfigError` is logged and re-raised: the running
       generation keeps serving, untouched.
    2. Build and start the new generation: egress client, upstream pool
       (unchanged upstreams keep their health and in-flight counts), probes.
    3. Swap it in: requests from now on use it; requests in flight keep theirs.
    4. Stop the old generation's probes; close its egress client once its
       last request has finished.
    """
    state = app[STATE]
    loader = app.get(LOADER)
    async with state.reload_lock:
        if loader is None:
            error = ConfigError("(reload)", "this proxy was started without a configuration loader")
            _reload_failed(app, error)
            raise error
        try:
            config = loader()
        except ConfigError as exc:
            _reload_failed(app, exc)
            raise
        old = state.generation
        new = build(config, app.get(RESOLVER), old.number + 1, old.pool)
        await start(new)
        state.generation = new
        guard.update(config.rules, enforce=config.airgapped)
        await stop_probes(old)
        loop = asyncio.get_running_loop()
        state.retiring = loop.create_task(close_when_idle(old, state.retiring))
        restart = restart_only_changes(old.config, config)
        state.metrics.reloads.inc(("ok",))
        if (group := app.get(GROUP)) is not None:
            group.publish(new.number, attempted=True)
        _log.info(
            "config_reloaded",
            generation=new.number,
            config=config.source,
            airgapped=config.airgapped,
            upstreams=[u.name for u in config.upstreams],
            in_flight_on_previous=old.in_flight,
        )
        if restart:
            _log.warning("config_reload_needs_restart", keys=list(restart), hint="restart the proxy to apply these")
        return Reloaded(new.number, restart)


def _reload_failed(app: web.Application, error: ConfigError) -> None:
    state = app[STATE]
    state.metrics.reloads.inc(("error",))
    if (group := app.get(GROUP)) is not None:
        group.publish(state.generation.number, error=str(error), attempted=True)
    _log.error("config_reload_failed", error=str(error), generation=state.generation.number)
