"""The tenant store at rest: persistence, no plaintext key anywhere, key rotation."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy import crypto
from airgap_proxy.app import create_app
from airgap_proxy.cli import main
from airgap_proxy.tenant_store import StoreError, TenantStore
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, ADMIN_TOKEN, SECRET_KEY, assert_envelope, provider, put, tenant_config

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
KEY_A = "sk-plaintext-key-a-7Qx9Lm2Vb8Nc"
KEY_B = "sk-plaintext-key-b-3Rt6Yp1Zs4Kd"
NEW_SECRET = "base64:" + base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
async def fake_url(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    return fake, f"http://127.0.0.1:{server.port}/v1"


def store_files(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file()]


def read_store(path: Path) -> TenantStore:
    store = TenantStore(path)
    store.open()
    return store


async def test_records_survive_a_restart(aiohttp_client: Any, tmp_path: Path, fake_url: Any) -> None:
    fake, url = fake_url
    first = await aiohttp_client(create_app(tenant_config(tmp_path)))
    assert (await put(first, "team-a", provider(url, api_key=KEY_A))).status == 201
    view = await (await first.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).json()
    await first.close()

    second = await aiohttp_client(create_app(tenant_config(tmp_path)))
    assert await (await second.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).json() == view
    resp = await second.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 200
    assert fake.received[0].headers["Authorization"] == f"Bearer {KEY_A}"


async def test_existing_store_is_used_with_the_admin_api_off(
    aiohttp_client: Any, tmp_path: Path, fake_url: Any
) -> None:
    fake, url = fake_url
    first = await aiohttp_client(create_app(tenant_config(tmp_path)))
    await put(first, "team-a", provider(url, api_key=KEY_A))
    await first.close()
    client = await aiohttp_client(create_app(tenant_config(tmp_path, admin=False)))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 200
    assert fake.received[0].headers["Authorization"] == f"Bearer {KEY_A}"
    assert (await client.get("/api/v1/tenants", headers=ADMIN)).status == 404


async def test_no_store_file_is_created_without_the_admin_api(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(tenant_config(tmp_path, admin=False)))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "deterministic"
    assert store_files(tmp_path) == []


async def test_plaintext_key_is_in_no_file_log_or_response(aiohttp_client: Any, tmp_path: Path, fake_url: Any) -> None:
    fake, url = fake_url
    responses: list[bytes] = []
    with capture_logs() as logs:
        client = await aiohttp_client(create_app(tenant_config(tmp_path)))
        for tenant, key in (("team-a", KEY_A), ("team-b", KEY_B)):
            resp = await put(client, tenant, provider(url, api_key=key), verify=True)
            responses.append(await resp.read())
        for endpoint in ("/api/v1/tenants", "/api/v1/tenants/team-a/llm-provider", "/api/v1/llm/status?tenant=team-a"):
            responses.append(await (await client.get(endpoint, headers=ADMIN)).read())
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-b"})
        responses.append(await resp.read())
        # Force the WAL to hold the latest pages, as it would in a running server.
        files = store_files(tmp_path)
    assert {p.name for p in files} >= {"tenants.db", "tenants.db-wal"}
    for path in files:
        data = path.read_bytes()
        for key in (KEY_A, KEY_B):
            assert key.encode() not in data, path.name
            assert key.encode("utf-16-le") not in data, path.name
            assert base64.b64encode(key.encode()) not in data, path.name
    for key in (KEY_A, KEY_B, SECRET_KEY, ADMIN_TOKEN):
        assert key not in repr(logs)
        assert all(key.encode() not in body for body in responses)
    assert fake.received[0].headers["Authorization"] == f"Bearer {KEY_B}"  # it was really used
    await client.close()


async def test_store_files_are_private(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(tenant_config(tmp_path)))
    await put(client, "team-a", provider(api_key=KEY_A))
    for name in ("tenants.db", "tenants.db-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    await client.close()
    with sqlite3.connect(tmp_path / "tenants.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_an_existing_wide_open_store_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    path.touch()
    os.chmod(path, 0o644)
    store = read_store(path)
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_store_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot open tenant store .*missing/tenants\.db.*no such file"):
        TenantStore(tmp_path / "missing" / "tenants.db").open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"garbage\.db"):
        TenantStore(garbage).open()


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.db"
    read_store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreError, match="newer airgap-proxy"):
        TenantStore(path).open()


def test_serve_fails_cleanly_when_the_store_cannot_open(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"tenants: {{store: {tmp_path / 'missing' / 'tenants.db'}}}\nlisten: {{port: 0}}\n")
    env = {"PATH": os.environ.get("PATH", ""), "AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "airgap_proxy", "serve", "--config", str(config)],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot open tenant store" in result.stderr
    assert "Traceback" not in result.stderr
    assert ADMIN_TOKEN not in result.stderr + result.stdout


async def test_a_ciphertext_moved_to_another_tenant_does_not_decrypt(
    aiohttp_client: Any, tmp_path: Path, fake_url: Any
) -> None:
    fake, url = fake_url
    client = await aiohttp_client(create_app(tenant_config(tmp_path)))
    await put(client, "team-a", provider(url, api_key=KEY_A))
    await put(client, "team-b", provider(url, api_key=KEY_B))
    with sqlite3.connect(tmp_path / "tenants.db") as db:
        nonce, sealed = db.execute(
            "SELECT key_nonce, key_sealed FROM tenant_providers WHERE tenant='team-a'"
        ).fetchone()
        db.execute("UPDATE tenant_providers SET key_nonce=?, key_sealed=? WHERE tenant='team-b'", (nonce, sealed))
    db.close()
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-b"})
    assert resp.status == 500
    body = await resp.json()
    assert_envelope(body, "internal_error")
    assert "cannot be decrypted" in body["error"]["message"]
    assert fake.received == []
    assert KEY_A not in repr(logs) + str(body)


# --- rotation --------------------------------------------------------------------------


def rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, current: str | None, previous: str = ""
) -> Any:
    config = tmp_path / "rotate.yaml"
    config.write_text(f"tenants: {{store: {tmp_path / 'tenants.db'}}}\n")
    for name, value in (("AIRGAP_PROXY_SECRET_KEY", current), ("AIRGAP_PROXY_PREVIOUS_SECRET_KEYS", previous)):
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    code = main(["rotate-keys", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def key_ids(tmp_path: Path) -> dict[str, str | None]:
    store = read_store(tmp_path / "tenants.db")
    try:
        return {p.tenant: p.sealed_key.key_id if p.sealed_key else None for p in store.list()}
    finally:
        store.close()


async def test_key_rotation(
    aiohttp_client: Any, tmp_path: Path, fake_url: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    fake, url = fake_url
    old_id = crypto.parse_secret_key(SECRET_KEY).key_id
    new_id = crypto.parse_secret_key(NEW_SECRET).key_id
    first = await aiohttp_client(create_app(tenant_config(tmp_path)))
    await put(first, "team-a", provider(url, api_key=KEY_A))
    await put(first, "team-b", provider(url, api_key=KEY_B))
    await put(first, "team-c", provider(url))
    await first.close()
    assert key_ids(tmp_path) == {"team-a": old_id, "team-b": old_id, "team-c": None}

    # 1. The new key alone cannot open the old records: 500, and no key is sent anywhere.
    with capture_logs() as logs:
        new_only = await aiohttp_client(
            create_app(tenant_config(tmp_path, env={"AIRGAP_PROXY_SECRET_KEY": NEW_SECRET}))
        )
    [warning] = [e for e in logs if e["event"] == "tenant_keys_undecryptable"]
    assert warning["key_ids"] == [old_id] and warning["tenants"] == ["team-a", "team-b"]
    resp = await new_only.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 500
    assert old_id in (await resp.json())["error"]["message"]
    assert fake.received == []
    await new_only.close()

    # 2. New key plus the previous one: old records open, new writes use the new key.
    env = {"AIRGAP_PROXY_SECRET_KEY": NEW_SECRET, "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS": SECRET_KEY}
    both = await aiohttp_client(create_app(tenant_config(tmp_path, env=env)))
    resp = await both.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 200
    assert fake.received[-1].headers["Authorization"] == f"Bearer {KEY_A}"
    await put(both, "team-d", provider(url, api_key="sk-team-d-written-after"))
    await both.close()
    assert key_ids(tmp_path) == {"team-a": old_id, "team-b": old_id, "team-c": None, "team-d": new_id}

    # 3. rotate-keys re-encrypts every record, prints counts and never a key.
    code, out, err = rotate(tmp_path, monkeypatch, capsys, NEW_SECRET, SECRET_KEY)
    assert code == 0, err
    assert out.strip() == (
        f"re-encrypted 2 tenant API key(s) with secret key id {new_id}; 1 already current, 1 without a key, 0 failed"
    )
    for secret in (KEY_A, KEY_B, SECRET_KEY, NEW_SECRET):
        assert secret not in out + err
    assert key_ids(tmp_path) == {"team-a": new_id, "team-b": new_id, "team-c": None, "team-d": new_id}
    code, out, _ = rotate(tmp_path, monkeypatch, capsys, NEW_SECRET, SECRET_KEY)
    assert code == 0 and "re-encrypted 0 tenant API key(s)" in out and "3 already current" in out

    # 4. After rotation the old key is no longer needed.
    after = await aiohttp_client(create_app(tenant_config(tmp_path, env={"AIRGAP_PROXY_SECRET_KEY": NEW_SECRET})))
    for tenant, key in (("team-a", KEY_A), ("team-b", KEY_B)):
        resp = await after.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": tenant})
        assert resp.status == 200
        assert fake.received[-1].headers["Authorization"] == f"Bearer {key}"
    for path in store_files(tmp_path):
        assert KEY_A.encode() not in path.read_bytes()


async def test_rotate_keys_names_records_it_cannot_open(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    first = await aiohttp_client(create_app(tenant_config(tmp_path)))
    await put(first, "team-a", provider(api_key=KEY_A))
    await first.close()
    code, out, err = rotate(tmp_path, monkeypatch, capsys, NEW_SECRET)
    assert code == 1
    assert "0 failed" not in out and "1 failed" in out
    assert "tenant team-a" in err and crypto.parse_secret_key(SECRET_KEY).key_id in err
    assert KEY_A not in out + err
    assert key_ids(tmp_path)["team-a"] == crypto.parse_secret_key(SECRET_KEY).key_id  # left as it was


def test_rotate_keys_without_a_store_or_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    code, out, _ = rotate(tmp_path, monkeypatch, capsys, NEW_SECRET)
    assert code == 0
    assert "does not exist: nothing to re-encrypt" in out
    assert not (tmp_path / "tenants.db").exists()
    code, _, err = rotate(tmp_path, monkeypatch, capsys, None)
    assert code == 2
    assert "AIRGAP_PROXY_SECRET_KEY" in err


def test_rotate_keys_with_a_bad_previous_key_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code, out, err = rotate(tmp_path, monkeypatch, capsys, NEW_SECRET, "short-old-key")
    assert code == 2
    assert "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS[0]: secret key is too short" in err
    assert "short-old-key" not in out + err
