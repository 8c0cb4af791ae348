"""Limits: slow clients, in-flight caps, upstream silence, and memory under a large response."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from airgap_proxy.app import create_app
from airgap_proxy.server import make_runner
from tests.conftest import make_config
from tests.fakes import FakeUpstream
from tests.test_operations import ServedProxy, proxies, serve, write_config  # noqa: F401 - proxies is a fixture

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


class HeldUpstream:
    """An upstream that holds every request until released; ``arrived`` counts them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = asyncio.Semaphore(0)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": []})
        self.arrived.release()
        await self.release.wait()
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})


@pytest.fixture
async def running() -> AsyncIterator[Any]:
    """Factory: serve an app with the runner ``serve`` uses; returns the port."""
    runners: list[web.AppRunner] = []

    async def start(raw: dict[str, Any]) -> int:
        config = make_config(raw)
        runner = make_runner(create_app(config), config)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_client_dribbling_its_header_is_cut_off_while_others_are_served(running: Any) -> None:
    port = await running({"timeouts": {"client_header_s": 0.5}})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def dribble() -> None:
        for index in range(40):
            writer.write(f"X-Slow-{index}: 1\r\n".encode())
            await asyncio.sleep(0.1)

    dribbling = asyncio.get_running_loop().create_task(dribble())
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as resp:
        assert resp.status == 200
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server, no response
    closed_after = time.monotonic() - opened
    dribbling.cancel()
    writer.close()
    assert 0.4 < closed_after < 2.0, closed_after


async def test_a_client_that_never_finishes_its_body_gets_408_and_is_disconnected(running: Any) -> None:
    port = await running({"timeouts": {"client_body_s": 0.3}})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and set(error) == {"message", "type", "code", "param"}
    assert b"Connection: close" in head
    assert time.monotonic() - started < 2  # closed at once, without waiting for the rest


async def test_requests_past_max_in_flight_get_503_overloaded_at_once(aiohttp_client: Any, aiohttp_server: Any) -> None:
    held = HeldUpstream()
    server = await aiohttp_server(held.app())
    config = make_config({"limits": {"max_in_flight": 1}}, {"LLM_BASE_URL": f"http://127.0.0.1:{server.port}/v1"})
    client = await aiohttp_client(create_app(config))
    first = asyncio.get_running_loop().create_task(client.post("/v1/chat/completions", json=CHAT))
    await asyncio.wait_for(held.arrived.acquire(), 5)
    second = await client.post("/v1/chat/completions", json=CHAT)
    assert second.status == 503
    assert second.headers["Retry-After"] == "1"
    assert (await second.json())["error"]["code"] == "overloaded"
    assert (await client.get("/api/v1/llm/status")).status == 200  # operations endpoints are not limited
    held.release.set()
    assert (await first).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_a_full_upstream_is_passed_over_then_503(aiohttp_client: Any, aiohttp_server: Any) -> None:
    held, spare = HeldUpstream(), FakeUpstream()
    held_server, spare_server = await aiohttp_server(held.app()), await aiohttp_server(spare.app())
    upstreams = [
        {"name": "busy", "base_url": f"http://127.0.0.1:{held_server.port}/v1", "max_in_flight": 1},
        {"name": "spare", "base_url": f"http://127.0.0.1:{spare_server.port}/v1", "priority": 1},
    ]
    client = await aiohttp_client(create_app(make_config({"upstreams": upstreams, "health": {"interval_s": 60}})))
    first = asyncio.get_running_loop().create_task(client.post("/v1/chat/completions", json=CHAT))
    await asyncio.wait_for(held.arrived.acquire(), 5)
    overflow = await client.post("/v1/chat/completions", json=CHAT)
    assert overflow.status == 200 and overflow.headers["X-Airgap-Upstream"] == "spare"

    alone = await aiohttp_client(create_app(make_config({"upstreams": upstreams[:1], "health": {"interval_s": 60}})))
    second = asyncio.get_running_loop().create_task(alone.post("/v1/chat/completions", json=CHAT))
    await asyncio.wait_for(held.arrived.acquire(), 5)
    refused = await alone.post("/v1/chat/completions", json=CHAT)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["error"]["code"] == "overloaded" and "'busy'" in body["error"]["message"]
    held.release.set()
    assert (await first).status == 200 and (await second).status == 200


async def test_an_upstream_silent_between_chunks_ends_the_stream_with_upstream_timeout(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, base = upstream
    fake.stream_chunks, fake.chunk_delay_s = 3, 2.0
    client = await aiohttp_client(create_app(make_config({"timeouts": {"upstream_s": 0.3}}, {"LLM_BASE_URL": base})))
    started = time.monotonic()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    events = [e for e in (await resp.read()).split(b"\n\n") if e]
    assert b"tok0" in events[0]
    assert json.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 1.5


BIG_BYTES = 50 * 1024 * 1024


async def big_response(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = BIG_BYTES
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(BIG_BYTES // len(chunk)):
        await response.write(chunk)
    await response.write_eof()
    return response


async def small_response(request: web.Request) -> web.Response:
    return web.Response(body=b"ok")


async def test_a_50_mb_response_streams_through_without_growing_memory(
    aiohttp_server: Any,
    tmp_path: Path,
    proxies: list[ServedProxy],  # noqa: F811 - the fixture
) -> None:
    upstream_app = web.Application()
    upstream_app.router.add_get("/v1/files/big", big_response)
    upstream_app.router.add_get("/v1/files/small", small_response)
    upstream = await aiohttp_server(upstream_app)
    config = write_config(
        tmp_path / "proxy.yaml",
        {
            "health": {"interval_s": 60},
            "upstreams": [{"name": "u", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}],
        },
    )
    proxy = await serve(config)
    proxies.append(proxy)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}/v1/files/small") as resp:
            assert await resp.read() == b"ok"
        before = proxy.vm("VmRSS")
        received = 0
        async with session.get(f"{proxy.url}/v1/files/big") as resp:
            assert resp.status == 200
            # A slow reader first: without back-pressure the proxy would buffer the upstream's answer.
            await asyncio.sleep(0.5)
            async for chunk in resp.content.iter_chunked(1 << 20):
                received += len(chunk)
        peak = proxy.vm("VmHWM")
    assert received == BIG_BYTES
    growth = peak - before
    print(f"proxy RSS before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB")
    assert growth < 30 * 2**20, growth
