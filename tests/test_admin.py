"""The admin API: authentication, validation before storing, redaction, the audit trail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy import crypto, policy, tenants
from airgap_proxy.app import create_app
from airgap_proxy.config import Config, load_config
from airgap_proxy.tenant_store import TenantStore
from tests.conftest import FakeResolver, make_config
from tests.fakes import FakeUpstream

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SECRET_KEY = "tenant-secret-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TENANT_KEY = "sk-tenant-a-secret-9f8e7d6c5b4a"
LOCAL_URL = "http://127.0.0.1:9/v1"


def tenant_config(
    tmp_path: Path,
    raw: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    *,
    admin: bool = True,
    secret: str | None = SECRET_KEY,
) -> Config:
    """A config whose tenant store lives in ``tmp_path``."""
    raw = dict(raw or {})
    raw["tenants"] = {"store": str(tmp_path / "tenants.db"), **raw.get("tenants", {})}
    full_env = dict(env or {})
    if admin:
        full_env.setdefault("AIRGAP_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)
    if secret is not None:
        full_env.setdefault("AIRGAP_PROXY_SECRET_KEY", secret)
    return make_config(raw, full_env)


def provider(base_url: object = LOCAL_URL, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"provider_type": "local-ollama", "base_url": base_url, "model": "llama3-a"}
    body.update(fields)
    return body


async def put(client: Any, tenant: str, body: Any, *, verify: bool = False, headers: Any = None) -> Any:
    path = f"/api/v1/tenants/{tenant}/llm-provider" + ("?verify=true" if verify else "")
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await client.put(path, data=data, headers=headers or {**ADMIN, "Content-Type": "application/json"})


async def admin_client(aiohttp_client: Any, config: Config, **kwargs: Any) -> Any:
    return await aiohttp_client(create_app(config, **kwargs))


def assert_envelope(body: dict[str, Any], code: str, param: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["param"] == param


ROUTES = [
    ("GET", "/api/v1/tenants"),
    ("PUT", "/api/v1/tenants/team-a/llm-provider"),
    ("GET", "/api/v1/tenants/team-a/llm-provider"),
    ("DELETE", "/api/v1/tenants/team-a/llm-provider"),
]


# --- authentication ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_disabled_admin_api_answers_404_and_creates_no_store(
    aiohttp_client: Any, tmp_path: Path, method: str, path: str
) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path, admin=False))
    resp = await client.request(method, path, json=provider(), headers=ADMIN)
    assert resp.status == 404
    body = await resp.json()
    assert_envelope(body, "not_found")
    assert "admin API is disabled" in body["error"]["message"]
    assert not (tmp_path / "tenants.db").exists()


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({}, 401, "unauthorized", id="no token"),
        pytest.param({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, "unauthorized", id="not a bearer token"),
        pytest.param({"Authorization": "Bearer "}, 401, "unauthorized", id="empty bearer token"),
        pytest.param({"Authorization": "Bearer wrong-token-0123456789abcdef"}, 403, "forbidden", id="wrong token"),
        pytest.param({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, 403, "forbidden", id="token with a suffix"),
        pytest.param({"Authorization": "Bearer ädmin"}, 403, "forbidden", id="non-ascii token"),
    ],
)
async def test_admin_authentication_failures(
    aiohttp_client: Any, tmp_path: Path, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await client.request(method, path, json=provider(), headers=headers)
    assert resp.status == status
    assert_envelope(await resp.json(), code)
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    listed = await client.get("/api/v1/tenants", headers=ADMIN)
    assert (await listed.json())["data"] == []  # nothing was stored


async def test_admin_token_from_file_enables_the_api(aiohttp_client: Any, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text(ADMIN_TOKEN + "\n")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"tenants: {{store: {tmp_path / 'tenants.db'}}}\nadmin: {{token_file: admin-token}}\n")
    client = await admin_client(aiohttp_client, load_config(str(config_file), {}))
    assert (await client.get("/api/v1/tenants", headers=ADMIN)).status == 200
    assert (await client.get("/api/v1/tenants")).status == 401


# --- the provider lifecycle ----------------------------------------------------------


async def test_put_get_list_delete(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await put(client, "team-a", provider(api_key=TENANT_KEY))
    assert resp.status == 201
    created = await resp.json()
    assert created["created"] is True
    assert created["api_key_set"] is True
    assert created["api_key_hint"] == "…" + TENANT_KEY[-4:]
    assert created["verdict"] == "local"
    assert created["base_url"] == LOCAL_URL
    assert created["updated_at"].endswith("Z")
    assert TENANT_KEY not in await resp.text()

    again = await put(client, "team-a", provider(model="llama3-b"))
    assert again.status == 200
    replaced = await again.json()
    assert replaced["created"] is False
    assert replaced["model"] == "llama3-b"
    assert replaced["api_key_set"] is False  # PUT replaces the whole record
    assert replaced["api_key_hint"] is None

    await put(client, "team-b", provider("http://[::1]:9/v1", provider_type="local-vllm", api_key="short-key"))
    got = await client.get("/api/v1/tenants/team-b/llm-provider", headers=ADMIN)
    assert got.status == 200
    view = await got.json()
    assert view["api_key_set"] is True
    assert view["api_key_hint"] is None  # a short key gets no hint
    assert view["provider_type"] == "local-vllm"
    assert "short-key" not in await got.text()

    listed = await (await client.get("/api/v1/tenants", headers=ADMIN)).json()
    assert listed["object"] == "list"
    assert [t["tenant"] for t in listed["data"]] == ["team-a", "team-b"]

    deleted = await client.delete("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)
    assert deleted.status == 204
    gone = await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)
    assert gone.status == 404
    assert_envelope(await gone.json(), "not_found")
    twice = await client.delete("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)
    assert twice.status == 404


async def test_base_url_is_stored_normalised(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await put(client, "team-a", provider("HTTP://0x7f.1:11434/v1"))
    assert resp.status == 201
    assert (await resp.json())["base_url"] == "http://127.0.0.1:11434/v1"


# --- validation: 400 -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(b"", None, id="empty body"),
        pytest.param(b"{not json", None, id="malformed json"),
        pytest.param(b"[1, 2]", None, id="not an object"),
        pytest.param({"base_url": LOCAL_URL, "model": "m"}, "provider_type", id="missing provider_type"),
        pytest.param({"provider_type": "local-ollama", "model": "m"}, "base_url", id="missing base_url"),
        pytest.param({"provider_type": "local-ollama", "base_url": LOCAL_URL}, "model", id="missing model"),
        pytest.param(provider(model=""), "model", id="empty model"),
        pytest.param(provider(model=7), "model", id="model not a string"),
        pytest.param(provider(base_url=["x"]), "base_url", id="base_url not a string"),
        pytest.param(provider(provider_type="openai"), "provider_type", id="hosted provider type"),
        pytest.param(provider(provider_type="local-magic"), "provider_type", id="unknown provider type"),
        pytest.param(provider(provider_type=1), "provider_type", id="provider_type not a string"),
        pytest.param(provider(api_key=123), "api_key", id="api_key not a string"),
        pytest.param(provider(api_key="sk-a\r\nX-Injected: 1"), "api_key", id="api_key with a newline"),
        pytest.param(provider(api_key="sk a"), "api_key", id="api_key with a space"),
        pytest.param(provider(api_key="k" * 4097), "api_key", id="api_key too long"),
        pytest.param(provider(base_url="http://127.0.0.1/" + "a" * 2100), "base_url", id="base_url too long"),
        pytest.param(provider(apikey="sk-typo"), "apikey", id="unknown field"),
    ],
)
async def test_malformed_bodies_are_400_and_store_nothing(
    aiohttp_client: Any, tmp_path: Path, body: Any, param: str | None
) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await put(client, "team-a", body)
    assert resp.status == 400
    assert_envelope(await resp.json(), "invalid_request_error", param)
    assert (await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).status == 404


@pytest.mark.parametrize("tenant", ["-leading-dash", "a" * 65, "a%20b", "a%2Fb", "%C3%A9t%C3%A9", "_x"])
async def test_invalid_tenant_ids_are_400(aiohttp_client: Any, tmp_path: Path, tenant: str) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    for method in ("PUT", "GET", "DELETE"):
        resp = await client.request(
            method, f"/api/v1/tenants/{tenant}/llm-provider", data=json.dumps(provider()), headers=ADMIN
        )
        assert resp.status in (400, 404), (method, resp.status)
        if resp.status == 400:
            assert_envelope(await resp.json(), "invalid_request_error", "tenant")
    listed = await (await client.get("/api/v1/tenants", headers=ADMIN)).json()
    assert listed["data"] == []


async def test_verify_flag_must_be_a_boolean(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await client.put(
        "/api/v1/tenants/team-a/llm-provider?verify=maybe", data=json.dumps(provider()), headers=ADMIN
    )
    assert resp.status == 400
    assert_envelope(await resp.json(), "invalid_request_error", "verify")


async def test_api_key_without_a_secret_key_is_refused(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path, secret=None))
    resp = await put(client, "team-a", provider(api_key=TENANT_KEY))
    assert resp.status == 400
    body = await resp.json()
    assert_envelope(body, "invalid_request_error", "api_key")
    assert "no secret key is configured" in body["error"]["message"]
    assert TENANT_KEY not in json.dumps(body)
    assert (await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).status == 404
    # Without a key the provider is fine.
    assert (await put(client, "team-a", provider())).status == 201
    assert (await put(client, "team-a", provider(api_key=None))).status == 200


# --- validation: the egress policy (422) ---------------------------------------------

ONLY_127_0_0_1 = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}}


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        pytest.param("https://api.openai.com/v1", "host api.openai.com is on the deny list", id="hosted api"),
        pytest.param("http://API.OpenAI.com./v1", "host api.openai.com is on the deny list", id="hosted api spelled"),
        pytest.param(
            "http://169.254.169.254/latest", "is in deny_networks (169.254.169.254/32)", id="metadata address"
        ),
        pytest.param("http://[::ffff:8.8.8.8]:80/v1", "embeds 8.8.8.8 (IPv4-mapped)", id="ipv4-mapped ipv6"),
        pytest.param("http://[::ffff:127.0.0.2]:80/v1", "embeds 127.0.0.2 (IPv4-mapped)", id="ipv4-mapped outside"),
        pytest.param("http://[::127.0.0.1]:9/v1", "is IPv4-compatible IPv6", id="ipv4-compatible loopback"),
        pytest.param("http://compat.test:9/v1", "is IPv4-compatible IPv6", id="name resolving ipv4-compatible"),
        pytest.param("http://user:pw-9d8c7b@127.0.0.1:9/v1", "URL contains userinfo", id="userinfo"),
        pytest.param("http://127.0.0.1:9/v1?api_key=pw-9d8c7b", "query string or fragment", id="query string"),
        pytest.param("http://127.0.0.1:9/v1#pw-9d8c7b", "query string or fragment", id="fragment"),
        pytest.param("http://outside.test:9/v1", "address 127.0.0.2 of host outside.test", id="name resolving out"),
        pytest.param("http://mixed.test:9/v1", "address 127.0.0.2 of host mixed.test", id="name with one bad address"),
        pytest.param("http://nowhere.test:9/v1", "host nowhere.test does not resolve", id="unresolvable name"),
        pytest.param("http://127.0.0.2:9/v1", "address 127.0.0.2 of host 127.0.0.2 is not in", id="ip outside"),
        pytest.param("http://2130706434:9/v1", "address 127.0.0.2", id="decimal ip outside"),
        pytest.param("ftp://127.0.0.1/v1", "scheme 'ftp' is not allowed", id="wrong scheme"),
        pytest.param("127.0.0.1:11434", "URL has no scheme", id="no scheme"),
        pytest.param("http://127.0.0.1\\@evil/v1", "backslash", id="backslash"),
        pytest.param("http://ollama.attacker.example/v1", "does not resolve", id="substring trick"),
    ],
)
async def test_external_or_invalid_base_url_is_422_and_keeps_the_previous_value(
    aiohttp_client: Any, tmp_path: Path, recorder: Any, base_url: str, reason: str
) -> None:
    outside = await recorder("127.0.0.2")
    resolver = FakeResolver(
        {"outside.test": ["127.0.0.2"], "mixed.test": ["127.0.0.1", "127.0.0.2"], "compat.test": ["::7f00:1"]}
    )
    config = tenant_config(tmp_path, ONLY_127_0_0_1)
    client = await admin_client(aiohttp_client, config, resolver=resolver)
    assert (await put(client, "team-a", provider(api_key=TENANT_KEY))).status == 201
    before = await (await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).json()

    with capture_logs() as logs:
        resp = await put(client, "team-a", provider(base_url.replace(":9/", f":{outside.port}/")), verify=True)
    assert resp.status == 422
    body = await resp.json()
    assert_envelope(body, "airgap_violation", "base_url")
    assert reason in body["error"]["message"]
    assert "Nothing was stored" in body["error"]["message"]
    assert "pw-9d8c7b" not in json.dumps(body) + repr(logs)
    after = await (await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).json()
    assert after == before
    assert outside.connections == 0
    refused = [e for e in logs if e["event"] == "tenant_provider_refused"]
    assert len(refused) == 1 and refused[0]["tenant"] == "team-a"
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["decision"] == "block" and audit["tenant"] == "team-a" and audit["status"] == 422


async def test_name_resolving_inside_is_stored_with_its_verdict(aiohttp_client: Any, tmp_path: Path) -> None:
    resolver = FakeResolver({"ollama.team-a": ["127.0.0.1"]})
    config = tenant_config(tmp_path, ONLY_127_0_0_1)
    client = await admin_client(aiohttp_client, config, resolver=resolver)
    resp = await put(client, "team-a", provider("http://ollama.team-a:11434/v1"))
    assert resp.status == 201
    body = await resp.json()
    assert body["verdict"] == "local"
    assert body["reason"] == policy.REASON_ALLOW_NETWORK.format(host="ollama.team-a", addresses="127.0.0.1")


async def test_report_only_stores_an_external_provider_and_says_so(aiohttp_client: Any, tmp_path: Path) -> None:
    config = tenant_config(tmp_path, {"airgapped": False})
    client = await admin_client(aiohttp_client, config)
    with capture_logs() as logs:
        resp = await put(client, "team-a", provider("https://api.openai.com/v1"))
    assert resp.status == 201
    body = await resp.json()
    assert body["verdict"] == "external"
    assert "deny list" in body["reason"]
    assert any(e["event"] == "tenant_provider_would_block" for e in logs)
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["decision"] == "would_block"


async def test_invalid_url_is_refused_even_in_report_only_mode(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path, {"airgapped": False}))
    resp = await put(client, "team-a", provider("http://u:p@127.0.0.1/v1"))
    assert resp.status == 422
    assert_envelope(await resp.json(), "airgap_violation", "base_url")


# --- ?verify=true --------------------------------------------------------------------


async def test_verify_probes_through_the_egress_path(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await put(client, "team-a", provider(f"http://127.0.0.1:{server.port}/v1", api_key=TENANT_KEY), verify=True)
    assert resp.status == 201
    body = await resp.json()
    assert body["verify"] == {"reachable": True, "status": 200, "error": None, "models": ["fake-model"]}
    assert fake.probes == ["/api/tags"]  # Ollama's free endpoint, never a completion
    assert fake.received == []

    vllm = await put(
        client, "team-a", provider(f"http://127.0.0.1:{server.port}/v1", provider_type="local-vllm"), verify=True
    )
    assert (await vllm.json())["verify"]["reachable"] is True
    assert fake.probes[-1] == "/health"


async def test_verify_reports_an_unreachable_provider_and_still_stores_it(
    aiohttp_client: Any, tmp_path: Path, unused_tcp_port: int
) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await put(client, "team-a", provider(f"http://127.0.0.1:{unused_tcp_port}/v1"), verify=True)
    assert resp.status == 201
    verify = (await resp.json())["verify"]
    assert verify["reachable"] is False
    assert verify["status"] is None
    assert "cannot connect" in verify["error"]
    assert (await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).status == 200


async def test_verify_reports_an_error_status(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeUpstream(status=401)
    server = await aiohttp_server(fake.app())
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    resp = await put(client, "team-a", provider(f"http://127.0.0.1:{server.port}/v1"), verify=True)
    assert (await resp.json())["verify"] == {
        "reachable": False,
        "status": 401,
        "error": "probe answered HTTP 401",
        "models": [],
    }


# --- the audit trail -----------------------------------------------------------------


async def test_every_change_is_an_audit_event_without_the_key(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    with capture_logs() as logs:
        await put(client, "team-a", provider("http://127.0.0.1:11434/v1", api_key=TENANT_KEY))
        await put(client, "team-a", provider("http://[::1]:11434/v1", provider_type="local-llamacpp"))
        await client.delete("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)
    changes = [e for e in logs if e["event"] == "tenant_provider_changed"]
    assert [(e["tenant"], e["action"], e["provider_type"], e["base_url_host"]) for e in changes] == [
        ("team-a", "create", "local-ollama", "127.0.0.1"),
        ("team-a", "update", "local-llamacpp", "::1"),
        ("team-a", "delete", "local-llamacpp", "::1"),
    ]
    assert changes[0]["api_key_set"] is True and len(changes[0]["key_id"]) == 16
    requests = [e for e in logs if e["event"] == "request"]
    assert [e["tenant"] for e in requests] == ["team-a"] * 3
    assert TENANT_KEY not in repr(logs)
    assert ADMIN_TOKEN not in repr(logs)


# --- concurrency ---------------------------------------------------------------------


async def test_concurrent_puts_leave_one_consistent_record(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await admin_client(aiohttp_client, tenant_config(tmp_path))
    keys = [f"sk-concurrent-{i:02d}-abcdefgh{i:04d}" for i in range(20)]
    bodies = [provider(f"http://127.0.0.1:{11000 + i}/v{i}", model=f"model-{i}", api_key=keys[i]) for i in range(20)]
    responses = await asyncio.gather(*(put(client, "team-a", b) for b in bodies))
    assert sorted(r.status for r in responses) == [200] * 19 + [201]
    final = await (await client.get("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).json()
    index = int(final["model"].split("-")[1])
    assert final["base_url"] == f"http://127.0.0.1:{11000 + index}/v{index}"
    assert final["api_key_hint"] == "…" + keys[index][-4:]
    listed = await (await client.get("/api/v1/tenants", headers=ADMIN)).json()
    assert len(listed["data"]) == 1
    # The sealed key opens for this tenant and URL, so it is the one PUT together with them.
    store = TenantStore(tmp_path / "tenants.db")
    store.open()
    try:
        record = store.get("team-a")
    finally:
        store.close()
    assert record is not None
    keyring = crypto.Keyring.from_texts(SECRET_KEY, (), lambda n: bytes(n))
    assert tenants.open_api_key(record, keyring) == keys[index]
