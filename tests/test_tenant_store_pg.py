"""The PostgreSQL tenant store against a real server: records, sealed keys, outages, rotation, migration.

The server is Debian's PostgreSQL, started by the tests (``tests/postgres_server.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy import crypto, database_url, policy, tenants
from airgap_proxy.config import Config, ProviderType
from airgap_proxy.tenant_cache import SharedTenantStore
from airgap_proxy.tenant_store import TenantStore
from tests.conftest import make_config
from tests.fakes import FakeUpstream
from tests.postgres_server import PASSWORD, PASSWORD_IN_URL, PostgresServer
from tests.test_admin import ADMIN, ADMIN_TOKEN, SECRET_KEY, TENANT_KEY, admin_client, provider, put
from tests.test_serve import clean_env, free_port

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
NEW_SECRET_KEY = "another-tenant-secret-key-fedcba9876543210"


def pg_config(url: str, **tenants: Any) -> Config:
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN, "AIRGAP_PROXY_SECRET_KEY": SECRET_KEY}
    return make_config({"tenants": {"store": url, "refresh_s": 0.2, "max_stale_s": 1.0, **tenants}}, env)


def run_cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airgap_proxy", *args],
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_password(text: str) -> None:
    assert PASSWORD not in text
    assert PASSWORD_IN_URL not in text


async def test_providers_round_trip_and_the_table_holds_only_sealed_keys(
    aiohttp_client: Any, aiohttp_server: Any, postgres: PostgresServer, pg_database: str
) -> None:
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    client = await admin_client(aiohttp_client, pg_config(postgres.url(pg_database)))
    body = provider(f"http://127.0.0.1:{upstream.port}/v1", model="m1", api_key=TENANT_KEY)
    first = await put(client, "team-a", body)
    assert first.status == 201, await first.text()
    again = await put(client, "team-a", body)
    assert again.status == 200 and (await again.json())["created"] is False
    assert (await put(client, "team-b", provider(f"http://127.0.0.1:{upstream.port}/v1"))).status == 201

    listed = await (await client.get("/api/v1/tenants", headers=ADMIN)).json()
    assert [p["tenant"] for p in listed["data"]] == ["team-a", "team-b"]
    answer = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert answer.status == 200 and answer.headers["X-Airgap-Upstream"] == "tenant:team-a"
    assert fake.received[-1].headers["Authorization"] == f"Bearer {TENANT_KEY}"

    dump = postgres.psql(
        pg_database, "SELECT tenant, key_id, encode(key_nonce, 'hex'), encode(key_sealed, 'hex') FROM tenant_providers"
    )
    assert TENANT_KEY not in dump and TENANT_KEY.encode().hex() not in dump
    row = dict(zip(("tenant", "key_id", "nonce", "sealed"), dump.splitlines()[0].split("|"), strict=True))
    keyring = crypto.Keyring.from_texts(SECRET_KEY, (), lambda n: b"\0" * n)
    sealed = crypto.Sealed(row["key_id"], bytes.fromhex(row["nonce"]), bytes.fromhex(row["sealed"]))
    base_url = body["base_url"]
    assert keyring.open(sealed, crypto.associated_data("team-a", base_url)) == TENANT_KEY

    assert (await client.delete("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).status == 204
    after = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert after.headers["X-Airgap-Upstream"] == "deterministic"
    assert postgres.psql(pg_database, "SELECT count(*) FROM tenant_providers").strip() == "1"


async def test_a_write_through_another_app_is_served_after_one_poll(
    aiohttp_client: Any, aiohttp_server: Any, postgres: PostgresServer, pg_database: str
) -> None:
    upstream = await aiohttp_server(FakeUpstream().app())
    writer = await admin_client(aiohttp_client, pg_config(postgres.url(pg_database)))
    reader = await admin_client(aiohttp_client, pg_config(postgres.url(pg_database)))
    assert (await put(writer, "team-a", provider(f"http://127.0.0.1:{upstream.port}/v1"))).status == 201
    await asyncio.sleep(0.6)
    answer = await reader.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert answer.headers["X-Airgap-Upstream"] == "tenant:team-a"


async def test_an_unreachable_database_refuses_only_tenant_requests_and_says_why(aiohttp_client: Any) -> None:
    url = f"postgresql://airgap:{PASSWORD_IN_URL}@127.0.0.1:{free_port()}/tenants"
    with capture_logs() as logs:
        client = await admin_client(aiohttp_client, pg_config(url, timeout_s=1.0))
        plain = await client.post("/v1/chat/completions", json=CHAT)
        tenant = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
        anthropic = await client.post(
            "/v1/messages",
            json={"model": "x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            headers={"X-Tenant-ID": "team-a", "anthropic-version": "2023-06-01"},
        )
        admin = await put(client, "team-a", provider())
        ready = await client.get("/readyz")
        status = await client.get("/api/v1/llm/status")
        tenant_status = await client.get("/api/v1/llm/status?tenant=team-a")
    assert plain.status == 200
    assert tenant.status == 503 and (await tenant.json())["error"]["code"] == "tenant_store_unavailable"
    assert tenant.headers["X-Airgap-Error"] == "tenant_store_unavailable"
    assert anthropic.status == 503 and anthropic.headers["X-Airgap-Error"] == "tenant_store_unavailable"
    assert (await anthropic.json())["type"] == "error"
    assert admin.status == 503
    assert tenant_status.status == 503
    assert ready.status == 200
    store = (await ready.json())["tenant_store"]
    assert store["serving"] is False and store["connected"] is False and "refused" in store["reason"].lower()
    assert (await status.json())["tenant_store"]["reason"] == store["reason"]
    seen = json.dumps(logs) + json.dumps(store) + await tenant.text() + await admin.text()
    assert_no_password(seen)
    assert any(e["event"] == "tenant_store_unavailable" for e in logs)


def test_the_password_is_masked_in_the_redacted_config_and_store_url_env_reads_it() -> None:
    url = f"postgresql://airgap:{PASSWORD_IN_URL}@db.example:5432/tenants?sslmode=require"
    config = make_config({"tenants": {"store_url_env": "AIRGAP_PROXY_TENANT_DB"}}, {"AIRGAP_PROXY_TENANT_DB": url})
    assert config.tenants.store == url and config.tenants.is_postgres
    shown = json.dumps(config.redacted())
    assert_no_password(shown + repr(config))
    assert "postgresql://airgap:***@db.example:5432/tenants" in shown
    assert database_url.scrub(f"auth failed for {PASSWORD}", url) == "auth failed for ***"


def test_a_bad_store_value_is_reported_without_its_password(tmp_path: Path) -> None:
    # A mistyped scheme is taken for a file path: the start-up error must still mask it.
    config = tmp_path / "proxy.yaml"
    config.write_text(json.dumps({"tenants": {"store": f"postgresql+x://u:{PASSWORD_IN_URL}@h/db/"}}))
    done = run_cli(
        "serve", "--port", str(free_port()), "--config", str(config), env={"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    assert done.returncode == 1
    assert "tenant store" in done.stderr
    assert_no_password(done.stderr + done.stdout)


def test_rotate_keys_reseals_every_key_in_postgresql(
    tmp_path: Path, postgres: PostgresServer, pg_database: str
) -> None:
    url = postgres.url(pg_database)
    asyncio.run(_fill(url, {"team-a": TENANT_KEY, "team-b": None, "team-c": "sk-another-long-tenant-key"}))
    env = {
        "AIRGAP_PROXY_TENANT_DB": url,
        "AIRGAP_PROXY_SECRET_KEY": NEW_SECRET_KEY,
        "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS": SECRET_KEY,
    }
    config = tmp_path / "proxy.yaml"
    config.write_text("version: 1\ntenants:\n  store_url_env: AIRGAP_PROXY_TENANT_DB\n")
    done = run_cli("rotate-keys", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 tenant API key(s)" in done.stdout and "1 without a key" in done.stdout
    assert_no_password(done.stdout + done.stderr)
    new_id = crypto.parse_secret_key(NEW_SECRET_KEY).key_id
    assert postgres.psql(
        pg_database, "SELECT DISTINCT key_id FROM tenant_providers WHERE key_id IS NOT NULL"
    ).split() == [new_id]
    opened = asyncio.run(_open_keys(url, NEW_SECRET_KEY))
    assert opened == {"team-a": TENANT_KEY, "team-b": None, "team-c": "sk-another-long-tenant-key"}
    again = run_cli("rotate-keys", "--config", str(config), env=env)
    assert "re-encrypted 0" in again.stdout and "2 already current" in again.stdout


def test_migrate_copies_every_provider_with_its_sealed_key_unchanged(
    tmp_path: Path, postgres: PostgresServer, pg_database: str
) -> None:
    source = tmp_path / "tenants.db"
    asyncio.run(_fill_sqlite(source, {"team-a": TENANT_KEY, "team-b": None, "team-c": "sk-another-long-tenant-key"}))
    url = postgres.url(pg_database)
    done = run_cli("tenants", "migrate", "--from", str(source), "--to", url, env={})
    assert done.returncode == 0, done.stderr
    assert "3 added, 0 replaced, 0 skipped" in done.stdout
    assert_no_password(done.stdout + done.stderr)
    with sqlite3.connect(source) as db:
        columns = (
            "tenant, provider_type, base_url, model, key_id, hex(key_nonce), hex(key_sealed), key_hint, decision, "
            "updated_at"
        )
        expected = [
            "|".join("" if v is None else str(v) for v in row)
            for row in db.execute(f"SELECT {columns} FROM tenant_providers ORDER BY tenant")
        ]
    columns_pg = columns.replace("hex(key_nonce)", "upper(encode(key_nonce, 'hex'))").replace(
        "hex(key_sealed)", "upper(encode(key_sealed, 'hex'))"
    )
    copied = postgres.psql(pg_database, f"SELECT {columns_pg} FROM tenant_providers ORDER BY tenant").splitlines()
    assert copied == expected
    assert asyncio.run(_open_keys(url, SECRET_KEY))["team-a"] == TENANT_KEY

    skipped = run_cli("tenants", "migrate", "--from", str(source), "--to", url, env={})
    assert "0 added, 0 replaced, 3 skipped" in skipped.stdout
    replaced = run_cli("tenants", "migrate", "--from", str(source), "--to", url, "--overwrite", env={})
    assert "0 added, 3 replaced, 0 skipped" in replaced.stdout
    missing = run_cli("tenants", "migrate", "--from", str(tmp_path / "none.db"), "--to", url, env={})
    assert missing.returncode == 1 and "does not exist" in missing.stderr


# --------------------------------------------------------------------------- #
# Helpers: records written as the admin API writes them
# --------------------------------------------------------------------------- #


def _records(keys: dict[str, str | None]) -> list[Any]:
    keyring = crypto.Keyring.from_texts(SECRET_KEY, (), os.urandom)
    records = []
    for tenant, key in keys.items():
        base_url = f"http://127.0.0.1:9/{tenant}/v1"
        records.append(
            tenants.StoredProvider(
                tenant=tenant,
                provider_type=ProviderType("local-vllm"),
                base_url=base_url,
                model=f"model-{tenant}",
                sealed_key=tenants.seal_api_key(keyring, tenant, base_url, key),
                key_hint=tenants.key_hint(key),
                decision=policy.Decision(
                    policy.Verdict.LOCAL, "loopback", policy.Rule.ALLOW_NETWORK, "127.0.0.1", ("127.0.0.1",)
                ),
                updated_at="2026-01-02T03:04:05Z",
            )
        )
    return records


async def _fill(url: str, keys: dict[str, str | None]) -> None:
    store = SharedTenantStore(pg_config(url).tenants)
    await store.open(create=True)
    try:
        for record in _records(keys):
            await store.put(record)
    finally:
        await store.close()


async def _fill_sqlite(path: Path, keys: dict[str, str | None]) -> None:
    store = TenantStore(path)
    store.open()
    try:
        for record in _records(keys):
            store.put(record)
    finally:
        store.close()


async def _open_keys(url: str, secret: str) -> dict[str, str | None]:
    keyring = crypto.Keyring.from_texts(secret, (), os.urandom)
    store = SharedTenantStore(pg_config(url).tenants)
    await store.open(create=True)
    try:
        return {p.tenant: tenants.open_api_key(p, keyring) for p in await store.list()}
    finally:
        await store.close()
