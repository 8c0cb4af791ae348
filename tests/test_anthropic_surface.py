"""The anthropic surface with the official ``anthropic`` SDK, unchanged, pointed at the proxy.

The upstream is an instrument on loopback that speaks ``/v1/messages`` and
records what it received; the fallback's answers are checked in
``test_anthropic_fallback.py``.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import jsonschema
import pytest
from aiohttp import ClientSession
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from tests.conftest import make_config
from tests.fakes_surfaces import FakeSurfaceUpstream

KEY = "sk-upstream-anthropic-77"
CLIENT_KEY = "sk-ant-client-must-not-leak"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


async def start(aiohttp_server: Any, aiohttp_client: Any, fake: FakeSurfaceUpstream, **upstream: Any) -> Any:
    server = await aiohttp_server(fake.app())
    entry = {
        "name": "local",
        "base_url": f"http://127.0.0.1:{server.port}/v1",
        "provider_type": "local-vllm",
        "api_key": KEY,
        **upstream,
    }
    return await aiohttp_client(create_app(make_config({"upstreams": [entry]})))


@pytest.fixture
async def sdk() -> Any:
    """Makes SDK clients for a proxy test client, and closes them after the test."""
    made: list[Any] = []

    def make(client: Any) -> anthropic.AsyncAnthropic:
        url = str(client.make_url("")).rstrip("/")
        api = anthropic.AsyncAnthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


async def test_messages_create_is_forwarded_with_the_upstreams_key_only(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake)
    message = await sdk(client).messages.create(
        model="qwen2.5-coder:7b",
        max_tokens=64,
        system="Be brief.",
        messages=MESSAGES,
        extra_headers={"anthropic-beta": "some-future-beta-2099-01-01"},
        extra_query={"beta": "true"},
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello from upstream"
    assert message.usage.input_tokens == 11
    [received] = fake.received
    assert received.path == "/v1/messages" and received.query == "beta=true"
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["x-api-key"] == KEY and headers["authorization"] == f"Bearer {KEY}"
    assert CLIENT_KEY not in json.dumps(headers)
    assert headers["anthropic-version"] and headers["anthropic-beta"] == "some-future-beta-2099-01-01"
    body = json.loads(received.body)
    assert body["system"] == "Be brief." and body["max_tokens"] == 64 and body["model"] == "qwen2.5-coder:7b"


async def test_a_tool_turn_goes_through_byte_for_byte(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake)
    tools: Any = [{"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}}]
    turns: Any = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    raw = json.dumps({"model": "m", "max_tokens": 10, "tools": tools, "messages": turns}).encode()
    async with ClientSession() as session:
        url = client.make_url("/v1/messages")
        async with session.post(url, data=raw, headers={"anthropic-version": "2023-06-01"}) as resp:
            assert resp.status == 200, await resp.text()
    assert fake.received[-1].body == raw


async def test_streaming_relays_every_event_as_it_arrives(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake)
    async with sdk(client).messages.stream(model="m", max_tokens=32, messages=MESSAGES) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == list(fake.deltas)
    assert final.content[0].type == "text" and final.content[0].text == fake.text()
    assert final.stop_reason == "end_turn"
    # stream=True gives the raw events, in order.
    events = await sdk(client).messages.create(model="m", max_tokens=32, messages=MESSAGES, stream=True)
    types = [event.type async for event in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_delta") == len(fake.deltas)


async def test_count_tokens_and_the_models_list(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake, models=["qwen*"])
    counted = await sdk(client).messages.count_tokens(model="qwen2.5", messages=MESSAGES)
    assert counted.input_tokens == 7 and fake.received[-1].path == "/v1/messages/count_tokens"
    page = await sdk(client).models.list()
    assert page.data and all(m.type == "model" and "*" not in m.id for m in page.data)
    async with ClientSession() as session:
        resp = await session.get(client.make_url("/v1/models"), headers={"anthropic-version": "2023-06-01"})
        body = await resp.json()
        assert set(body) == {"data", "has_more", "first_id", "last_id"} and body["has_more"] is False
        assert all(m["type"] == "model" and m["created_at"] for m in body["data"])
        # Without anthropic-version it is OpenAI's list.
        openai_list = await (await session.get(client.make_url("/v1/models"))).json()
        assert openai_list["object"] == "list"


async def test_claude_names_map_onto_a_local_model_by_glob(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake, aliases={"claude-*": "qwen2.5-coder:7b"})
    raw = await sdk(client).messages.with_raw_response.create(
        model="claude-sonnet-4-5-20250929", max_tokens=16, messages=MESSAGES
    )
    assert raw.headers["X-Airgap-Model"] == "qwen2.5-coder:7b"
    assert raw.headers["X-Airgap-Upstream"] == "local"
    assert json.loads(fake.received[-1].body)["model"] == "qwen2.5-coder:7b"


async def test_an_external_upstream_is_refused_in_the_anthropic_envelope(aiohttp_client: Any, sdk: Any) -> None:
    cloud = {"name": "cloud", "base_url": "https://api.anthropic.com/v1", "apis": ["anthropic"]}
    config = make_config({"upstreams": [cloud]})
    client = await aiohttp_client(create_app(config))
    with capture_logs() as logs, pytest.raises(anthropic.UnprocessableEntityError) as info:
        await sdk(client).messages.create(model="claude-x", max_tokens=8, messages=MESSAGES)
    assert info.value.response.headers["X-Airgap-Error"] == "airgap_violation"
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "airgap_violation" and "api.anthropic.com" in body["error"]["message"]
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["api"] == "anthropic" and audit["decision"] == "block"


@pytest.mark.parametrize(
    ("body", "status", "error_type", "fragment"),
    [
        pytest.param(b"{nope", 400, "invalid_request_error", "not valid JSON", id="malformed"),
        pytest.param(
            b'{"model":"m","messages":[{"role":"user","content":"x"}]}',
            400,
            "invalid_request_error",
            "max_tokens",
            id="no max_tokens",
        ),
        pytest.param(b'{"model":"m","max_tokens":5}', 400, "invalid_request_error", "messages", id="no messages"),
        pytest.param(
            b'{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}',
            400,
            "invalid_request_error",
            "max_tokens",
            id="zero max_tokens",
        ),
        pytest.param(
            b'{"model":"other","max_tokens":5,"messages":[{"role":"user","content":"x"}]}',
            404,
            "not_found_error",
            "other",
            id="unknown model",
        ),
    ],
)
async def test_bad_requests_get_anthropic_errors_and_the_proxy_keeps_serving(
    aiohttp_server: Any, aiohttp_client: Any, body: bytes, status: int, error_type: str, fragment: str, sdk: Any
) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake, models=["m"])
    async with ClientSession() as session:
        url = client.make_url("/v1/messages")
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == status
            answer = await resp.json()
            assert resp.headers["X-Airgap-Error"]
        assert answer["type"] == "error" and answer["error"]["type"] == error_type
        assert fragment in answer["error"]["message"]
    assert fake.received == []
    message = await sdk(client).messages.create(model="m", max_tokens=8, messages=MESSAGES)
    assert message.content[0].type == "text"


async def test_a_stream_that_dies_midway_ends_with_an_error_event(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeSurfaceUpstream(die_after=3)
    client = await start(aiohttp_server, aiohttp_client, fake)
    async with ClientSession() as session:
        payload = {"model": "m", "max_tokens": 8, "messages": MESSAGES, "stream": True}
        async with session.post(client.make_url("/v1/messages"), json=payload) as resp:
            assert resp.status == 200
            raw = await resp.read()
    assert b"event: message_stop" not in raw
    tail = raw.rstrip().rsplit(b"\n\n", 1)[-1]
    assert tail.startswith(b"event: error\ndata: ")
    error = json.loads(tail.split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] in ("api_error", "timeout_error")
    with pytest.raises(anthropic.APIError):
        async with sdk(client).messages.stream(model="m", max_tokens=8, messages=MESSAGES) as stream:
            async for _ in stream.text_stream:
                pass


async def test_an_upstream_error_is_relayed_as_is(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream(status=400)
    client = await start(aiohttp_server, aiohttp_client, fake)
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk(client).messages.create(model="m", max_tokens=8, messages=MESSAGES)
    assert "X-Airgap-Error" not in info.value.response.headers


# --- offline: the deterministic fallback, through the SDK -------------------

WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 2}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}


async def offline(aiohttp_client: Any) -> Any:
    """A proxy whose one anthropic upstream is down (nothing listens on its port)."""
    down = {"name": "local", "base_url": "http://127.0.0.1:9/v1", "provider_type": "local-llamacpp"}
    return await aiohttp_client(create_app(make_config({"upstreams": [down]})))


async def test_offline_messages_are_deterministic_and_schema_valid(aiohttp_client: Any, sdk: Any) -> None:
    client = await offline(aiohttp_client)
    api = sdk(client)
    raw = await api.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES)
    again = await api.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=256, messages=MESSAGES)
    assert raw.headers["X-Airgap-Upstream"] == "deterministic"
    assert await raw.http_response.aread() == await again.http_response.aread()
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text and message.stop_reason == "end_turn"
    forced = await api.messages.create(
        model="m",
        max_tokens=256,
        messages=MESSAGES,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert forced.stop_reason == "tool_use"
    [block] = [b for b in forced.content if b.type == "tool_use"]
    jsonschema.validate(block.input, WEATHER["input_schema"])
    short = await api.messages.create(model="m", max_tokens=2, messages=MESSAGES)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens <= 2
    counted = await api.messages.count_tokens(model="m", messages=MESSAGES)
    assert counted.input_tokens == message.usage.input_tokens


async def test_offline_streams_give_the_same_message(aiohttp_client: Any, sdk: Any) -> None:
    client = await offline(aiohttp_client)
    api = sdk(client)
    whole = await api.messages.create(model="m", max_tokens=256, messages=MESSAGES)
    async with api.messages.stream(model="m", max_tokens=256, messages=MESSAGES) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) > 1 and final.model_dump() == whole.model_dump()
    tools: Any = [WEATHER]
    async with api.messages.stream(
        model="m", max_tokens=256, messages=MESSAGES, tools=tools, tool_choice={"type": "any"}
    ) as stream:
        called = await stream.get_final_message()
    assert called.content[-1].type == "tool_use" and called.stop_reason == "tool_use"


async def test_with_the_fallback_off_offline_is_503_in_the_anthropic_envelope(aiohttp_client: Any, sdk: Any) -> None:
    client = await aiohttp_client(create_app(make_config({"fallback": {"mode": "error"}})))
    with pytest.raises(anthropic.InternalServerError) as info:
        await sdk(client).messages.create(model="m", max_tokens=8, messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.response.headers["X-Airgap-Error"] == "no_healthy_upstream"
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "api_error"
