"""Typed application state shared by the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from airgap_proxy import crypto, fallback
from airgap_proxy.audit import Audit
from airgap_proxy.config import Config
from airgap_proxy.egress import EgressClient
from airgap_proxy.tenant_store import AsyncTenantStore
from airgap_proxy.tenants import StoredProvider
from airgap_proxy.upstreams import Probe, UpstreamPool


@dataclass(frozen=True, slots=True)
class TenantProbe:
    """A tenant provider's last probe, for the status view (reused for ``health.interval_s``)."""

    at: float
    wall: float
    base_url: str
    probe: Probe


@dataclass(slots=True)
class AppState:
    """What the handlers need: the config, the egress client, the upstream pool, the tenant store.

    ``store`` is None when no tenant store is in use: the admin API is off and
    no store file exists, so every tenant is unknown and uses the default upstreams.
    """

    config: Config
    egress: EgressClient
    pool: UpstreamPool
    canned: fallback.Canned
    keyring: crypto.Keyring = field(default_factory=crypto.Keyring)
    store: AsyncTenantStore | None = None
    tenant_probes: dict[str, TenantProbe] = field(default_factory=dict)
    started: bool = False

    async def tenant_provider(self, tenant: str | None) -> StoredProvider | None:
        """The tenant's stored provider; None for no tenant, an unknown one, or no store."""
        if tenant is None or self.store is None:
            return None
        return await self.store.get(tenant)


STATE = web.AppKey("state", AppState)
AUDIT_KEY = web.RequestKey("audit", Audit)
