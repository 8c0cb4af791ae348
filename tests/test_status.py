"""``/api/v1/llm/status``, ``/readyz`` and ``/v1/models`` reflect the real state."""

from __future__ import annotations

import asyncio
from typing import Any

from airgap_proxy.app import create_app
from tests.conftest import FakeResolver, make_config
from tests.fakes import FakeUpstream

REFERENCE_FIELDS = ("provider_type", "model", "reachable", "airgap_compliant")


async def status_of(client: Any) -> dict[str, Any]:
    resp = await client.get("/api/v1/llm/status")
    assert resp.status == 200
    return dict(await resp.json())


async def test_no_config_is_deterministic_and_compliant(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config()))
    status = await status_of(client)
    assert list(status)[:4] == list(REFERENCE_FIELDS)
    assert status["provider_type"] == "deterministic"
    assert status["reachable"] is True
    assert status["airgap_compliant"] is True
    assert status["airgapped"] is True
    assert status["fallback_active"] is True
    assert status["upstreams"] == []
    assert (await client.get("/readyz")).status == 200


async def test_healthy_local_upstream(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    config = make_config(
        {"health": {"interval_s": 0.1}},
        {
            "LLM_BASE_URL": f"http://127.0.0.1:{server.port}/v1",
            "LLM_MODEL": "llama3.2:3b-instruct-q4_K_M",
            "LLM_PROVIDER_TYPE": "local-ollama",
        },
    )
    client = await aiohttp_client(create_app(config))
    for _ in range(40):
        status = await status_of(client)
        if status["reachable"]:
            break
        await asyncio.sleep(0.05)
    assert {k: status[k] for k in REFERENCE_FIELDS} == {
        "provider_type": "local-ollama",
        "model": "llama3.2:3b-instruct-q4_K_M",
        "reachable": True,
        "airgap_compliant": True,
    }
    assert status["fallback_active"] is False
    [detail] = status["upstreams"]
    assert detail["health"] == "healthy" and detail["verdict"] == "local"
    assert detail["base_url"] == f"http://127.0.0.1:{server.port}/v1"
    assert detail["last_check"].endswith("Z")
    assert "/api/tags" in fake.probes  # Ollama's free probe, never a completion
    assert fake.received == []


async def test_external_upstream_is_not_compliant_and_never_probed(aiohttp_client: Any) -> None:
    resolver = FakeResolver({})
    config = make_config({"health": {"interval_s": 0.05}}, {"LLM_BASE_URL": "https://api.openai.com/v1"})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    await asyncio.sleep(0.2)
    status = await status_of(client)
    assert status["airgap_compliant"] is False
    # The configured provider is refused, so it is not reachable; the fallback answers.
    assert status["provider_type"] == "local-openai-compatible"
    assert status["reachable"] is False
    assert status["fallback_active"] is True
    [detail] = status["upstreams"]
    assert detail["verdict"] == "external"
    assert detail["permitted"] is False
    assert detail["health"] == "unknown"
    assert resolver.calls == []


async def test_a_stopped_local_server_is_unreachable_while_the_fallback_answers(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    # The reference page's check: "reachable: false -> local server not running".
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    config = make_config(
        {"health": {"interval_s": 0.05, "timeout_s": 0.5}},
        {
            "LLM_BASE_URL": f"http://127.0.0.1:{server.port}/v1",
            "LLM_MODEL": "llama3.2:3b",
            "LLM_PROVIDER_TYPE": "local-ollama",
        },
    )
    client = await aiohttp_client(create_app(config))
    for _ in range(40):
        if (await status_of(client))["reachable"]:
            break
        await asyncio.sleep(0.05)
    await server.close()
    for _ in range(100):
        status = await status_of(client)
        if status["fallback_active"]:
            break
        await asyncio.sleep(0.05)
    assert {k: status[k] for k in REFERENCE_FIELDS} == {
        "provider_type": "local-ollama",
        "model": "llama3.2:3b",
        "reachable": False,
        "airgap_compliant": True,
    }
    assert status["fallback_active"] is True
    assert status["upstream"] == "default"
    [detail] = status["upstreams"]
    assert detail["health"] == "unhealthy" and detail["last_error"]
    # And the fallback really answers meanwhile.
    resp = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200 and resp.headers["X-Airgap-Upstream"] == "deterministic"


async def test_name_upstream_is_classified_for_the_report(aiohttp_client: Any) -> None:
    resolver = FakeResolver({"ollama": ["10.0.0.7"], "evil": ["127.0.0.2"]})
    config = make_config(
        {
            "policy": {"allow_networks": ["10.0.0.0/8"]},
            "upstreams": [
                {"name": "o", "base_url": "http://ollama:1/v1"},
                {"name": "e", "base_url": "http://evil:1/v1"},
            ],
            "health": {"interval_s": 60, "timeout_s": 0.2},
        },
    )
    client = await aiohttp_client(create_app(config, resolver=resolver))
    status = await status_of(client)
    verdicts = {u["name"]: u["verdict"] for u in status["upstreams"]}
    assert verdicts == {"o": "local", "e": "external"}
    assert status["airgap_compliant"] is False


async def test_models_lists_default_configured_discovered_and_aliases(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    config = make_config(
        {
            "default_model": "llama3",
            "upstreams": [
                {
                    "name": "u",
                    "base_url": f"http://127.0.0.1:{server.port}/v1",
                    "models": ["llama3", "qwen*"],
                    "aliases": {"gpt-4o-mini": "llama3"},
                }
            ],
            "health": {"interval_s": 0.05},
        }
    )
    client = await aiohttp_client(create_app(config))
    for _ in range(40):
        ids = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
        if "fake-model" in ids:
            break
        await asyncio.sleep(0.05)
    assert ids == ["llama3", "fake-model", "gpt-4o-mini"]
