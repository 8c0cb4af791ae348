"""``GET /metrics``: what the proxy counts, with bounded labels, in a registry per application."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from airgap_proxy.app import create_app
from tests.conftest import FakeResolver, make_config
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, provider, put, tenant_config

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Any) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_forwarded_requests_latency_tokens_and_upstream_gauges(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    _fake, base = upstream
    client = await aiohttp_client(create_app(make_config({"health": {"interval_s": 60}}, {"LLM_BASE_URL": base})))
    for body in (CHAT, CHAT, {**CHAT, "stream": True}):
        assert (await client.post("/v1/chat/completions", json=body)).status == 200
    await client.get("/healthz")
    samples = await scrape(client)
    route = "/v1/chat/completions"
    assert (
        value(
            samples,
            "airgap_proxy_requests_total",
            route=route,
            upstream="default",
            status="200",
            decision="forward",
            api="openai",
        )
        == 3
    )
    assert value(samples, "airgap_proxy_request_duration_seconds_count", route=route) == 3
    assert value(samples, "airgap_proxy_upstream_first_byte_seconds_count", upstream="default") == 3
    assert value(samples, "airgap_proxy_upstream_duration_seconds_count", upstream="default") == 3
    # The fake's non-stream answers carry usage 1 + 2; its stream carries none.
    assert value(samples, "airgap_proxy_tokens_total", upstream="default", kind="prompt") == 2
    assert value(samples, "airgap_proxy_tokens_total", upstream="default", kind="completion") == 4
    assert value(samples, "airgap_proxy_upstream_health", upstream="default") == 1
    assert value(samples, "airgap_proxy_upstream_permitted", upstream="default") == 1
    assert value(samples, "airgap_proxy_upstream_in_flight", upstream="default") == 0
    assert value(samples, "airgap_proxy_active_streams") == 0
    assert value(samples, "airgap_proxy_in_flight_requests") == 0
    assert not any(dict(labels).get("route") == "/healthz" for _name, labels in samples)


async def test_violations_are_labelled_by_rule_including_connect_time_refusals(aiohttp_client: Any) -> None:
    raw = {
        "upstreams": [
            {"name": "hosted", "base_url": "https://api.openai.com/v1", "models": ["gpt*"]},
            {"name": "rebinding", "base_url": "http://llm.svc.cluster.local/v1", "models": ["m*"]},
        ],
        "health": {"interval_s": 60},
    }
    resolver = FakeResolver({"llm.svc.cluster.local": ["8.8.8.8"]})
    client = await aiohttp_client(create_app(make_config(raw), resolver=resolver))
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"})).status == 422
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 422
    samples = await scrape(client)
    assert value(samples, "airgap_proxy_airgap_violations_total", rule="deny_host", action="block") == 1
    assert value(samples, "airgap_proxy_airgap_violations_total", rule="not_allowed_network", action="block") == 1
    assert value(samples, "airgap_proxy_errors_total", code="airgap_violation") == 2
    assert value(samples, "airgap_proxy_upstream_permitted", upstream="hosted") == 0
    assert value(samples, "airgap_proxy_upstream_health", upstream="rebinding") == -1


async def test_report_only_counts_would_block(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    raw = {"airgapped": False, "policy": {"allow_networks": ["10.0.0.0/8"]}, "health": {"interval_s": 60}}
    client = await aiohttp_client(create_app(make_config(raw, {"LLM_BASE_URL": base})))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    samples = await scrape(client)
    assert value(samples, "airgap_proxy_airgap_violations_total", rule="not_allowed_network", action="would_block") == 1


async def test_fallback_responses_by_kind(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config({})))
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await client.post("/v1/completions", json={"model": "m", "prompt": "p"})
    await client.post("/v1/completions", json={"model": "m", "prompt": "p", "stream": True})
    await client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    await client.get("/v1/models", headers={"X-Airgap-Mode": "deterministic"})
    await client.get("/v1/models")  # the proxy's own model list: not a fallback answer
    samples = await scrape(client)
    for kind in ("chat", "chat_stream", "completion", "completion_stream", "embeddings", "models"):
        assert value(samples, "airgap_proxy_fallback_responses_total", kind=kind) == 1, kind
    assert (
        value(
            samples,
            "airgap_proxy_requests_total",
            route="/v1/models",
            upstream="none",
            status="200",
            decision="none",
            api="openai",
        )
        == 1
    )


async def test_labels_stay_bounded(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    url = f"http://127.0.0.1:{server.port}/v1"
    client = await aiohttp_client(
        create_app(tenant_config(tmp_path, {"health": {"interval_s": 60}}, {"LLM_BASE_URL": url}))
    )
    assert (await put(client, "team-secret-name", provider(url))).status == 201
    for index in range(5):
        await client.get(f"/v1/files/file-{index}")
        await client.get(f"/nowhere/{index}")
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": "team-secret-name"})
    assert resp.status == 200
    await client.get("/api/v1/tenants/team-secret-name/llm-provider", headers=ADMIN)
    text = await (await client.get("/metrics")).text()
    assert "team-secret-name" not in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert routes == {
        "/v1/other",
        "other",
        "/v1/chat/completions",
        "/api/v1/tenants/{tenant}/llm-provider",
    }
    samples = await scrape(client)
    assert (
        value(
            samples,
            "airgap_proxy_requests_total",
            route="/v1/chat/completions",
            upstream="tenant",
            status="200",
            decision="forward",
            api="openai",
        )
        == 1
    )


async def test_each_application_has_its_own_registry(aiohttp_client: Any) -> None:
    first = await aiohttp_client(create_app(make_config({})))
    second = await aiohttp_client(create_app(make_config({})))
    await first.post("/v1/chat/completions", json=CHAT)
    assert value(await scrape(first), "airgap_proxy_fallback_responses_total", kind="chat") == 1
    assert value(await scrape(second), "airgap_proxy_fallback_responses_total", kind="chat") == 0


async def test_every_exposed_metric_is_documented(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    client = await aiohttp_client(create_app(make_config({"limits": {"max_in_flight": 1}}, {"LLM_BASE_URL": base})))
    await client.post("/v1/chat/completions", json=CHAT)
    text = await (await client.get("/metrics")).text()
    doc = DOCS.read_text(encoding="utf-8")
    names = set(re.findall(r"^# TYPE (airgap_proxy_\w+) (\w+)", text, flags=re.MULTILINE))
    assert not [n for n, _kind in names if n.endswith("_created")]
    assert len(names) >= 14
    for name, kind in names:
        shown = name if name.endswith("_total") or kind != "counter" else name + "_total"
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{shown}` |")), None)
        assert row is not None, f"{shown} is not documented in docs/metrics.md"
        assert f"| {kind} |" in row, f"{shown}: documented with another type"
