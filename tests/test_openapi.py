"""docs/openapi.yaml stays true: a valid OpenAPI 3.1 document that real responses conform to.

Every documented (path, method, status) is produced by a real request here and
its body validated against the documented schema; every ``/api/`` route of the
app is documented, and nothing else is.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from airgap_proxy.app import create_app
from airgap_proxy.config import parse_config
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, provider, put, tenant_config
from tests.test_serve import free_port

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SPEC_URI = "urn:airgap-proxy:openapi"
CLIENT_KEY = "client-key-openapi-0123"


@functools.cache
def spec() -> dict[str, Any]:
    loaded = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        parts = node["$ref"].removeprefix("#/").split("/")
        target: Any = spec()
        for part in parts:
            target = target[part]
        node = target
    return node


def schema_validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    registry: Registry = Registry().with_resource(SPEC_URI, Resource.from_contents(spec(), DRAFT202012))
    rooted = json.loads(json.dumps(schema).replace('"#/components/', f'"{SPEC_URI}#/components/'))
    return jsonschema.Draft202012Validator(rooted, registry=registry)


class Conformance:
    """Checks responses against the spec and remembers which ones were seen."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()

    async def check(self, resp: Any, path: str, method: str) -> Any:
        status = str(resp.status)
        operation = spec()["paths"][path][method.lower()]
        assert status in operation["responses"], f"{method} {path}: undocumented status {status}"
        documented = resolve(operation["responses"][status])
        raw = await resp.read()
        if "content" not in documented:
            assert raw == b"", f"{method} {path} {status}: documented without a body"
        else:
            assert resp.content_type == "application/json"
            body = json.loads(raw)
            schema = documented["content"]["application/json"]["schema"]
            errors = sorted(schema_validator(schema).iter_errors(body), key=str)
            assert not errors, f"{method} {path} {status}: {[e.message for e in errors]}\n{body}"
        for header in documented.get("headers", {}):
            assert header in resp.headers, f"{method} {path} {status}: missing header {header}"
        self.seen.add((path, method.lower(), status))
        return json.loads(raw) if raw else None


def test_the_document_is_valid_openapi_3_1() -> None:
    assert spec()["openapi"].startswith("3.1")
    validate_spec(spec())


def test_every_api_route_is_documented_and_nothing_else() -> None:
    """The proxy's own API (``/api/v1/...``); Ollama's ``/api/...`` is Ollama's, described in operations.md."""
    app = create_app(parse_config({}, {}, lambda path: ""))
    routes = {r.canonical for r in app.router.resources() if r.canonical.startswith("/api/v1/")}
    assert routes == set(spec()["paths"])
    methods = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/api/v1/") and r.method != "HEAD"
    }
    documented = {(p, m) for p, ops in spec()["paths"].items() for m in ops if m != "parameters"}
    assert methods == documented


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        (provider(), True),
        (provider(api_key="sk-x"), True),
        (provider(api_key=None), True),
        (provider(provider_type="openai"), False),
        (provider(api_key="has space"), False),
        (provider(extra=1), False),
        ({"provider_type": "local-ollama", "model": "m"}, False),
    ],
)
def test_request_schema_agrees_with_the_server(body: dict[str, Any], valid: bool) -> None:
    schema = spec()["components"]["schemas"]["ProviderSettings"]
    assert schema_validator(schema).is_valid(body) is valid


async def test_real_responses_conform(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    url = f"http://127.0.0.1:{server.port}/v1"
    check = Conformance()
    status_path, tenants_path, provider_path = (
        "/api/v1/llm/status",
        "/api/v1/tenants",
        "/api/v1/tenants/{tenant}/llm-provider",
    )

    def at(tenant: str) -> str:
        return provider_path.replace("{tenant}", tenant)

    # The admin API turned off.
    off = await aiohttp_client(create_app(tenant_config(tmp_path / "off", admin=False)))
    await check.check(await off.get(tenants_path, headers=ADMIN), tenants_path, "GET")
    await check.check(await put(off, "team-a", provider()), provider_path, "PUT")
    await check.check(await off.get(at("team-a"), headers=ADMIN), provider_path, "GET")
    await check.check(await off.delete(at("team-a"), headers=ADMIN), provider_path, "DELETE")

    (tmp_path / "on").mkdir()
    raw = {
        "health": {"interval_s": 60},
        "clients": [{"name": "c", "key_hash": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(), "tenant": "team-a"}],
    }
    client = await aiohttp_client(create_app(tenant_config(tmp_path / "on", raw, {"LLM_BASE_URL": url})))
    wrong = {"Authorization": "Bearer wrong-token-0123456789"}
    for method, path, target in (
        ("GET", tenants_path, tenants_path),
        ("PUT", provider_path, at("team-a")),
        ("GET", provider_path, at("team-a")),
        ("DELETE", provider_path, at("team-a")),
    ):
        await check.check(await client.request(method, target, json=provider()), path, method)
        await check.check(await client.request(method, target, json=provider(), headers=wrong), path, method)
    for method in ("GET", "DELETE"):
        await check.check(await client.request(method, at("team-a"), headers=ADMIN), provider_path, method)
        await check.check(await client.request(method, at("-bad"), headers=ADMIN), provider_path, method)

    await check.check(await put(client, "team-a", provider(url, api_key="sk-openapi-key-0123")), provider_path, "PUT")
    await check.check(await put(client, "team-a", provider(url), verify=True), provider_path, "PUT")
    await check.check(await put(client, "team-b", provider(url, model="")), provider_path, "PUT")
    await check.check(await put(client, "team-b", provider("https://api.openai.com/v1")), provider_path, "PUT")
    await check.check(await put(client, "team-b", b"x" * 70000), provider_path, "PUT")
    await check.check(await client.get(at("team-a"), headers=ADMIN), provider_path, "GET")
    await check.check(await client.get(tenants_path, headers=ADMIN), tenants_path, "GET")

    await check.check(await client.get(status_path), status_path, "GET")
    mine = {"Authorization": f"Bearer {CLIENT_KEY}"}
    tenant_view = await check.check(await client.get(status_path, headers=mine), status_path, "GET")
    assert tenant_view["tenant"] == "team-a" and tenant_view["reachable"] is True
    unknown = await check.check(await client.get(f"{status_path}?tenant=team-z", headers=ADMIN), status_path, "GET")
    assert unknown["tenant"] == "team-z" and "upstreams" in unknown
    await check.check(await client.get(f"{status_path}?tenant=team-a"), status_path, "GET")
    await check.check(await client.get(f"{status_path}?tenant=team-b", headers=mine), status_path, "GET")
    await check.check(await client.get(f"{status_path}?tenant=-bad", headers=ADMIN), status_path, "GET")
    await check.check(await client.delete(at("team-a"), headers=ADMIN), provider_path, "DELETE")

    reload_path = "/api/v1/admin/reload"
    await check.check(await off.post(reload_path, headers=ADMIN), reload_path, "POST")
    await check.check(await client.post(reload_path), reload_path, "POST")
    await check.check(await client.post(reload_path, headers=wrong), reload_path, "POST")
    # Started without a loader: the reload is refused, 400 invalid_config.
    await check.check(await client.post(reload_path, headers=ADMIN), reload_path, "POST")
    (tmp_path / "reload").mkdir()
    reloadable_config = tenant_config(tmp_path / "reload")
    reloadable = await aiohttp_client(create_app(reloadable_config, loader=lambda: reloadable_config))
    await check.check(await reloadable.post(reload_path, headers=ADMIN), reload_path, "POST")

    # A PostgreSQL store that cannot be reached (nothing listens there): 503 tenant_store_unavailable.
    down_url = f"postgresql://airgap:pw-unused@127.0.0.1:{free_port()}/tenants"
    down_config = tenant_config(tmp_path, {"tenants": {"store": down_url, "timeout_s": 0.5}})
    down = await aiohttp_client(create_app(down_config))
    await check.check(await put(down, "team-a", provider(url)), provider_path, "PUT")
    for method in ("GET", "DELETE"):
        await check.check(await down.request(method, at("team-a"), headers=ADMIN), provider_path, method)
    await check.check(await down.get(tenants_path, headers=ADMIN), tenants_path, "GET")
    await check.check(await down.get(f"{status_path}?tenant=team-a"), status_path, "GET")
    await check.check(await down.get(status_path), status_path, "GET")

    documented = {
        (path, method, status)
        for path, operations in spec()["paths"].items()
        for method, operation in operations.items()
        if method != "parameters"
        for status in operation["responses"]
    }
    assert documented - check.seen == set(), "documented but never produced here"
