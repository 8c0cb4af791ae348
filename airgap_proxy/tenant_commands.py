"""The command line's work on a PostgreSQL tenant store: ``rotate-keys`` and ``tenants migrate``.

Each opens its own pool, waits for the database (``tenants.timeout_s``),
brings the schema up to date and runs one transaction. Messages never show
the URL's password.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from airgap_proxy import crypto
from airgap_proxy.config import TenantsConfig
from airgap_proxy.tenant_store import RotationReport, StoreError, TenantStore
from airgap_proxy.tenant_store_pg import PostgresStore


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What ``tenants migrate`` did, by count."""

    read: int
    added: int
    replaced: int
    skipped: int


async def _opened(url: str, config: TenantsConfig) -> PostgresStore:
    store = PostgresStore(url, pool_size=1, timeout_s=config.timeout_s)
    await store.open()
    try:
        await store.migrate()
    except psycopg.Error as exc:
        await store.close()
        raise StoreError(f"cannot open tenant store {store.shown}: {store.reason(exc)}") from None
    except BaseException:
        await store.close()
        raise
    return store


async def rotate(config: TenantsConfig, keyring: crypto.Keyring) -> RotationReport:
    """Re-seal every key not sealed with the current key (one transaction)."""
    store = await _opened(config.store, config)
    try:
        return await store.rotate(keyring)
    finally:
        await store.close()


async def migrate(source: str, url: str, config: TenantsConfig, *, overwrite: bool) -> MigrationReport:
    """Copy every record of the SQLite store ``source`` into the PostgreSQL store ``url``, sealed keys unchanged.

    A tenant the target already has is skipped unless ``overwrite``. Nothing is
    copied if any part fails.
    """
    if not TenantStore.exists(source):
        raise StoreError(f"tenant store {source!r} does not exist")
    sqlite = TenantStore(source)
    try:
        sqlite.open()
        providers = sqlite.list()
    finally:
        sqlite.close()
    store = await _opened(url, config)
    try:
        added, replaced, skipped = await store.import_providers(providers, overwrite=overwrite)
    finally:
        await store.close()
    return MigrationReport(len(providers), added, replaced, skipped)
