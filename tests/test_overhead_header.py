"""``X-Airgap-Overhead-Ms``: the time spent inside the proxy, on every /v1 response, waits excluded."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from tests.conftest import make_config
from tests.fakes import FakeUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HEADER = "X-Airgap-Overhead-Ms"
UPSTREAM_DELAY_S = 0.4


def overhead_ms(headers: Any) -> float:
    value = headers[HEADER]
    number = float(value)
    assert number >= 0 and value == f"{number:.3f}"
    return number


async def test_a_proxied_answer_carries_the_overhead_without_the_upstream_wait(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    fake.delay_s = UPSTREAM_DELAY_S
    client = await aiohttp_client(create_app(make_config(None, {"LLM_BASE_URL": base})))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    # The upstream took 400 ms; the proxy's own share is what is left, a small part of it.
    assert overhead_ms(resp.headers) < UPSTREAM_DELAY_S * 1000 / 2


async def test_a_proxied_stream_carries_the_overhead_in_its_head(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    fake.delay_s = UPSTREAM_DELAY_S
    client = await aiohttp_client(create_app(make_config(None, {"LLM_BASE_URL": base})))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert overhead_ms(resp.headers) < UPSTREAM_DELAY_S * 1000 / 2
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_fallback_answers_and_errors_carry_it_too(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config(None, {})))
    answered = await client.post("/v1/chat/completions", json=CHAT)
    streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    refused = await client.post("/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert (answered.status, streamed.status, refused.status) == (200, 200, 400)
    for resp in (answered, streamed, refused):
        overhead_ms(resp.headers)


async def test_the_audit_event_records_the_same_value(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _, base = upstream
    client = await aiohttp_client(create_app(make_config(None, {"LLM_BASE_URL": base})))
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        await resp.read()
    events = [e for e in logs if e["event"] == "request"]
    assert [e["overhead_ms"] for e in events] == [overhead_ms(resp.headers)]


async def test_probes_and_status_endpoints_are_not_labelled(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config(None, {})))
    resp = await client.get("/healthz")
    assert resp.status == 200 and HEADER not in resp.headers
