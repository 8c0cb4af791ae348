"""Tenant routing: each tenant reaches only its own provider with its own key."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import openai
import pytest
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from airgap_proxy.config import Config
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, ADMIN_TOKEN, assert_envelope, provider, put, tenant_config

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
DEFAULT_KEY = "sk-operator-default-0000"
KEY_A = "sk-tenant-a-1111aaaa"
KEY_B = "sk-tenant-b-2222bbbb"
CLIENT_A = "client-key-for-team-a-3333"
CLIENT_B = "client-key-for-team-b-4444"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


CLIENTS = {
    "clients": [
        {"name": "agents-a", "key_hash": sha(CLIENT_A), "tenant": "team-a"},
        {"name": "agents-b", "key_hash": f"sha256:{sha(CLIENT_B).upper()}", "tenant": "team-b"},
    ]
}


class World:
    """Three fake upstreams on loopback: the operator's default, tenant A's and tenant B's."""

    def __init__(self) -> None:
        self.default = FakeUpstream()
        self.a = FakeUpstream()
        self.b = FakeUpstream()
        self.urls: dict[str, str] = {}

    async def start(self, aiohttp_server: Any) -> None:
        for name in ("default", "a", "b"):
            server = await aiohttp_server(getattr(self, name).app())
            self.urls[name] = f"http://127.0.0.1:{server.port}/v1"

    def config(self, tmp_path: Path, raw: dict[str, Any] | None = None, **env: str) -> Config:
        env = {"LLM_BASE_URL": self.urls["default"], "LLM_API_KEY": DEFAULT_KEY, "LLM_MODEL": "operator-model", **env}
        return tenant_config(tmp_path, {"health": {"interval_s": 60}, **(raw or {})}, env)

    def keys_seen(self, fake: FakeUpstream) -> set[str]:
        return {r.headers.get("Authorization", "") for r in fake.received}


@pytest.fixture
async def world(aiohttp_server: Any) -> World:
    w = World()
    await w.start(aiohttp_server)
    return w


async def with_tenants(aiohttp_client: Any, world: World, config: Config) -> Any:
    client = await aiohttp_client(create_app(config))
    assert (await put(client, "team-a", provider(world.urls["a"], model="model-a", api_key=KEY_A))).status == 201
    assert (await put(client, "team-b", provider(world.urls["b"], model="model-b", api_key=KEY_B))).status == 201
    return client


async def test_each_tenant_reaches_only_its_own_provider_with_its_own_key(
    aiohttp_client: Any, world: World, tmp_path: Path
) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    with capture_logs() as logs:
        for tenant in ("team-a", "team-b", "team-a"):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": tenant})
            assert resp.status == 200
            assert resp.headers["X-Airgap-Upstream"] == f"tenant:{tenant}"
        plain = await client.post("/v1/chat/completions", json=CHAT)
        assert plain.headers["X-Airgap-Upstream"] == "default"
    assert world.keys_seen(world.a) == {f"Bearer {KEY_A}"}
    assert world.keys_seen(world.b) == {f"Bearer {KEY_B}"}
    assert world.keys_seen(world.default) == {f"Bearer {DEFAULT_KEY}"}
    assert [len(world.a.received), len(world.b.received), len(world.default.received)] == [2, 1, 1]
    # The tenant's model replaces "default"; the operator's default model is not used.
    assert {r.json()["model"] for r in world.a.received} == {"model-a"}
    assert world.default.received[0].json()["model"] == "operator-model"
    # Which tenant a request is for stays between the client and the proxy.
    assert all("X-Tenant-ID" not in r.headers for r in world.a.received + world.b.received)
    audits = [e for e in logs if e["event"] == "request"]
    assert [e["tenant"] for e in audits] == ["team-a", "team-b", "team-a", None]
    assert [e["upstream"] for e in audits] == ["tenant:team-a", "tenant:team-b", "tenant:team-a", "default"]
    assert KEY_A not in repr(logs) and KEY_B not in repr(logs)


async def test_missing_model_and_explicit_models(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    headers = {"X-Tenant-ID": "team-a"}
    await client.post("/v1/chat/completions", json={"messages": CHAT["messages"]}, headers=headers)
    await client.post("/v1/chat/completions", json={**CHAT, "model": "llama3-explicit"}, headers=headers)
    await client.post("/v1/embeddings", json={"input": "x"}, headers=headers)
    assert [r.json()["model"] for r in world.a.received] == ["model-a", "llama3-explicit", "model-a"]
    models = await client.get("/v1/models", headers=headers)
    assert models.status == 200
    assert models.headers["X-Airgap-Upstream"] == "tenant:team-a"
    assert world.a.probes == ["/v1/models"]  # the tenant's own model list (the fake files it under probes)


async def test_routing_hints_are_stripped_for_tenants_too(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    body = {**CHAT, "api_base": world.urls["b"], "api_key": KEY_B}
    resp = await client.post("/v1/chat/completions", json=body, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 200
    sent = world.a.received[0].json()
    assert "api_base" not in sent and "api_key" not in sent
    assert world.b.received == []


async def test_a_tenant_pass_through_body_is_not_given_the_tenants_model(
    aiohttp_client: Any, world: World, tmp_path: Path
) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    body = b'{"query": "q", "documents": ["a"]}'
    headers = {"X-Tenant-ID": "team-a", "Content-Type": "application/json"}
    assert (await client.post("/v1/rerank", data=body, headers=headers)).status == 200
    assert world.a.received[0].body == body


async def test_unknown_tenant_uses_the_default_upstreams(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-zzz"})
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "default"
    assert world.keys_seen(world.default) == {f"Bearer {DEFAULT_KEY}"}
    assert world.a.received == [] and world.b.received == []


async def test_deleted_tenant_falls_back_to_the_default_upstreams(
    aiohttp_client: Any, world: World, tmp_path: Path
) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    assert (await client.delete("/api/v1/tenants/team-a/llm-provider", headers=ADMIN)).status == 204
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.headers["X-Airgap-Upstream"] == "default"
    assert world.a.received == []


async def test_invalid_tenant_header_is_400(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "../team-a"})
    assert resp.status == 400
    assert_envelope(await resp.json(), "invalid_request_error")
    assert world.a.received == [] and world.default.received == []


async def test_unreachable_tenant_provider_is_502_and_never_the_operators_upstream(
    aiohttp_client: Any, world: World, tmp_path: Path, unused_tcp_port: int
) -> None:
    client = await aiohttp_client(create_app(world.config(tmp_path)))
    dead = f"http://127.0.0.1:{unused_tcp_port}/v1"
    assert (await put(client, "team-a", provider(dead, api_key=KEY_A))).status == 201
    for body in (CHAT, {**CHAT, "stream": True}):
        resp = await client.post("/v1/chat/completions", json=body, headers={"X-Tenant-ID": "team-a"})
        assert resp.status == 502
        assert_envelope(await resp.json(), "upstream_error")
    assert world.default.received == []
    assert resp.headers.get("X-Airgap-Upstream") != "deterministic"


async def test_tenant_upstream_errors_are_passed_through(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    world.a.status = 503
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 503
    assert world.default.received == []


async def test_forced_deterministic_mode_still_works_for_tenants(
    aiohttp_client: Any, world: World, tmp_path: Path
) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    resp = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a", "X-Airgap-Mode": "deterministic"}
    )
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "deterministic"
    assert world.a.received == []


async def test_streaming_through_a_tenant_provider(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"X-Tenant-ID": "team-b"})
    assert resp.status == 200
    text = await resp.text()
    assert text.count("data: ") == 4 and text.endswith("data: [DONE]\n\n")
    assert world.keys_seen(world.b) == {f"Bearer {KEY_B}"}


# --- clients: the key decides the tenant ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({}, 401, "unauthorized", id="no client key"),
        pytest.param({"Authorization": "Bearer not-a-client-key"}, 401, "unauthorized", id="unknown client key"),
        pytest.param({"Authorization": f"Basic {CLIENT_A}"}, 401, "unauthorized", id="not a bearer key"),
        pytest.param({"X-Tenant-ID": "team-a"}, 401, "unauthorized", id="tenant header without a key"),
        pytest.param(
            {"Authorization": f"Bearer {CLIENT_A}", "X-Tenant-ID": "team-b"}, 403, "forbidden", id="other tenant"
        ),
        pytest.param(
            {"Authorization": f"Bearer {CLIENT_B}", "X-Tenant-ID": "team-a"}, 403, "forbidden", id="other tenant (b)"
        ),
        pytest.param(
            {"Authorization": f"Bearer {CLIENT_A}", "X-Tenant-ID": "team-zzz"}, 403, "forbidden", id="unknown tenant"
        ),
        pytest.param({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 401, "unauthorized", id="admin token is no client"),
    ],
)
async def test_client_authentication_failures(
    aiohttp_client: Any, world: World, tmp_path: Path, headers: dict[str, str], status: int, code: str
) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path, CLIENTS))
    with capture_logs() as logs:
        for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/v1/embeddings", "POST")):
            resp = await client.request(method, path, json=CHAT, headers=headers)
            assert resp.status == status, path
            assert_envelope(await resp.json(), code)
            if status == 401:
                assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert world.a.received == [] and world.b.received == [] and world.default.received == []
    assert CLIENT_A not in repr(logs) and CLIENT_B not in repr(logs)


async def test_client_key_decides_the_tenant(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path, CLIENTS))
    for headers in (
        {"Authorization": f"Bearer {CLIENT_A}"},
        {"Authorization": f"Bearer {CLIENT_A}", "X-Tenant-ID": "team-a"},
    ):
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 200
        assert resp.headers["X-Airgap-Upstream"] == "tenant:team-a"
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"bearer {CLIENT_B}"})
    assert resp.headers["X-Airgap-Upstream"] == "tenant:team-b"
    assert world.keys_seen(world.a) == {f"Bearer {KEY_A}"}  # the client's key is never forwarded
    assert world.keys_seen(world.b) == {f"Bearer {KEY_B}"}
    assert world.default.received == []


async def test_client_of_a_tenant_without_provider_uses_the_default_upstreams(
    aiohttp_client: Any, world: World, tmp_path: Path
) -> None:
    raw = {"clients": [{"name": "agents-c", "key_hash": sha("client-c-key"), "tenant": "team-c"}]}
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path, raw))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer client-c-key"})
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "default"
    assert world.a.received == [] and world.b.received == []


# --- air-gapped mode turned on after the fact ----------------------------------------


async def test_external_provider_stored_in_report_only_is_refused_once_airgapped(
    aiohttp_client: Any, world: World, tmp_path: Path, recorder: Any
) -> None:
    outside = await recorder("127.0.0.2")
    only_one = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}}
    external = f"http://127.0.0.2:{outside.port}/v1"
    report_only = await aiohttp_client(create_app(world.config(tmp_path, {**only_one, "airgapped": False})))
    resp = await put(report_only, "team-a", provider(external, api_key=KEY_A))
    assert resp.status == 201
    assert (await resp.json())["verdict"] == "external"
    await report_only.close()

    client = await aiohttp_client(create_app(world.config(tmp_path, only_one)))
    for body in (CHAT, {**CHAT, "stream": True}):
        resp = await client.post("/v1/chat/completions", json=body, headers={"X-Tenant-ID": "team-a"})
        assert resp.status == 422
        body_json = await resp.json()
        assert_envelope(body_json, "airgap_violation")
        assert "127.0.0.2" in body_json["error"]["message"]
    status = await (await client.get("/api/v1/llm/status?tenant=team-a")).json()
    assert status["airgap_compliant"] is False
    assert status["permitted"] is False
    assert status["reachable"] is False
    assert status["verdict"] == "external"
    assert outside.connections == 0
    assert world.default.received == []


async def test_rule_changes_apply_to_stored_providers_at_request_time(
    aiohttp_client: Any, world: World, tmp_path: Path
) -> None:
    first = await aiohttp_client(create_app(world.config(tmp_path)))
    assert (await put(first, "team-a", provider(world.urls["a"], api_key=KEY_A))).status == 201
    await first.close()
    stricter = {"policy": {"allow_networks": ["10.0.0.0/8"]}}
    client = await aiohttp_client(create_app(world.config(tmp_path, stricter)))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-a"})
    assert resp.status == 422
    assert world.a.received == [] and world.default.received == []


# --- status: the tenant's view ---------------------------------------------------------


async def test_status_tenant_view(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    by_query = await (await client.get("/api/v1/llm/status?tenant=team-a")).json()
    assert {k: by_query[k] for k in ("provider_type", "model", "reachable", "airgap_compliant", "tenant")} == {
        "provider_type": "local-ollama",
        "model": "model-a",
        "reachable": True,
        "airgap_compliant": True,
        "tenant": "team-a",
    }
    assert by_query["upstream"] == "tenant:team-a"
    assert by_query["last_check"].endswith("Z")
    assert world.a.probes == ["/api/tags"]
    assert world.keys_seen(world.a) == set()  # a probe, never a completion
    by_header = await (await client.get("/api/v1/llm/status", headers={"X-Tenant-ID": "team-a"})).json()
    assert by_header["tenant"] == "team-a"
    assert world.a.probes == ["/api/tags"]  # the probe is reused for health.interval_s
    unknown = await (await client.get("/api/v1/llm/status?tenant=team-zzz")).json()
    assert unknown["tenant"] == "team-zzz"
    assert unknown["upstream"] == "default"
    plain = await (await client.get("/api/v1/llm/status")).json()
    assert "tenant" not in plain
    assert KEY_A not in str(by_query)


async def test_status_tenant_view_reports_an_unreachable_provider(
    aiohttp_client: Any, world: World, tmp_path: Path, unused_tcp_port: int
) -> None:
    client = await aiohttp_client(create_app(world.config(tmp_path)))
    await put(client, "team-a", provider(f"http://127.0.0.1:{unused_tcp_port}/v1"))
    status = await (await client.get("/api/v1/llm/status?tenant=team-a")).json()
    assert status["reachable"] is False
    assert status["airgap_compliant"] is True
    assert "cannot connect" in status["last_error"]


async def test_status_query_and_header_must_agree(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path))
    resp = await client.get("/api/v1/llm/status?tenant=team-a", headers={"X-Tenant-ID": "team-b"})
    assert resp.status == 400
    bad = await client.get("/api/v1/llm/status?tenant=-bad")
    assert bad.status == 400
    assert_envelope(await bad.json(), "invalid_request_error", "tenant")


async def test_status_with_clients(aiohttp_client: Any, world: World, tmp_path: Path) -> None:
    client = await with_tenants(aiohttp_client, world, world.config(tmp_path, CLIENTS))
    anonymous = await client.get("/api/v1/llm/status")
    assert anonymous.status == 200 and "tenant" not in await anonymous.json()
    need_key = await client.get("/api/v1/llm/status?tenant=team-a")
    assert need_key.status == 401
    other = await client.get("/api/v1/llm/status?tenant=team-a", headers={"Authorization": f"Bearer {CLIENT_B}"})
    assert other.status == 403
    own = await client.get("/api/v1/llm/status", headers={"Authorization": f"Bearer {CLIENT_B}"})
    assert (await own.json())["tenant"] == "team-b"
    operator = await client.get("/api/v1/llm/status?tenant=team-a", headers=ADMIN)
    assert (await operator.json())["tenant"] == "team-a"


# --- the official SDK ----------------------------------------------------------------


async def test_openai_sdk_with_tenant_headers(
    aiohttp_client: Any, aiohttp_server: Any, world: World, tmp_path: Path
) -> None:
    server = await aiohttp_server(create_app(world.config(tmp_path)))
    admin = await aiohttp_client(server)
    assert (await put(admin, "team-a", provider(world.urls["a"], model="model-a", api_key=KEY_A))).status == 201
    assert (await put(admin, "team-b", provider(world.urls["b"], model="model-b", api_key=KEY_B))).status == 201
    base = f"http://127.0.0.1:{server.port}/v1"
    sdk_a = openai.AsyncOpenAI(base_url=base, api_key="agent", max_retries=0, default_headers={"X-Tenant-ID": "team-a"})
    sdk_b = openai.AsyncOpenAI(base_url=base, api_key="agent", max_retries=0, default_headers={"X-Tenant-ID": "team-b"})
    try:
        chat = await sdk_a.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == "Hello from upstream"
        assert chat.model == "model-a"
        stream = await sdk_b.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "tok0 tok1 tok2 "
        results = await asyncio.gather(
            *(
                sdk.embeddings.create(model="default", input="x", encoding_format="float")
                for sdk in (sdk_a, sdk_b, sdk_a, sdk_b)
            )
        )
        assert [r.model for r in results] == ["model-a", "model-b", "model-a", "model-b"]
    finally:
        await sdk_a.close()
        await sdk_b.close()
    assert world.keys_seen(world.a) == {f"Bearer {KEY_A}"}
    assert world.keys_seen(world.b) == {f"Bearer {KEY_B}"}
    assert world.default.received == []


async def test_openai_sdk_with_a_client_key(
    aiohttp_client: Any, aiohttp_server: Any, world: World, tmp_path: Path
) -> None:
    server = await aiohttp_server(create_app(world.config(tmp_path, CLIENTS)))
    admin = await aiohttp_client(server)
    assert (await put(admin, "team-a", provider(world.urls["a"], model="model-a", api_key=KEY_A))).status == 201
    base = f"http://127.0.0.1:{server.port}/v1"
    good = openai.AsyncOpenAI(base_url=base, api_key=CLIENT_A, max_retries=0)
    wrong = openai.AsyncOpenAI(base_url=base, api_key="nope", max_retries=0)
    crossing = openai.AsyncOpenAI(
        base_url=base, api_key=CLIENT_A, max_retries=0, default_headers={"X-Tenant-ID": "team-b"}
    )
    try:
        chat = await good.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
        assert chat.model == "model-a"
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.PermissionDeniedError):
            await crossing.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    finally:
        for sdk in (good, wrong, crossing):
            await sdk.close()
    assert world.keys_seen(world.a) == {f"Bearer {KEY_A}"}
    assert world.b.received == [] and world.default.received == []
