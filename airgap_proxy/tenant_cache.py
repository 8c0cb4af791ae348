"""The PostgreSQL tenant store as the server uses it: providers held in memory, refreshed by polling.

Requests never query the database: :meth:`SharedTenantStore.lookup` reads a
dict. A background task polls the store's revision every ``tenants.refresh_s``
and reloads every record when it moved, so a change made through another
replica is in force here within ``refresh_s`` (plus the query's time). A change
made through this replica's admin API is in force here at once.

When the database cannot be read:

1. The cached providers stay in force while the last successful poll is at
   most ``tenants.max_stale_s`` old (a restart or a fail-over of the database
   goes unnoticed by tenants).
2. After that, and before the first successful poll, every request that needs
   a tenant's provider gets 503 ``tenant_store_unavailable``; requests without
   a tenant are served as usual. The cache is kept, so the first successful
   poll brings tenants back at once; the pool reconnects by itself.
3. The admin API always reads and writes the database: 503 while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from airgap_proxy.config import TenantsConfig
from airgap_proxy.errors import TenantStoreUnavailable
from airgap_proxy.logs import get_logger
from airgap_proxy.tenant_store import StoreError
from airgap_proxy.tenant_store_pg import PostgresStore
from airgap_proxy.tenants import StoredProvider

_log = get_logger("airgap_proxy.tenant_store")
NOT_CONNECTED = "not connected yet"
Clock = Callable[[], float]


class SharedTenantStore:
    """A :class:`airgap_proxy.tenant_store.Store` on PostgreSQL, with the in-memory cache described above."""

    def __init__(self, config: TenantsConfig, *, clock: Clock = time.monotonic) -> None:
        self.db = PostgresStore(config.store, pool_size=config.pool_size, timeout_s=config.timeout_s)
        self.refresh_s = config.refresh_s
        self.max_stale_s = config.max_stale_s
        self._clock = clock
        self._providers: dict[str, StoredProvider] = {}
        self._revision: int | None = None
        self._refreshed: float | None = None
        self._reason: str | None = NOT_CONNECTED
        self._migrated = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def shown(self) -> str:
        return self.db.shown

    async def open(self, *, create: bool) -> bool:
        """Start the pool, try one poll (so a reachable database serves from the first request), start polling.

        An unreachable database is not an error: the proxy starts and the poller keeps trying.
        """
        await self.db.open()
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.db.close()

    def _fresh(self) -> bool:
        return self._refreshed is not None and self._clock() - self._refreshed <= self.max_stale_s

    async def lookup(self, tenant: str) -> StoredProvider | None:
        """The tenant's provider from memory; 503 when the cache is too old to trust (see the module)."""
        if not self._fresh():
            raise TenantStoreUnavailable(
                "The tenant store is unavailable, so this tenant's provider is unknown; "
                "requests for a tenant are refused until it is back"
            )
        return self._providers.get(tenant)

    async def get(self, tenant: str) -> StoredProvider | None:
        return await self.db.get(tenant)

    async def list(self) -> list[StoredProvider]:
        return await self.db.list()

    async def put(self, provider: StoredProvider) -> bool:
        created = await self.db.put(provider)
        async with self._lock:
            self._providers[provider.tenant] = provider
        return created

    async def delete(self, tenant: str) -> bool:
        deleted = await self.db.delete(tenant)
        async with self._lock:
            self._providers.pop(tenant, None)
        return deleted

    def health(self) -> dict[str, Any]:
        """For ``/readyz`` and the status: whether tenants are served, and why not."""
        age = None if self._refreshed is None else round(self._clock() - self._refreshed, 3)
        fresh = self._fresh()
        reason = self._reason
        if reason is None and not fresh:  # a poll is still waiting for the database
            reason = f"no successful read of the database for {age:g} s (tenants.max_stale_s: {self.max_stale_s:g})"
        return {
            "backend": "postgresql",
            "serving": fresh,
            "connected": self._reason is None and fresh,
            "reason": reason,
            "tenants": len(self._providers),
            "revision": self._revision,
            "last_refresh_s_ago": age,
            "refresh_s": self.refresh_s,
            "max_stale_s": self.max_stale_s,
        }

    async def refresh(self) -> None:
        """One poll: migrate once, read the revision, reload when it moved. Never raises for the database."""
        try:
            async with self._lock:
                if not self._migrated:
                    await self.db.migrate()
                    self._migrated = True
                revision, providers = await self.db.snapshot(self._revision)
                if providers is not None:
                    self._providers = {p.tenant: p for p in providers}
                    self._revision = revision
                self._refreshed = self._clock()
        except (psycopg.Error, StoreError) as exc:
            reason = str(exc) if isinstance(exc, StoreError) else await self.db.diagnose(exc)
            if reason != self._reason:
                _log.warning("tenant_store_unavailable", store=self.shown, reason=reason)
            self._reason = reason
            return
        if self._reason is not None:
            _log.info("tenant_store_connected", store=self.shown, tenants=len(self._providers), revision=revision)
        self._reason = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()
