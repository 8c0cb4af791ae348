"""The proxy end to end over real sockets: aiohttp test client -> proxy -> fake upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from airgap_proxy.app import create_app
from tests.conftest import FakeResolver, make_config
from tests.fakes import FakeUpstream

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}
UPSTREAM_KEY = "sk-upstream-Zq81"


async def proxy_for(aiohttp_client: Any, base_url: str, raw: dict[str, Any] | None = None, **env: str) -> Any:
    config = make_config(raw, {"LLM_BASE_URL": base_url, "LLM_API_KEY": UPSTREAM_KEY, **env})
    return await aiohttp_client(create_app(config))


def assert_envelope(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_chat_is_forwarded_with_clean_headers(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    body = json.dumps(CHAT).encode()
    resp = await client.post(
        "/v1/chat/completions",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer client-key-must-not-leak",
            "Proxy-Authorization": "Basic xyz",
            "Cookie": "session=1",
            "api-key": "azure-style",
            "x-api-key": "anthropic-style",
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "1",
            "X-Custom": "kept",
            "X-Airgap-Mode": "internal",
        },
    )
    assert resp.status == 200
    data = await resp.json()
    assert data["choices"][0]["message"]["content"] == "Hello from upstream"
    assert resp.headers["X-Airgap-Upstream"] == "default"
    request_id = resp.headers["X-Request-ID"]
    assert len(request_id) >= 16
    [received] = fake.received
    assert received.path == "/v1/chat/completions"
    assert received.body == body  # original bytes, untouched
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    for dropped in ("proxy-authorization", "cookie", "api-key", "x-api-key", "x-hop-secret", "x-airgap-mode"):
        assert dropped not in headers, dropped
    assert headers["x-custom"] == "kept"
    assert headers["x-request-id"] == request_id


async def test_no_key_configured_means_no_authorization(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    client = await aiohttp_client(create_app(make_config(None, {"LLM_BASE_URL": base})))
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer client"})
    assert resp.status == 200
    assert "authorization" not in {k.lower() for k in fake.received[0].headers}


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        pytest.param("req-abc.123:x", True, id="valid id propagated"),
        pytest.param("has space", False, id="unsafe id replaced"),
        pytest.param("x" * 200, False, id="overlong id replaced"),
    ],
)
async def test_request_id(aiohttp_client: Any, upstream: tuple[FakeUpstream, str], given: str, echoed: bool) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": given})
    assert resp.status == 200
    assert (resp.headers["X-Request-ID"] == given) is echoed
    assert fake.received[0].headers["X-Request-ID"] == resp.headers["X-Request-ID"]


@pytest.mark.parametrize("model", [None, "default", ""])
async def test_default_model_is_applied(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], model: str | None
) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base, LLM_MODEL="llama3.2:3b")
    body: dict[str, Any] = {"messages": CHAT["messages"]}
    if model is not None:
        body["model"] = model
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    assert fake.received[0].json()["model"] == "llama3.2:3b"
    assert fake.received[0].json()["messages"] == CHAT["messages"]


async def test_generic_v1_path_passes_through(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    resp = await client.delete("/v1/files/file-abc?purpose=x&b=%20y")
    assert resp.status == 200
    assert await resp.json() == {"echo": "/v1/files/file-abc", "method": "DELETE", "query": "purpose=x&b=%20y"}
    assert [r.path for r in fake.received] == ["/v1/files/file-abc"]


async def test_base_url_without_v1_prefix(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base.removesuffix("/v1"))
    resp = await client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert resp.status == 200
    assert fake.received[0].path == "/embeddings"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        pytest.param("/v1/chat/completions", b"{not json", None, id="malformed json"),
        pytest.param("/v1/chat/completions", b"", None, id="empty body"),
        pytest.param("/v1/chat/completions", b"[1,2]", None, id="json array"),
        pytest.param("/v1/chat/completions", b'{"model":"m"}', "messages", id="missing messages"),
        pytest.param("/v1/chat/completions", b'{"model":"m","messages":[]}', "messages", id="empty messages"),
        pytest.param("/v1/chat/completions", b'{"model":"m","messages":"hi"}', "messages", id="messages not list"),
        pytest.param(
            "/v1/chat/completions", b'{"model":5,"messages":[{"role":"user"}]}', "model", id="model not string"
        ),
        pytest.param(
            "/v1/chat/completions",
            b'{"model":"m","stream":"yes","messages":[{"role":"user"}]}',
            "stream",
            id="stream not bool",
        ),
        pytest.param("/v1/completions", b'{"model":"m"}', "prompt", id="completions without prompt"),
        pytest.param("/v1/embeddings", b'{"model":"m"}', "input", id="embeddings without input"),
        pytest.param("/v1/chat/completions", b"\xff\xfe\x00", None, id="binary garbage"),
        pytest.param("/v1/chat/completions", b"[" * 100000, None, id="deep nesting"),
    ],
)
async def test_bad_requests_get_400_and_proxy_keeps_serving(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], path: str, body: bytes, param: str | None
) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    data = await resp.json()
    assert_envelope(data, "invalid_request_error")
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["param"] == param
    assert fake.received == []
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_body_over_limit_is_413(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base, {"limits": {"max_body_bytes": 2048}})
    big = json.dumps({**CHAT, "pad": "x" * 5000}).encode()
    resp = await client.post("/v1/chat/completions", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert_envelope(await resp.json(), "request_too_large")

    async def chunked() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    resp = await client.post("/v1/chat/completions", data=chunked())
    assert resp.status == 413
    assert fake.received == []
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_no_upstream_and_no_fallback_is_503(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config({"fallback": {"mode": "error"}})))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 503
    assert_envelope(await resp.json(), "no_healthy_upstream")
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_no_upstream_answers_from_the_fallback(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config()))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "deterministic"
    assert (await resp.json())["system_fingerprint"] == "fp_airgap_deterministic"
    assert (await client.get("/readyz")).status == 200
    other = await client.get("/v1/files")
    assert other.status == 503
    assert_envelope(await other.json(), "no_healthy_upstream")


async def test_unknown_path_and_dot_segments(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    resp = await client.get("/admin")
    assert resp.status == 404
    assert_envelope(await resp.json(), "not_found")
    for raw in ("/v1/%2e%2e/secret", "/v1/chat/%2E%2E/%2e%2e/admin", "/v1/./models"):
        resp = await client.session.get(URL(f"http://127.0.0.1:{client.port}{raw}", encoded=True))
        assert resp.status == 400, raw
    assert fake.received == []


# --- the air gap --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("https://api.openai.com/v1", id="hosted api"),
        pytest.param("https://API.OpenAI.com./v1", id="hosted api case and dot"),
        pytest.param("https://myorg.openai.azure.com/openai", id="azure"),
        pytest.param("http://169.254.169.254/latest", id="metadata"),
        pytest.param("http://user@localhost:11434/v1", id="userinfo is invalid"),
        pytest.param("ftp://localhost/v1", id="scheme is invalid"),
        pytest.param("http://[fe80::1%25eth0]:80/v1", id="link-local with zone"),
    ],
)
async def test_external_or_invalid_target_is_422_without_any_resolution(aiohttp_client: Any, base_url: str) -> None:
    resolver = FakeResolver({})
    config = make_config(None, {"LLM_BASE_URL": base_url})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    for path in ("/v1/chat/completions", "/v1/models", "/v1/embeddings"):
        resp = await client.post(path, json={**CHAT, "input": "x"})
        assert resp.status == 422, path
        data = await resp.json()
        assert_envelope(data, "airgap_violation")
        assert data["error"]["type"] == "airgap_violation"
    assert resolver.calls == []


async def test_external_forms_open_no_connection(aiohttp_client: Any, recorder: Any) -> None:
    """Only 127.0.0.1 is local; a listener on 127.0.0.2 stands for the outside world."""
    outside = await recorder("127.0.0.2")
    rules = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}}
    forms = [
        f"http://127.0.0.2:{outside.port}/v1",
        f"http://2130706434:{outside.port}/v1",
        f"http://0x7f.0.0.2:{outside.port}/v1",
        f"http://0177.0.0.02:{outside.port}/v1",
        f"http://[::ffff:127.0.0.2]:{outside.port}/v1",
        f"http://outside.test:{outside.port}/v1",
    ]
    resolver = FakeResolver({"outside.test": ["127.0.0.2"]})
    with capture_logs() as logs:
        for form in forms:
            config = make_config(rules, {"LLM_BASE_URL": form})
            client = await aiohttp_client(create_app(config, resolver=resolver))
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 422, form
            assert "127.0.0.2" in (await resp.json())["error"]["message"], form
    assert outside.connections == 0
    audits = [e for e in logs if e["event"] == "request"]
    assert len(audits) == len(forms)
    assert all(e["decision"] == "block" and e["status"] == 422 for e in audits)


async def test_report_only_forwards_and_records_would_block(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app(), host="127.0.0.2")
    rules = {"policy": {"allow_networks": ["127.0.0.1/32"]}}
    config = make_config(rules, {"LLM_BASE_URL": f"http://127.0.0.2:{server.port}/v1", "AISOC_AIRGAPPED": "false"})
    client = await aiohttp_client(create_app(config))
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert len(fake.received) == 1
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["decision"] == "would_block"
    assert audit["verdict"] == "external"
    assert audit["reason"] == "address 127.0.0.2 of host 127.0.0.2 is not in allow_networks"


async def test_report_only_still_refuses_invalid_urls(aiohttp_client: Any) -> None:
    config = make_config(None, {"LLM_BASE_URL": "http://user@localhost:1/v1", "AISOC_AIRGAPPED": "false"})
    client = await aiohttp_client(create_app(config))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422


async def test_hosted_provider_type_is_refused_even_on_a_local_url(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    config = make_config({"upstreams": [{"name": "sneaky", "provider_type": "openai", "base_url": base}]})
    client = await aiohttp_client(create_app(config))
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    assert "hosted" in (await resp.json())["error"]["message"]
    assert fake.received == []
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["rule"] == "provider_type"  # refused by its type, not by a deny-listed host


# --- upstream failures ---------------------------------------------------------------------------


async def test_connection_refused_is_502(aiohttp_client: Any, unused_tcp_port: int) -> None:
    client = await proxy_for(aiohttp_client, f"http://127.0.0.1:{unused_tcp_port}/v1", {"fallback": {"mode": "error"}})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    assert_envelope(await resp.json(), "upstream_error")
    resp = await client.get("/v1/files")  # no fallback for this endpoint in any mode
    expected = {502: "upstream_error", 503: "no_healthy_upstream"}  # 503 once health marked it down
    assert resp.status in expected
    assert_envelope(await resp.json(), expected[resp.status])


async def test_connection_refused_falls_back_for_core_endpoints(aiohttp_client: Any, unused_tcp_port: int) -> None:
    client = await proxy_for(aiohttp_client, f"http://127.0.0.1:{unused_tcp_port}/v1")
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "deterministic"


async def test_slow_upstream_is_504(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    fake.delay_s = 1.0
    client = await proxy_for(aiohttp_client, base, {"timeouts": {"upstream_s": 0.2}})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 504
    assert_envelope(await resp.json(), "upstream_timeout")


async def test_upstream_error_status_is_passed_through(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    fake.status = 429
    client = await proxy_for(aiohttp_client, base)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 429
    assert (await resp.json())["error"]["message"] == "upstream says no"


async def test_redirect_is_never_followed(aiohttp_client: Any, aiohttp_server: Any) -> None:
    second = FakeUpstream()
    second_server = await aiohttp_server(second.app())
    first = FakeUpstream(redirect_to=f"http://127.0.0.1:{second_server.port}/v1/chat/completions")
    first_server = await aiohttp_server(first.app())
    client = await proxy_for(aiohttp_client, f"http://127.0.0.1:{first_server.port}/v1")
    resp = await client.post("/v1/chat/completions", json=CHAT, allow_redirects=False)
    assert resp.status == 502
    assert "redirect" in (await resp.json())["error"]["message"]
    assert "Location" not in resp.headers
    assert len(first.received) == 1
    assert second.received == []


async def test_a_redirecting_candidate_is_passed_over_for_the_next(aiohttp_client: Any, aiohttp_server: Any) -> None:
    target = FakeUpstream()
    target_server = await aiohttp_server(target.app())
    backup = FakeUpstream()
    backup_server = await aiohttp_server(backup.app())
    first = FakeUpstream(redirect_to=f"http://127.0.0.1:{target_server.port}/v1/chat/completions")
    first_server = await aiohttp_server(first.app())
    config = make_config(
        {
            "upstreams": [
                {"name": "redirecting", "base_url": f"http://127.0.0.1:{first_server.port}/v1"},
                {"name": "backup", "base_url": f"http://127.0.0.1:{backup_server.port}/v1", "priority": 1},
            ],
            "health": {"interval_s": 60},
        }
    )
    client = await aiohttp_client(create_app(config))
    resp = await client.post("/v1/chat/completions", json=CHAT, allow_redirects=False)
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "backup"
    assert len(first.received) == 1 and len(backup.received) == 1
    assert target.received == []  # never followed


# --- streaming -----------------------------------------------------------------------------------


async def test_stream_is_relayed_with_sse_headers(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    text = await resp.text()
    assert text.count("data: ") == 4
    assert text.endswith("data: [DONE]\n\n")


async def test_upstream_dying_mid_stream_ends_with_error_event(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    fake.stream_chunks = 5
    fake.die_after_chunks = 2
    client = await proxy_for(aiohttp_client, base)
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status == 200
        text = await resp.text()
    events = [line for line in text.split("\n\n") if line]
    assert len(events) == 3
    assert "[DONE]" not in text
    error = json.loads(events[-1].removeprefix("data: "))
    assert error["error"]["code"] == "upstream_error"
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["error_code"] == "upstream_error"
    fake.die_after_chunks = None
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_client_disconnect_cancels_upstream_request(aiohttp_client: Any, aiohttp_server: Any) -> None:
    upstream_done = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for index in range(200):
                await response.write(f"data: {index}\n\n".encode())
                await asyncio.sleep(0.05)
            outcome["finished"] = True
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            outcome["stopped"] = type(exc).__name__
            raise
        finally:
            upstream_done.set()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    server = await aiohttp_server(app)
    client = await proxy_for(aiohttp_client, f"http://127.0.0.1:{server.port}/v1")
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert (await resp.content.readuntil(b"\n\n")) == b"data: 0\n\n"
    resp.close()
    await asyncio.wait_for(upstream_done.wait(), timeout=5)
    assert "finished" not in outcome
    assert outcome["stopped"] in {"CancelledError", "ConnectionResetError", "ClientConnectionResetError"}


# --- audit log -----------------------------------------------------------------------------------


async def test_one_audit_event_without_prompt_or_keys(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    prompt = "TOP-SECRET-PROMPT-7731"
    with capture_logs() as logs:
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "m1", "messages": [{"role": "user", "content": prompt}]},
            headers={"Authorization": "Bearer CLIENT-KEY-9912", "X-Request-ID": "rid-1"},
        )
        assert resp.status == 200
        await client.get("/healthz")
    audits = [e for e in logs if e["event"] == "request"]
    assert len(audits) == 1
    audit = audits[0]
    assert audit["request_id"] == "rid-1"
    assert audit["route"] == "/v1/chat/completions"
    assert audit["model"] == "m1"
    assert audit["upstream"] == "default"
    assert audit["decision"] == "forward"
    assert audit["verdict"] == "local"
    assert audit["status"] == 200
    assert audit["duration_ms"] >= 0
    dumped = json.dumps(logs, default=str)
    for secret in (prompt, "CLIENT-KEY-9912", UPSTREAM_KEY):
        assert secret not in dumped


async def test_readyz_reports_permitted_upstreams(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["upstreams"] == ["default"]


async def test_routing_hints_are_stripped_before_forwarding(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    hints = {"api_base": "https://api.openai.com/v1", "fallbacks": ["gpt-4o"], "api_key": "sk-x", "base_url": "x"}
    with capture_logs() as logs:
        resp = await client.post("/v1/chat/completions", json={**CHAT, **hints, "temperature": 0.2})
    assert resp.status == 200
    sent = fake.received[0].json()
    assert not set(hints) & set(sent)
    assert sent["temperature"] == 0.2 and sent["messages"] == CHAT["messages"]
    [audit] = [e for e in logs if e["event"] == "request"]
    assert sorted(audit["stripped_fields"]) == sorted(hints)


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text/plain"),
        pytest.param(None, id="no content-type"),
        pytest.param("application/octet-stream", id="octet-stream"),
        pytest.param("application/x-www-form-urlencoded", id="form label"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/chat/completions", "/v1/some/gateway/route"])
async def test_routing_hints_are_stripped_whatever_the_content_type(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], content_type: str | None, path: str
) -> None:
    # LiteLLM parses a text/plain (or unlabelled) body as JSON too: the label decides nothing.
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    hints = {"api_base": "https://api.openai.com/v1", "base_url": "http://10.9.9.9/v1", "api_key": "sk-x"}
    body = json.dumps({**CHAT, **hints, "fallbacks": ["gpt-4o"], "top_n": 3}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    with capture_logs() as logs:
        resp = await client.post(path, data=body, headers=headers, skip_auto_headers=skip)
    assert resp.status == 200
    [received] = fake.received
    if content_type is None:
        assert "Content-Type" not in received.headers
    sent = received.json()
    assert not (set(hints) | {"fallbacks"}) & set(sent)
    assert sent["top_n"] == 3 and sent["messages"] == CHAT["messages"]
    [audit] = [e for e in logs if e["event"] == "request"]
    assert sorted(audit["stripped_fields"]) == sorted([*hints, "fallbacks"])


def transcription_form(**fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    # File bytes that look like a hint field must not count: only part heads do.
    form.add_field("file", b'RIFF\x00\x01 name="api_base"\r\n', filename="a.wav", content_type="audio/wav")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


@pytest.mark.parametrize("hint", ["api_base", "base_url", "api_key", "fallbacks"])
@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
async def test_a_form_body_with_a_routing_hint_is_refused(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], hint: str, encoding: str
) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    if encoding == "multipart":
        data: Any = transcription_form(**{hint: "https://api.openai.com/v1"})
    else:
        encoded = hint.replace("_", "%5F")  # percent-encoded, as a gateway decodes it
        data = f"model=m&{encoded}=https%3A%2F%2Fapi.openai.com%2Fv1".encode()
    headers = {} if encoding == "multipart" else {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await client.post("/v1/audio/transcriptions", data=data, headers=headers)
    assert resp.status == 400
    body = await resp.json()
    assert_envelope(body, "invalid_request_error")
    assert body["error"]["param"] == hint
    assert fake.received == []
    # Without the hint the same upload goes through, byte for byte.
    ok = await client.post("/v1/audio/transcriptions", data=transcription_form(language="en"))
    assert ok.status == 200
    assert b'name="language"' in fake.received[0].body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/rerank", b'{"query":"q","documents":["a","b"],  "top_n":1}', id="rerank"),
        pytest.param("/v1/files", b'{"purpose":"batch"}', id="files"),
        pytest.param("/v1/moderations", b'{"input": "x"}', id="moderations"),
        pytest.param("/v1/some/route", rb'{"x":1.0,"y":"\u00e9"}', id="escapes and floats"),
    ],
)
async def test_a_pass_through_body_without_a_model_goes_byte_for_byte(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], path: str, body: bytes
) -> None:
    fake, base = upstream
    client = await proxy_for(aiohttp_client, base, LLM_MODEL="llama3.2:3b")
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert fake.received[0].body == body
    # An endpoint that takes a model still gets the default.
    await client.post("/v1/embeddings", json={"input": "x"})
    assert fake.received[1].json()["model"] == "llama3.2:3b"


async def test_audit_event_carries_token_counts(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    _fake, base = upstream
    client = await proxy_for(aiohttp_client, base)
    with capture_logs() as logs:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
        fallback = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Airgap-Mode": "deterministic"})
        body = await fallback.json()
    upstream_audit, fallback_audit = [e for e in logs if e["event"] == "request"]
    assert (upstream_audit["prompt_tokens"], upstream_audit["completion_tokens"]) == (1, 2)
    assert fallback_audit["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert fallback_audit["completion_tokens"] == body["usage"]["completion_tokens"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/nowhere", "/healthz", "/api/v1/tenants//llm-provider"])
@pytest.mark.parametrize("expect", [b"\x80", b"other"])
async def test_unsupported_expect_is_417_in_the_envelope_everywhere(path: str, expect: bytes) -> None:
    app = create_app(make_config())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n".encode()
            + b"Expect: "
            + expect
            + b"\r\n\r\n"
        )
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        await runner.cleanup()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 417")
    assert b"X-Request-ID" in head
    assert json.loads(body)["error"]["code"] == "expectation_failed"


async def test_wrong_method_on_a_known_path_is_405(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_config()))
    resp = await client.post("/healthz")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, HEAD"
    assert_envelope(await resp.json(), "method_not_allowed")
    resp = await client.get("/nowhere/at/all")
    assert resp.status == 404
    assert_envelope(await resp.json(), "not_found")
