"""The tenant store: one SQLite file of tenant providers (an edge: file I/O only).

- The file is created with mode 0600 (SQLite gives its ``-wal`` and ``-shm``
  files the same mode) and tightened to 0600 if it exists with a wider one.
- WAL journal, ``synchronous=FULL``: a committed change survives a crash.
- Every change is one ``BEGIN IMMEDIATE`` transaction, so concurrent writers
  (the server, ``rotate-keys``) never see or leave half a record.
- API keys are stored only sealed (:mod:`airgap_proxy.crypto`); the store never
  sees a plaintext key.

:class:`TenantStore` is synchronous (the CLI uses it as is);
:class:`AsyncTenantStore` runs it on one dedicated thread so the event loop
never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from airgap_proxy import crypto, policy
from airgap_proxy.config import ProviderType
from airgap_proxy.tenants import StoredProvider

SCHEMA_VERSION = 1
FILE_MODE = 0o600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenant_providers (
    tenant        TEXT PRIMARY KEY,
    provider_type TEXT NOT NULL,
    base_url      TEXT NOT NULL,
    model         TEXT NOT NULL,
    key_id        TEXT,
    key_nonce     BLOB,
    key_sealed    BLOB,
    key_hint      TEXT,
    decision      TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) WITHOUT ROWID
"""
_SELECT_ALL = """
SELECT tenant, provider_type, base_url, model, key_id, key_nonce, key_sealed, key_hint, decision, updated_at
FROM tenant_providers ORDER BY tenant
"""
_SELECT_ONE = """
SELECT tenant, provider_type, base_url, model, key_id, key_nonce, key_sealed, key_hint, decision, updated_at
FROM tenant_providers WHERE tenant = ?
"""
_UPSERT = """
INSERT OR REPLACE INTO tenant_providers
(tenant, provider_type, base_url, model, key_id, key_nonce, key_sealed, key_hint, decision, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
T = TypeVar("T")


class StoreError(Exception):
    """The store cannot be opened or used. The message names the file, never a key or a password."""


class Store(Protocol):
    """What the server needs of a tenant store (SQLite here, PostgreSQL in :mod:`.tenant_store_pg`).

    ``lookup`` is the per-request read: it may answer from memory, and raises
    :class:`airgap_proxy.errors.TenantStoreUnavailable` when it cannot answer.
    ``get`` and ``list`` read the store itself (the admin API). ``health`` is
    what ``/readyz`` and the status show, or None when there is nothing to say.
    """

    @property
    def shown(self) -> str: ...

    async def open(self, *, create: bool) -> bool: ...

    async def close(self) -> None: ...

    async def lookup(self, tenant: str) -> StoredProvider | None: ...

    async def get(self, tenant: str) -> StoredProvider | None: ...

    async def list(self) -> list[StoredProvider]: ...

    async def put(self, provider: StoredProvider) -> bool: ...

    async def delete(self, tenant: str) -> bool: ...

    def health(self) -> dict[str, Any] | None: ...


def decision_json(decision: policy.Decision) -> str:
    return json.dumps(
        {
            "verdict": decision.verdict.value,
            "reason": decision.reason,
            "rule": decision.rule.value,
            "host": decision.host,
            "addresses": list(decision.addresses),
        },
        separators=(",", ":"),
    )


def decision_from(text: str) -> policy.Decision:
    data = json.loads(text)
    return policy.Decision(
        policy.Verdict(data["verdict"]),
        str(data["reason"]),
        policy.Rule(data["rule"]),
        str(data.get("host", "")),
        tuple(str(a) for a in data.get("addresses", ())),
    )


def provider_from(row: Mapping[str, Any] | sqlite3.Row) -> StoredProvider:
    """A stored record (an SQLite or a PostgreSQL row) as a provider."""
    sealed = None
    if row["key_id"] is not None:
        sealed = crypto.Sealed(row["key_id"], bytes(row["key_nonce"]), bytes(row["key_sealed"]))
    return StoredProvider(
        tenant=row["tenant"],
        provider_type=ProviderType(row["provider_type"]),
        base_url=row["base_url"],
        model=row["model"],
        sealed_key=sealed,
        key_hint=row["key_hint"],
        decision=decision_from(row["decision"]),
        updated_at=row["updated_at"],
    )


@dataclass
class RotationReport:
    """What ``rotate-keys`` did, by count (and the tenants it could not re-encrypt, with why)."""

    resealed: int = 0
    current: int = 0
    without_key: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


class TenantStore:
    """Synchronous access to the store file; use from one thread at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        return Path(path).is_file()

    def open(self) -> None:
        """Open (creating with mode 0600 if needed) and bring the schema up to date."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            os.close(fd)
            if stat.S_IMODE(self.path.stat().st_mode) & ~FILE_MODE:
                os.chmod(self.path, FILE_MODE)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open tenant store {str(self.path)!r}: {_why(exc)}") from None
        db.row_factory = sqlite3.Row
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"tenant store {str(self.path)!r}: the file system does not support WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"tenant store {str(self.path)!r} was written by a newer airgap-proxy (schema {version})"
                )
            with _transaction(db):
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot open tenant store {str(self.path)!r}: {_why(exc)}") from None
        except StoreError:
            db.close()
            raise
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the tenant store is not open")
        return self._db

    def get(self, tenant: str) -> StoredProvider | None:
        row = self.db.execute(_SELECT_ONE, (tenant,)).fetchone()
        return provider_from(row) if row is not None else None

    def list(self) -> list[StoredProvider]:
        rows = self.db.execute(_SELECT_ALL).fetchall()
        return [provider_from(r) for r in rows]

    def put(self, provider: StoredProvider) -> bool:
        """Insert or replace the tenant's record in one transaction; True when it is new."""
        sealed = provider.sealed_key
        values = (
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
        with _transaction(self.db) as db:
            existed = db.execute("SELECT 1 FROM tenant_providers WHERE tenant = ?", (provider.tenant,)).fetchone()
            db.execute(_UPSERT, values)
        return existed is None

    def delete(self, tenant: str) -> bool:
        with _transaction(self.db) as db:
            cursor = db.execute("DELETE FROM tenant_providers WHERE tenant = ?", (tenant,))
        return cursor.rowcount > 0

    def rotate(self, keyring: crypto.Keyring) -> RotationReport:
        """Re-seal every key not sealed with the current key, all in one transaction."""
        try:
            return self._rotate(keyring)
        except sqlite3.Error as exc:
            raise StoreError(f"tenant store {str(self.path)!r}: {_why(exc)}; nothing was changed") from None

    def _rotate(self, keyring: crypto.Keyring) -> RotationReport:
        report = RotationReport()
        with _transaction(self.db) as db:
            resealed: list[tuple[str, crypto.Sealed]] = []
            for row in db.execute(_SELECT_ALL).fetchall():
                reseal_into(provider_from(row), keyring, report, resealed)
            for tenant, sealed in resealed:
                db.execute(
                    "UPDATE tenant_providers SET key_id = ?, key_nonce = ?, key_sealed = ? WHERE tenant = ?",
                    (sealed.key_id, sealed.nonce, sealed.ciphertext, tenant),
                )
        return report


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or exc.__class__.__name__


class AsyncTenantStore:
    """The store for the event loop: every call runs on the store's own thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._store = TenantStore(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenant-store")

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def shown(self) -> str:
        return str(self._store.path)

    def health(self) -> dict[str, Any] | None:
        return None

    async def lookup(self, tenant: str) -> StoredProvider | None:
        """The file is local and every worker must see every write at once: read it each time."""
        return await self.get(tenant)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self, *, create: bool) -> bool:
        """Open the store; without ``create`` a missing file is left alone (returns False)."""

        def open_it() -> bool:
            if not create and not TenantStore.exists(self._store.path):
                return False
            self._store.open()
            return True

        return await self._run(open_it)

    async def close(self) -> None:
        try:
            await self._run(self._store.close)
        finally:
            self._executor.shutdown(wait=True)

    async def get(self, tenant: str) -> StoredProvider | None:
        return await self._run(lambda: self._store.get(tenant))

    async def list(self) -> list[StoredProvider]:
        return await self._run(self._store.list)

    async def put(self, provider: StoredProvider) -> bool:
        return await self._run(lambda: self._store.put(provider))

    async def delete(self, tenant: str) -> bool:
        return await self._run(lambda: self._store.delete(tenant))


def reseal_into(
    provider: StoredProvider, keyring: crypto.Keyring, report: RotationReport, out: list[tuple[str, crypto.Sealed]]
) -> None:
    """Count ``provider`` in ``report``; a key that needs re-sealing goes to ``out`` (every store's rotation)."""
    if provider.sealed_key is None:
        report.without_key += 1
        return
    aad = crypto.associated_data(provider.tenant, provider.base_url)
    try:
        resealed = keyring.reseal(provider.sealed_key, aad)
    except crypto.SealError as exc:
        report.failed.append((provider.tenant, str(exc)))
        return
    if resealed is None:
        report.current += 1
        return
    out.append((provider.tenant, resealed))
    report.resealed += 1
