"""The tenant store in PostgreSQL, shared by gateway replicas (an edge: database I/O only).

- psycopg 3 with a bounded :class:`psycopg_pool.AsyncConnectionPool`: at most
  ``tenants.pool_size`` connections, each connect and each statement bounded
  by ``tenants.timeout_s``; a connection is checked before use, so one broken
  by a database restart is replaced rather than failing a request.
- The same records as the SQLite store, keys sealed the same way
  (:mod:`airgap_proxy.crypto`): the store never sees a plaintext key.
- :meth:`PostgresStore.migrate` creates or upgrades the schema under a
  transaction-scoped advisory lock, so replicas starting together take turns.
- Every change bumps one revision counter in the same transaction; readers
  poll it (:mod:`airgap_proxy.tenant_cache`) and reload only when it moved.
- Every error message is scrubbed of the URL's password
  (:func:`airgap_proxy.database_url.scrub`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, NoReturn

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from airgap_proxy import crypto, database_url
from airgap_proxy.errors import TenantStoreUnavailable
from airgap_proxy.tenant_store import RotationReport, StoreError, decision_json, provider_from, reseal_into
from airgap_proxy.tenants import StoredProvider

SCHEMA_VERSION = 1
# The pool logs every failed connection attempt; the poller logs each change of state once instead.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
# pg_advisory_xact_lock key: "airgap-p" as a 64-bit integer, so no other application's lock collides by chance.
MIGRATION_LOCK = 0x6169726761702D70
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS airgap_proxy_meta (
        id             integer PRIMARY KEY CHECK (id = 1),
        schema_version integer NOT NULL,
        revision       bigint  NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tenant_providers (
        tenant        text PRIMARY KEY,
        provider_type text NOT NULL,
        base_url      text NOT NULL,
        model         text NOT NULL,
        key_id        text,
        key_nonce     bytea,
        key_sealed    bytea,
        key_hint      text,
        decision      text NOT NULL,
        updated_at    text NOT NULL
    )""",
)
_SELECT_ALL = """
SELECT tenant, provider_type, base_url, model, key_id, key_nonce, key_sealed, key_hint, decision, updated_at
FROM tenant_providers ORDER BY tenant
"""
_SELECT_ONE = """
SELECT tenant, provider_type, base_url, model, key_id, key_nonce, key_sealed, key_hint, decision, updated_at
FROM tenant_providers WHERE tenant = %s
"""
_UPSERT = """
INSERT INTO tenant_providers
(tenant, provider_type, base_url, model, key_id, key_nonce, key_sealed, key_hint, decision, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tenant) DO UPDATE SET
provider_type = EXCLUDED.provider_type, base_url = EXCLUDED.base_url, model = EXCLUDED.model,
key_id = EXCLUDED.key_id, key_nonce = EXCLUDED.key_nonce, key_sealed = EXCLUDED.key_sealed,
key_hint = EXCLUDED.key_hint, decision = EXCLUDED.decision, updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS created
"""
_BUMP = "UPDATE airgap_proxy_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision"
_MAX_REASON_CHARS = 300


def _values(provider: StoredProvider) -> tuple[Any, ...]:
    sealed = provider.sealed_key
    return (
        provider.tenant,
        provider.provider_type.value,
        provider.base_url,
        provider.model,
        sealed.key_id if sealed else None,
        sealed.nonce if sealed else None,
        sealed.ciphertext if sealed else None,
        provider.key_hint,
        decision_json(provider.decision),
        provider.updated_at,
    )


class PostgresStore:
    """The tables and the pool; every method is one transaction."""

    def __init__(self, url: str, *, pool_size: int, timeout_s: float) -> None:
        self.url = url
        self.shown = database_url.mask(url)
        statement_ms = max(1, round(timeout_s * 1000))
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, math.ceil(timeout_s)),
            "application_name": "airgap-proxy",
            "options": f"-c statement_timeout={statement_ms}",
        }
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            name="tenant-store",
            timeout=timeout_s,
            # Give up on a failing connection attempt soon: the next use starts a fresh one.
            reconnect_timeout=max(2 * timeout_s, 4.0),
            check=AsyncConnectionPool.check_connection,
            kwargs=self._connect_kwargs,
        )

    def reason(self, exc: BaseException) -> str:
        """What went wrong, safe to log and show: first line, no password."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return database_url.scrub(text, self.url)[:_MAX_REASON_CHARS]

    def unavailable(self, exc: BaseException) -> NoReturn:
        raise TenantStoreUnavailable(
            f"The tenant store is unavailable ({self.reason(exc)}); tenant requests are refused until it is back"
        ) from None

    async def diagnose(self, exc: BaseException) -> str:
        """Why the pool had no connection to give: one direct attempt tells what the pool saw."""
        if not isinstance(exc, PoolTimeout):
            return self.reason(exc)
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, **self._connect_kwargs)
        except psycopg.Error as direct:
            return self.reason(direct)
        await conn.close()
        return self.reason(exc)

    async def open(self) -> None:
        """Start the pool; it connects in the background (an unreachable database is not an error here)."""
        try:
            await self._pool.open(wait=False)
        except psycopg.Error as exc:
            raise StoreError(f"tenant store {self.shown}: {self.reason(exc)}") from None

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> None:
        """Create or upgrade the schema, one replica at a time (raises psycopg errors, or StoreError if newer)."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            for statement in _SCHEMA:
                await conn.execute(statement)
            row = await (await conn.execute("SELECT schema_version FROM airgap_proxy_meta WHERE id = 1")).fetchone()
            if row is None:
                await conn.execute(
                    "INSERT INTO airgap_proxy_meta (id, schema_version, revision) VALUES (1, %s, 0)", (SCHEMA_VERSION,)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"tenant store {self.shown} was written by a newer airgap-proxy (schema {row[0]})")

    async def snapshot(self, known: int | None) -> tuple[int, list[StoredProvider] | None]:
        """The revision, and every record when it differs from ``known`` (one consistent read)."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = await (await conn.execute("SELECT revision FROM airgap_proxy_meta WHERE id = 1")).fetchone()
            revision = int(row[0]) if row is not None else 0
            if revision == known:
                return revision, None
            cursor = conn.cursor(row_factory=dict_row)
            rows = await (await cursor.execute(_SELECT_ALL)).fetchall()
            return revision, [provider_from(r) for r in rows]

    async def get(self, tenant: str) -> StoredProvider | None:
        try:
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=dict_row)
                row = await (await cursor.execute(_SELECT_ONE, (tenant,))).fetchone()
        except psycopg.Error as exc:
            self.unavailable(exc)
        return provider_from(row) if row is not None else None

    async def list(self) -> list[StoredProvider]:
        try:
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=dict_row)
                rows = await (await cursor.execute(_SELECT_ALL)).fetchall()
        except psycopg.Error as exc:
            self.unavailable(exc)
        return [provider_from(r) for r in rows]

    async def put(self, provider: StoredProvider) -> bool:
        """Insert or replace the tenant's record; True when it is new."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                row = await (await conn.execute(_UPSERT, _values(provider))).fetchone()
                await conn.execute(_BUMP)
        except psycopg.Error as exc:
            self.unavailable(exc)
        return bool(row and row[0])

    async def delete(self, tenant: str) -> bool:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = await conn.execute("DELETE FROM tenant_providers WHERE tenant = %s", (tenant,))
                deleted = cursor.rowcount > 0
                if deleted:
                    await conn.execute(_BUMP)
        except psycopg.Error as exc:
            self.unavailable(exc)
        return deleted

    async def rotate(self, keyring: crypto.Keyring) -> RotationReport:
        """Re-seal every key not sealed with the current key, all in one transaction."""
        report = RotationReport()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = conn.cursor(row_factory=dict_row)
                rows = await (await cursor.execute(_SELECT_ALL.rstrip() + " FOR UPDATE")).fetchall()
                resealed: list[tuple[str, crypto.Sealed]] = []
                for row in rows:
                    reseal_into(provider_from(row), keyring, report, resealed)
                for tenant, sealed in resealed:
                    await conn.execute(
                        "UPDATE tenant_providers SET key_id = %s, key_nonce = %s, key_sealed = %s WHERE tenant = %s",
                        (sealed.key_id, sealed.nonce, sealed.ciphertext, tenant),
                    )
                if report.resealed:
                    await conn.execute(_BUMP)
        except psycopg.Error as exc:
            raise StoreError(f"tenant store {self.shown}: {self.reason(exc)}; nothing was changed") from None
        return report

    async def import_providers(self, providers: Iterable[StoredProvider], *, overwrite: bool) -> tuple[int, int, int]:
        """Copy records as they are (sealed keys byte for byte): (added, replaced, skipped)."""
        added = replaced = skipped = 0
        try:
            async with self._pool.connection() as conn, conn.transaction():
                for provider in providers:
                    exists = await (
                        await conn.execute("SELECT 1 FROM tenant_providers WHERE tenant = %s", (provider.tenant,))
                    ).fetchone()
                    if exists and not overwrite:
                        skipped += 1
                        continue
                    await conn.execute(_UPSERT, _values(provider))
                    added, replaced = (added, replaced + 1) if exists else (added + 1, replaced)
                if added or replaced:
                    await conn.execute(_BUMP)
        except psycopg.Error as exc:
            raise StoreError(f"tenant store {self.shown}: {self.reason(exc)}; nothing was copied") from None
        return added, replaced, skipped
