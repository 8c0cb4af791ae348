"""The ollama surface with the official ``ollama`` SDK, unchanged, pointed at the proxy (``OLLAMA_HOST``).

The upstream is an instrument on loopback that speaks Ollama's native API
at the root of its ``base_url`` (without ``/v1``) and records what it got.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import ollama
import pytest
from aiohttp import ClientSession, web
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from tests.conftest import ThreadedServers, make_config
from tests.fakes import Received

KEY = "sk-ollama-upstream-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
WORDS = ("Hello", " from", " ollama")


@dataclass
class FakeOllama:
    received: list[Received] = field(default_factory=list)
    die_after: int | None = None
    words: tuple[str, ...] = WORDS
    pace_s: float = 0.0
    sent_at: list[float] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.path, request.query_string, dict(request.headers), body))
        data = json.loads(body) if body else {}
        if request.path == "/api/tags":
            return web.json_response({"models": [{"name": "qwen2.5:7b", "model": "qwen2.5:7b", "size": 1}]})
        if request.path == "/api/version":
            return web.json_response({"version": "0.14.1"})
        if request.path == "/api/embed":
            return web.json_response({"model": data["model"], "embeddings": [[0.6, 0.8]]})
        if request.path == "/api/chat" and data.get("tools"):
            call = {"function": {"name": data["tools"][0]["function"]["name"], "arguments": {"city": "Oslo"}}}
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
            return web.json_response(
                {"model": data["model"], "created_at": "2025-01-01T00:00:00Z", "message": message, "done": True}
            )
        if request.path in ("/api/chat", "/api/generate"):
            chat = request.path == "/api/chat"
            if data.get("stream", True) is False:
                return web.json_response(self.line(data["model"], "".join(WORDS), chat, done=True))
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            for index, word in enumerate(self.words):
                if self.die_after is not None and index == self.die_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if index and self.pace_s:
                    await asyncio.sleep(self.pace_s)
                self.sent_at.append(time.monotonic())
                await response.write(json.dumps(self.line(data["model"], word, chat, done=False)).encode() + b"\n")
                await asyncio.sleep(0)
            await response.write(json.dumps(self.line(data["model"], "", chat, done=True)).encode() + b"\n")
            await response.write_eof()
            return response
        return web.json_response({"error": f"unexpected {request.path}"}, status=500)

    @staticmethod
    def line(model: str, text: str, chat: bool, *, done: bool) -> dict[str, Any]:
        line: dict[str, Any] = {"model": model, "created_at": "2025-01-01T00:00:00Z", "done": done}
        if chat:
            line["message"] = {"role": "assistant", "content": text}
        else:
            line["response"] = text
        if done:
            line.update(done_reason="stop", prompt_eval_count=4, eval_count=3)
        return line

    def calls(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


async def start(aiohttp_server: Any, aiohttp_client: Any, fake: FakeOllama, **extra: Any) -> Any:
    server = await aiohttp_server(fake.app())
    upstream = {
        "name": "ollama",
        "base_url": f"http://127.0.0.1:{server.port}/v1",
        "provider_type": "local-ollama",
        "api_key": KEY,
        **extra,
    }
    return await aiohttp_client(create_app(make_config({"upstreams": [upstream]})))


@pytest.fixture
async def sdk() -> Any:
    """Makes SDK clients for a proxy test client, and closes them after the test."""
    made: list[ollama.AsyncClient] = []

    def make(client: Any) -> ollama.AsyncClient:
        api = ollama.AsyncClient(host=str(client.make_url("")).rstrip("/"))
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()  # type: ignore[no-untyped-call]


async def test_chat_streams_by_default_and_reaches_the_native_root(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeOllama()
    client = await start(aiohttp_server, aiohttp_client, fake)
    parts = [part async for part in await sdk(client).chat(model="qwen2.5:7b", messages=MESSAGES, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "".join(WORDS)
    assert parts[-1].done and parts[-1].eval_count == 3
    [call] = fake.calls("/api/chat")
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    # Without "stream" in the body, Ollama streams: so is the answer relayed.
    async with ClientSession() as session:
        payload = {"model": "qwen2.5:7b", "messages": MESSAGES}
        async with session.post(client.make_url("/api/chat"), json=payload) as resp:
            assert resp.content_type == "application/x-ndjson"
            lines = (await resp.read()).splitlines()
    assert len(lines) == len(WORDS) + 1 and json.loads(lines[-1])["done"] is True


async def test_generate_embed_tags_and_version_are_forwarded(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeOllama()
    client = await start(aiohttp_server, aiohttp_client, fake)
    api = sdk(client)
    generated = await api.generate(model="qwen2.5:7b", prompt="hi", stream=False)
    assert generated.response == "".join(WORDS)
    embedded = await api.embed(model="nomic", input="hi")
    assert list(embedded.embeddings[0]) == [0.6, 0.8]
    listed = await api.list()
    assert [m.model for m in listed.models] == ["qwen2.5:7b"]
    async with ClientSession() as session:
        version = await (await session.get(client.make_url("/api/version"))).json()
        assert version == {"version": "0.14.1"}
        root = await session.get(client.make_url("/"))
        assert root.status == 200 and await root.text() == "Ollama is running"
        raw = b'{"model": "qwen2.5:7b", "prompt": "hi", "stream": false, "tools": [], "options": {"seed": 1}}'
        headers = {"Authorization": "Bearer client-key-9", "Content-Type": "application/json"}
        assert (await session.post(client.make_url("/api/generate"), data=raw, headers=headers)).status == 200
    last = fake.calls("/api/generate")[-1]
    assert last.body == raw  # the client's bytes, untouched
    assert last.headers["Authorization"] == f"Bearer {KEY}"


async def test_the_fallback_answers_when_ollama_is_down(aiohttp_client: Any, unused_tcp_port: int, sdk: Any) -> None:
    upstream = {"name": "ollama", "base_url": f"http://127.0.0.1:{unused_tcp_port}", "provider_type": "local-ollama"}
    client = await aiohttp_client(create_app(make_config({"upstreams": [upstream]})))
    api = sdk(client)
    answer = await api.chat(model="qwen2.5:7b", messages=MESSAGES, stream=False)
    again = await api.chat(model="qwen2.5:7b", messages=MESSAGES, stream=False)
    assert answer.message.content and answer == again and answer.done
    parts = [p async for p in await api.chat(model="qwen2.5:7b", messages=MESSAGES, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == answer.message.content
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    structured = await api.chat(model="qwen2.5:7b", messages=MESSAGES, format=schema, stream=False)
    assert isinstance(json.loads(structured.message.content or "")["city"], str)
    assert (await api.embed(model="nomic", input=["a", "b"])).embeddings
    listed = (await api.list()).models
    assert listed
    name = listed[0].model
    assert name is not None
    shown = await api.show(name)
    assert shown.details is not None and shown.capabilities
    assert [m.model for m in (await api.ps()).models] == [m.model for m in listed]
    assert (await api.embeddings(model="nomic", prompt="hi")).embedding


async def test_tool_calls_in_the_reply_reach_the_client(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeOllama()
    client = await start(aiohttp_server, aiohttp_client, fake)

    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    answer = await sdk(client).chat(model="qwen2.5:7b", messages=MESSAGES, tools=[get_weather], stream=False)
    assert answer.message.tool_calls is not None
    [call] = answer.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
    sent = json.loads(fake.calls("/api/chat")[-1].body)
    assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_no_upstream_at_all_still_speaks_ollama(aiohttp_client: Any, sdk: Any) -> None:
    client = await aiohttp_client(create_app(make_config()))
    with capture_logs() as logs:
        answer = await sdk(client).generate(model="llama3", prompt="hi", stream=False)
    assert answer.response and answer.done
    [audit] = [e for e in logs if e["event"] == "request"]
    assert audit["api"] == "ollama" and audit["decision"] == "fallback" and audit["upstream"] == "deterministic"


async def test_an_upstream_that_does_not_speak_ollama_is_not_sent_it(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeOllama()
    client = await start(aiohttp_server, aiohttp_client, fake, provider_type="local-vllm")
    answer = await sdk(client).chat(model="qwen2.5:7b", messages=MESSAGES, stream=False)
    assert answer.message.content
    assert fake.calls("/api/chat") == []


async def test_pull_and_push_are_refused_while_air_gapped(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    fake = FakeOllama()
    client = await start(aiohttp_server, aiohttp_client, fake)
    with pytest.raises(ollama.ResponseError) as info:
        await sdk(client).pull("llama3")
    assert info.value.status_code == 422 and info.value.error.startswith("airgap_violation")
    async with ClientSession() as session:
        resp = await session.post(client.make_url("/api/push"), json={"model": "me/x"})
        assert resp.status == 422 and resp.headers["X-Airgap-Error"] == "airgap_violation"
        assert (await resp.json())["error"].startswith("airgap_violation: ")
    assert fake.calls("/api/pull") == fake.calls("/api/push") == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/blobs/sha256:ab")],
)
async def test_management_is_403_unless_allowed(
    aiohttp_server: Any, aiohttp_client: Any, method: str, path: str
) -> None:
    fake = FakeOllama()
    client = await start(aiohttp_server, aiohttp_client, fake)
    async with ClientSession() as session:
        resp = await session.request(method, client.make_url(path), json={"model": "x"})
        assert resp.status == 403 and resp.headers["X-Airgap-Error"] == "forbidden"
        assert "ollama.allow_management" in (await resp.json())["error"]
    assert fake.calls(path) == []


async def test_management_is_proxied_when_allowed(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake = FakeOllama()
    server = await aiohttp_server(fake.app())
    upstream = {"name": "ollama", "base_url": f"http://127.0.0.1:{server.port}", "provider_type": "local-ollama"}
    raw = {"upstreams": [upstream], "ollama": {"allow_management": True}}
    client = await aiohttp_client(create_app(make_config(raw)))
    async with ClientSession() as session:
        resp = await session.delete(client.make_url("/api/delete"), json={"model": "x"})
        assert resp.status == 500  # what the instrument answers: it was reached
    assert len(fake.calls("/api/delete")) == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"model": 7, "messages": []}', "model"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "stream"),
    ],
)
async def test_bad_requests_get_the_ollama_envelope(aiohttp_client: Any, body: bytes, fragment: str) -> None:
    client = await aiohttp_client(create_app(make_config()))
    async with ClientSession() as session:
        resp = await session.post(client.make_url("/api/chat"), data=body)
        assert resp.status == 400 and resp.headers["X-Airgap-Error"]
        answer = await resp.json()
        assert set(answer) == {"error"} and fragment in answer["error"]
        assert (await session.get(client.make_url("/api/version"))).status == 200


async def test_a_stream_that_dies_midway_ends_with_an_error_line(
    aiohttp_server: Any, aiohttp_client: Any, sdk: Any
) -> None:
    fake = FakeOllama(die_after=2)
    client = await start(aiohttp_server, aiohttp_client, fake)
    async with ClientSession() as session:
        payload = {"model": "qwen2.5:7b", "messages": MESSAGES}
        async with session.post(client.make_url("/api/chat"), json=payload) as resp:
            lines = (await resp.read()).splitlines()
    assert not any(json.loads(line).get("done") for line in lines)
    assert set(json.loads(lines[-1])) == {"error"}
    with pytest.raises(ollama.ResponseError):
        async for _ in await sdk(client).chat(model="qwen2.5:7b", messages=MESSAGES, stream=True):
            pass


async def test_each_ndjson_line_arrives_within_50ms(aiohttp_server: Any, aiohttp_client: Any, sdk: Any) -> None:
    """Five lines 200 ms apart: each reaches the ollama client within 50 ms of being sent."""
    fake = FakeOllama(words=("a", "b", "c", "d", "e"), pace_s=0.2)
    client = await start(aiohttp_server, aiohttp_client, fake)
    received_at: list[float] = []
    async for part in await sdk(client).chat(model="qwen2.5:7b", messages=MESSAGES, stream=True):
        if not part.done:
            received_at.append(time.monotonic())
    assert len(received_at) == 5
    lags = [got - sent for sent, got in zip(fake.sent_at, received_at, strict=True)]
    assert max(lags) < 0.05, lags
    assert min(b - a for a, b in itertools.pairwise(received_at)) > 0.15  # never coalesced


def test_the_sync_client_works_too(threaded: ThreadedServers) -> None:
    fake = FakeOllama()
    port = threaded.start(fake.app())
    upstream = {"name": "ollama", "base_url": f"http://127.0.0.1:{port}/v1", "provider_type": "local-ollama"}
    with ollama.Client(host=threaded.start_proxy(make_config({"upstreams": [upstream]}))) as api:
        assert api.chat(model="qwen2.5:7b", messages=MESSAGES, stream=False).message.content == "".join(WORDS)
        parts = api.chat(model="qwen2.5:7b", messages=MESSAGES, stream=True)
        assert "".join(p.message.content or "" for p in parts) == "".join(WORDS)
        assert [m.model for m in api.list().models] == ["qwen2.5:7b"]
