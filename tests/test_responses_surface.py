"""The responses surface with the official ``openai`` SDK's ``responses`` client, pointed at the proxy.

The upstreams are instruments on loopback that speak ``/v1/responses`` and
record what they received; the fallback's answers are checked in
``test_responses_fallback.py``.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from aiohttp import ClientSession
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from tests.conftest import make_config
from tests.fakes_surfaces import FakeSurfaceUpstream

KEY = "sk-upstream-responses-31"
CLIENT_KEY = "sk-client-must-not-leak"
TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]


def entry(port: int, name: str = "local", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": f"http://127.0.0.1:{port}/v1",
        "provider_type": "local-llamacpp",
        "api_key": KEY,
        **extra,
    }


async def start(aiohttp_server: Any, aiohttp_client: Any, fake: FakeSurfaceUpstream, **extra: Any) -> Any:
    server = await aiohttp_server(fake.app())
    raw = {"upstreams": [entry(server.port, **extra)], "default_model": "llama3"}
    return await aiohttp_client(create_app(make_config(raw)))


@pytest.fixture
async def sdk() -> Any:
    """Makes SDK clients for a proxy test client, and closes them after the test."""
    made: list[Any] = []

    def make(client: Any) -> openai.AsyncOpenAI:
        api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=CLIENT_KEY, max_retries=0)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


async def test_responses_create_is_routed_and_forwarded(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake, aliases={"gpt-5*": "qwen2.5-coder:7b"})
    response = await sdk(client).responses.create(
        model="gpt-5-codex",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
        tools=TOOLS,
        max_output_tokens=64,
    )
    assert response.output_text == "Hello from upstream"
    [received] = fake.received
    assert received.path == "/v1/responses"
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["authorization"] == f"Bearer {KEY}" and CLIENT_KEY not in json.dumps(headers)
    body = json.loads(received.body)
    assert body["model"] == "qwen2.5-coder:7b" and body["instructions"] == "Be brief."
    assert body["input"][2] == {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}


async def test_a_missing_model_gets_the_default(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake)
    async with ClientSession() as session, session.post(client.make_url("/v1/responses"), json={"input": "hi"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Airgap-Upstream"] == "local"
    assert json.loads(fake.received[-1].body)["model"] == "llama3"


async def test_streaming_relays_every_typed_event(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake)
    stream = await sdk(client).responses.create(model="llama3", input="hi", stream=True)
    events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.output_item.added", "response.content_part.added"]
    assert types[3:6] == ["response.output_text.delta"] * 3 and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    async with sdk(client).responses.stream(model="llama3", input="hi") as helper:
        final = await helper.get_final_response()
    assert final.output_text == fake.text()


async def test_input_tokens_is_forwarded(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake)
    counted = await sdk(client).responses.input_tokens.count(model="llama3", input="hi")
    assert counted.input_tokens == 9 and fake.received[-1].path == "/v1/responses/input_tokens"


async def test_get_and_delete_by_id_reach_the_upstream_that_stored_it(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    first, second = FakeSurfaceUpstream(), FakeSurfaceUpstream()
    one, two = await aiohttp_server(first.app()), await aiohttp_server(second.app())
    raw = {
        "upstreams": [entry(one.port, "one", models=["a"]), entry(two.port, "two", models=["b"], priority=1)],
        "default_model": "a",
    }
    client = await aiohttp_client(create_app(make_config(raw)))
    made = await sdk(client).responses.create(model="b", input="hi")
    assert second.stored and not first.stored
    got = await sdk(client).responses.with_raw_response.retrieve(made.id)
    assert got.headers["X-Airgap-Upstream"] == "two" and got.parse().id == made.id
    await sdk(client).responses.delete(made.id)
    assert not second.stored
    with pytest.raises(openai.NotFoundError):
        await sdk(client).responses.retrieve(made.id)


async def test_an_external_upstream_is_refused_in_the_openai_envelope(aiohttp_client: Any, sdk: Any) -> None:
    cloud = {"name": "cloud", "base_url": "https://api.openai.com/v1", "apis": ["openai", "responses"]}
    config = make_config({"upstreams": [cloud]})
    client = await aiohttp_client(create_app(config))
    with capture_logs() as logs, pytest.raises(openai.UnprocessableEntityError) as info:
        await sdk(client).responses.create(model="gpt-5", input="hi")
    assert info.value.response.headers["X-Airgap-Error"] == "airgap_violation"
    assert info.value.code == "airgap_violation"
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["api"] == "responses" and audit["decision"] == "block"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b"{nope", 400, "invalid_request_error", id="malformed"),
        pytest.param(b"[1]", 400, "invalid_request_error", id="not an object"),
        pytest.param(b'{"model": 5, "input": "x"}', 400, "invalid_request_error", id="model not a string"),
        pytest.param(b'{"model": "x", "input": "x", "stream": "yes"}', 400, "invalid_request_error", id="bad stream"),
        pytest.param(b'{"model": "nope", "input": "x"}', 404, "model_not_found", id="unknown model"),
    ],
)
async def test_bad_requests_get_openai_errors_and_the_proxy_keeps_serving(
    aiohttp_server: Any, aiohttp_client: Any, body: bytes, status: int, code: str, sdk: Any
) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake, models=["llama3", "x"])
    async with ClientSession() as session:
        url = client.make_url("/v1/responses")
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == status
            answer = await resp.json()
            assert resp.headers["X-Airgap-Error"] == code == answer["error"]["code"]
    assert fake.received == []
    assert (await sdk(client).responses.create(model="llama3", input="hi")).output_text


async def test_a_stream_that_dies_midway_ends_with_an_error_event(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeSurfaceUpstream(die_after=2)
    client = await start(aiohttp_server, aiohttp_client, fake)
    async with ClientSession() as session:
        payload = {"model": "llama3", "input": "hi", "stream": True}
        async with session.post(client.make_url("/v1/responses"), json=payload) as resp:
            raw = await resp.read()
    assert b"response.completed" not in raw
    tail = raw.rstrip().rsplit(b"\n\n", 1)[-1]
    assert tail.startswith(b"event: error\ndata: ")
    error = json.loads(tail.split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["code"] and error["message"]


async def test_an_upstream_that_does_not_speak_responses_is_not_sent_it(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeSurfaceUpstream()
    client = await start(aiohttp_server, aiohttp_client, fake, provider_type="local-openai-compatible")
    with capture_logs() as logs:
        response = await sdk(client).responses.with_raw_response.create(model="llama3", input="hi")
    assert response.headers["X-Airgap-Upstream"] == "deterministic"
    assert response.parse().output_text
    assert fake.received == []
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["api"] == "responses" and audit["decision"] == "fallback"


# --- offline: the deterministic fallback, through the SDK -------------------

CITY: Any = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 2}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


async def offline(aiohttp_client: Any) -> Any:
    """A proxy whose one responses upstream is down (nothing listens on its port)."""
    down = {"name": "local", "base_url": "http://127.0.0.1:9/v1", "provider_type": "local-llamacpp"}
    return await aiohttp_client(create_app(make_config({"upstreams": [down]})))


async def test_offline_responses_are_deterministic_and_schema_valid(aiohttp_client: Any, sdk: Any) -> None:
    client = await offline(aiohttp_client)
    api = sdk(client)
    first = await api.responses.with_raw_response.create(model="gpt-5-codex", input="hi", previous_response_id="resp_x")
    second = await api.responses.with_raw_response.create(
        model="gpt-5-codex", input="hi", previous_response_id="resp_x"
    )
    assert first.headers["X-Airgap-Upstream"] == "deterministic"
    assert first.http_response.content == second.http_response.content
    assert first.parse().output_text
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": CITY, "strict": True}]
    called = await api.responses.create(model="m", input="weather?", tools=tools, tool_choice="required")
    [call] = [item for item in called.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), CITY)
    text_format: Any = {"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}}
    structured = await api.responses.create(model="m", input="city?", text=text_format)
    jsonschema.validate(json.loads(structured.output_text), CITY)
    counted = await api.responses.input_tokens.count(model="m", input="hi")
    assert counted.input_tokens == first.parse().usage.input_tokens


async def test_offline_streams_end_with_the_same_response(aiohttp_client: Any, sdk: Any) -> None:
    client = await offline(aiohttp_client)
    api = sdk(client)
    whole = await api.responses.create(model="m", input="hi")
    async with api.responses.stream(model="m", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    assert final.id == whole.id and final.output_text == whole.output_text
