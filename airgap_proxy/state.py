"""Typed application state shared by the handlers.

Everything built from one configuration (the config, the egress client, the
upstream pool, the canned texts, the keyring) is one :class:`Generation`. A
reload builds a new generation and swaps it in whole; each request pins the
generation that was current when it arrived (``GENERATION_KEY``) and keeps it
to the end, so a reload never changes a request half way through. A replaced
generation's egress client is closed once its last request has finished.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from airgap_proxy import crypto, fallback
from airgap_proxy.audit import Audit
from airgap_proxy.config import Config
from airgap_proxy.egress import EgressClient
from airgap_proxy.metrics import Metrics
from airgap_proxy.tenant_store import Store
from airgap_proxy.tenants import StoredProvider
from airgap_proxy.upstreams import Probe, UpstreamPool


@dataclass(frozen=True, slots=True)
class TenantProbe:
    """A tenant provider's last probe, for the status view (reused for ``health.interval_s``)."""

    at: float
    wall: float
    base_url: str
    probe: Probe


@dataclass(slots=True, eq=False)
class Generation:
    """What one loaded configuration builds. Mutated only on the event loop.

    ``in_flight`` counts the requests pinned to it; ``idle`` is set once it is
    retired and that count is zero.
    """

    number: int
    config: Config
    egress: EgressClient
    pool: UpstreamPool
    canned: fallback.Canned
    keyring: crypto.Keyring = field(default_factory=crypto.Keyring)
    in_flight: int = 0
    probes: asyncio.Task[None] | None = None
    idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.idle is not None:
            self.idle.set()

    def retire(self) -> asyncio.Event:
        """Mark as replaced; the event is set when no request uses it any more."""
        self.idle = asyncio.Event()
        if self.in_flight == 0:
            self.idle.set()
        return self.idle


@dataclass(slots=True)
class AppState:
    """What the handlers need: the current generation, the tenant store, the metrics.

    ``config``, ``egress``, ``pool``, ``canned`` and ``keyring`` read the
    *current* generation; a handler that awaits across a possible reload uses
    the generation its request pinned (``request[GENERATION_KEY]``) instead.

    ``store`` is None when no tenant store is in use: the admin API is off and
    no store file exists, so every tenant is unknown and uses the default upstreams.
    A PostgreSQL store is always in use (another replica's admin API may write it).
    """

    generation: Generation
    metrics: Metrics
    store: Store | None = None
    tenant_probes: dict[str, TenantProbe] = field(default_factory=dict)
    started: bool = False
    # Requests in flight under limits.max_in_flight (the /v1 API).
    in_flight: int = 0
    # The task closing the last replaced generation; the next one waits for it.
    retiring: asyncio.Task[None] | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def config(self) -> Config:
        return self.generation.config

    @property
    def egress(self) -> EgressClient:
        return self.generation.egress

    @property
    def pool(self) -> UpstreamPool:
        return self.generation.pool

    @property
    def canned(self) -> fallback.Canned:
        return self.generation.canned

    @property
    def keyring(self) -> crypto.Keyring:
        return self.generation.keyring

    async def tenant_provider(self, tenant: str | None) -> StoredProvider | None:
        """The tenant's stored provider; None for no tenant, an unknown one, or no store.

        Raises :class:`airgap_proxy.errors.TenantStoreUnavailable` when the store cannot tell.
        """
        if tenant is None or self.store is None:
            return None
        return await self.store.lookup(tenant)


STATE = web.AppKey("state", AppState)
AUDIT_KEY = web.RequestKey("audit", Audit)
GENERATION_KEY = web.RequestKey("generation", Generation)
