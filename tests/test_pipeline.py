"""The shared pipeline end to end on the OpenAI surface: the headers and audit fields every surface gets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from tests.conftest import make_config
from tests.fakes import FakeUpstream

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


def upstream_config(base: str, **extra: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "local", "base_url": base, **extra}]}


async def test_a_glob_alias_maps_a_hosted_name_and_says_which_model_was_sent(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    raw = upstream_config(base, aliases={"claude-*": "qwen2.5-coder:7b", "gpt-4o": "llama3.1:8b"})
    client = await aiohttp_client(create_app(make_config(raw)))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "claude-sonnet-4-5-20250929"})
    assert resp.status == 200
    assert resp.headers["X-Airgap-Model"] == "qwen2.5-coder:7b"
    assert json.loads(fake.received[-1].body)["model"] == "qwen2.5-coder:7b"
    # An exact alias wins over a glob, and an unaliased model is sent as asked, without the header.
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"})
    assert resp.headers["X-Airgap-Model"] == "llama3.1:8b"
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and "X-Airgap-Model" not in resp.headers
    assert json.loads(fake.received[-1].body)["model"] == "m1"


async def test_a_streamed_answer_under_an_alias_carries_the_model_header(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    _fake, base = upstream
    client = await aiohttp_client(create_app(make_config(upstream_config(base, aliases={"gpt-5*": "llama3"}))))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-5-codex", "stream": True})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert resp.headers["X-Airgap-Model"] == "llama3"
    assert (await resp.read()).rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize(
    ("raw", "request_kwargs", "status", "code"),
    [
        pytest.param({"fallback": {"mode": "error"}}, {"json": CHAT}, 503, "no_healthy_upstream", id="503"),
        pytest.param(
            {"upstreams": [{"name": "out", "base_url": "https://api.openai.com/v1"}]},
            {"json": CHAT},
            422,
            "airgap_violation",
            id="422",
        ),
        pytest.param({}, {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, None, id="400"),
        pytest.param({"limits": {"max_body_bytes": 1024}}, {"json": {**CHAT, "pad": "x" * 2048}}, 413, None, id="413"),
    ],
)
async def test_every_error_the_proxy_makes_carries_x_airgap_error(
    aiohttp_client: Any, raw: dict[str, Any], request_kwargs: dict[str, Any], status: int, code: str | None
) -> None:
    client = await aiohttp_client(create_app(make_config(raw)))
    resp = await client.post("/v1/chat/completions", **request_kwargs)
    assert resp.status == status
    body = await resp.json()
    assert resp.headers["X-Airgap-Error"] == body["error"]["code"]
    if code is not None:
        assert body["error"]["code"] == code
    # ... and the proxy keeps serving.
    assert (await client.get("/healthz")).status == 200


async def test_an_upstreams_own_error_is_relayed_without_x_airgap_error(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    fake.status = 400
    client = await aiohttp_client(create_app(make_config(upstream_config(base))))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 400
    assert "X-Airgap-Error" not in resp.headers
    assert (await resp.json())["error"]["message"] == "upstream says no"


async def test_the_audit_event_names_the_surface(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    client = await aiohttp_client(create_app(make_config(upstream_config(base))))
    with capture_logs() as logs:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert (await client.get("/v1/models")).status == 200
    audits = {e["route"]: e for e in logs if e["event"] == "request"}
    assert audits["/v1/chat/completions"]["api"] == audits["/v1/models"]["api"] == "openai"


async def test_an_upstream_that_speaks_no_openai_is_not_sent_openai_requests(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    client = await aiohttp_client(create_app(make_config(upstream_config(base, apis=["anthropic"]))))
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["X-Airgap-Upstream"] == "deterministic"
    assert fake.received == []
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["decision"] == "fallback"
    assert audit["error"] == "no configured upstream speaks the openai API (upstreams[].apis)"
