"""Failover with real upstream servers on loopback, stopped and restarted mid-run."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from airgap_proxy.app import create_app
from airgap_proxy.state import STATE
from airgap_proxy.upstreams import probe_once
from airgap_proxy.upstreams.health import HealthStatus
from tests.conftest import BlackHole, make_config
from tests.fakes import FakeUpstream

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
INTERVAL = 0.2


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_failover_to_backup_then_fallback_then_back(aiohttp_server: Any, aiohttp_client: Any) -> None:
    fake_a, fake_b = FakeUpstream(), FakeUpstream()
    server_a = await aiohttp_server(fake_a.app())
    server_b = await aiohttp_server(fake_b.app())
    port_a = server_a.port
    config = make_config(
        {
            "upstreams": [
                {"name": "a", "provider_type": "local-vllm", "base_url": f"http://127.0.0.1:{port_a}/v1"},
                {"name": "b", "base_url": f"http://127.0.0.1:{server_b.port}/v1", "priority": 1},
            ],
            "health": {"interval_s": INTERVAL, "timeout_s": 0.5, "unhealthy_after": 1, "healthy_after": 1},
        }
    )
    client = await aiohttp_client(create_app(config))

    async def served_by() -> str:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200, await resp.text()
        await resp.read()
        return str(resp.headers["X-Airgap-Upstream"])

    assert [await served_by() for _ in range(3)] == ["a", "a", "a"]

    await server_a.close()  # A stops mid-run: the very next request is retried on B
    assert [await served_by() for _ in range(3)] == ["b", "b", "b"]

    await server_b.close()  # B stops too: the deterministic fallback answers
    assert [await served_by() for _ in range(3)] == ["deterministic"] * 3
    status = await (await client.get("/api/v1/llm/status")).json()
    assert status["fallback_active"] is True
    assert {u["name"]: u["health"] for u in status["upstreams"]} == {"a": "unhealthy", "b": "unhealthy"}

    revived = await aiohttp_server(fake_a.app(), port=port_a)  # A comes back on its port
    assert revived.port == port_a

    async def a_is_back() -> bool:
        status = await (await client.get("/api/v1/llm/status")).json()
        return bool(status["upstream"] == "a" and status["reachable"])

    await wait_for(a_is_back, timeout=10 * INTERVAL)
    assert await served_by() == "a"


async def test_5xx_before_first_byte_is_retried_once(aiohttp_server: Any, aiohttp_client: Any) -> None:
    broken, good = FakeUpstream(status=503), FakeUpstream()
    server_1 = await aiohttp_server(broken.app())
    server_2 = await aiohttp_server(good.app())
    config = make_config(
        {
            "upstreams": [
                {"name": "broken", "base_url": f"http://127.0.0.1:{server_1.port}/v1"},
                {"name": "good", "base_url": f"http://127.0.0.1:{server_2.port}/v1", "priority": 1},
            ],
            "health": {"interval_s": 60},
        }
    )
    client = await aiohttp_client(create_app(config))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "fallbacks": ["https://api.openai.com"]})
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "good"
    assert len(broken.received) == 1 and len(good.received) == 1
    # client-supplied routing hints are never used, and never reach a gateway upstream
    assert "fallbacks" not in good.received[0].json()
    assert good.received[0].json()["messages"] == CHAT["messages"]


async def test_failover_never_reaches_a_refused_upstream(
    aiohttp_server: Any, aiohttp_client: Any, recorder: Any
) -> None:
    outside = await recorder("127.0.0.2")
    config = make_config(
        {
            "policy": {"allow_networks": ["127.0.0.1/32"]},
            "upstreams": [
                {"name": "local", "base_url": "http://127.0.0.1:9/v1"},
                {"name": "outside", "base_url": f"http://127.0.0.2:{outside.port}/v1", "priority": 1},
            ],
            "health": {"interval_s": 60},
        }
    )
    client = await aiohttp_client(create_app(config))
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert resp.headers["X-Airgap-Upstream"] == "deterministic"
    assert outside.connections == 0


async def test_fallback_mode_error_gives_503_with_retry_after(aiohttp_client: Any) -> None:
    config = make_config({"fallback": {"mode": "error"}})
    client = await aiohttp_client(create_app(config))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 503
    assert resp.headers["Retry-After"].isdigit()
    assert (await resp.json())["error"]["code"] == "no_healthy_upstream"
    assert (await client.get("/readyz")).status == 503
    forced = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Airgap-Mode": "deterministic"})
    assert forced.status == 200
    assert forced.headers["X-Airgap-Upstream"] == "deterministic"


def black_hole_config(hole: BlackHole, backup: str | None, **health: Any) -> Any:
    upstreams: list[dict[str, Any]] = [{"name": "primary", "base_url": f"http://127.0.0.1:{hole.port}/v1"}]
    if backup is not None:
        upstreams.append({"name": "backup", "base_url": backup, "priority": 1})
    return make_config(
        {
            "upstreams": upstreams,
            "timeouts": {"connect_s": 0.2},
            "health": {"interval_s": 60, "timeout_s": 0.5, "unhealthy_after": 2, **health},
        }
    )


async def test_a_connect_timeout_fails_over_and_counts_against_health(
    aiohttp_server: Any, aiohttp_client: Any, black_hole: BlackHole
) -> None:
    fake = FakeUpstream()
    backup = await aiohttp_server(fake.app())
    client = await aiohttp_client(create_app(black_hole_config(black_hole, f"http://127.0.0.1:{backup.port}/v1")))
    served = []
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200, await resp.text()
        served.append(resp.headers["X-Airgap-Upstream"])
    # Nothing was sent to the primary, so the backup may answer; after two
    # failures the primary is down and is not even tried.
    assert served == ["backup"] * 4
    status = await (await client.get("/api/v1/llm/status")).json()
    assert {u["name"]: u["health"] for u in status["upstreams"]}["primary"] == "unhealthy"
    assert len(fake.received) == 4


async def test_a_connect_timeout_reaches_the_fallback(aiohttp_client: Any, black_hole: BlackHole) -> None:
    client = await aiohttp_client(create_app(black_hole_config(black_hole, None)))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Airgap-Upstream"] == "deterministic"


async def test_a_probe_that_cannot_connect_counts_while_requests_are_in_flight(black_hole: BlackHole) -> None:
    # A busy single-slot server still accepts connections: only a slow answer is excused.
    config = black_hole_config(black_hole, None, unhealthy_after=1)
    state_app = create_app(config)
    runner = web.AppRunner(state_app)
    await runner.setup()
    try:
        state = state_app[STATE]
        runtime = state.pool.runtimes["primary"]
        runtime.in_flight = 1
        await probe_once(state.pool, state.egress, runtime)
        assert runtime.health.status is HealthStatus.UNHEALTHY
        assert runtime.health.last_error is not None
    finally:
        await runner.cleanup()


async def test_a_read_timeout_is_not_retried_on_the_next_upstream(aiohttp_server: Any, aiohttp_client: Any) -> None:
    # The primary took the request and may be generating: sending it again elsewhere would run it twice.
    handlers: list[asyncio.Task[Any]] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(5)
        finally:
            writer.close()  # also when the test ends first and the handler is cancelled

    stalled = await asyncio.start_server(stall, "127.0.0.1", 0)
    fake = FakeUpstream()
    backup = await aiohttp_server(fake.app())
    config = make_config(
        {
            "upstreams": [
                {"name": "primary", "base_url": f"http://127.0.0.1:{stalled.sockets[0].getsockname()[1]}/v1"},
                {"name": "backup", "base_url": f"http://127.0.0.1:{backup.port}/v1", "priority": 1},
            ],
            "timeouts": {"upstream_s": 0.3},
            "health": {"interval_s": 60},
        }
    )
    client = await aiohttp_client(create_app(config))
    try:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
        assert fake.received == []
    finally:
        stalled.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
