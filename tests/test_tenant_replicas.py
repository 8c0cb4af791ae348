"""Gateway replicas on one PostgreSQL database: real ``airgap-proxy serve`` processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeUpstream
from tests.postgres_server import PASSWORD, PASSWORD_IN_URL, PostgresServer
from tests.test_admin import ADMIN, ADMIN_TOKEN, SECRET_KEY, provider
from tests.test_operations import ServedProxy, start_proxy, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]
CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
REFRESH_S = 0.5


@pytest.fixture
async def replicas(tmp_path: Path, postgres: PostgresServer, pg_database: str) -> AsyncIterator[list[ServedProxy]]:
    """Start replicas with :func:`start` (appended here); all are killed at the end."""
    started: list[ServedProxy] = []
    yield started
    for proxy in started:
        await proxy.stop()
    for proxy in started:
        logged = "\n".join(proxy.stderr)
        assert PASSWORD not in logged and PASSWORD_IN_URL not in logged


async def start(
    replicas: list[ServedProxy], tmp_path: Path, url: str, *, name: str, max_stale_s: float = 5.0
) -> ServedProxy:
    config = write_config(
        tmp_path / f"{name}.yaml",
        {"tenants": {"store_url_env": "AIRGAP_PROXY_TENANT_DB", "refresh_s": REFRESH_S, "max_stale_s": max_stale_s}},
    )
    env = {
        "AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIRGAP_PROXY_SECRET_KEY": SECRET_KEY,
        "AIRGAP_PROXY_TENANT_DB": url,
    }
    proxy = await start_proxy("--config", str(config), cwd=tmp_path, env=env, timeout=30)
    replicas.append(proxy)
    return proxy


async def upstream_of(
    session: aiohttp.ClientSession, proxy: ServedProxy, tenant: str, *, refused_ok: bool = False
) -> str:
    async with session.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"X-Tenant-ID": tenant}) as resp:
        if refused_ok and resp.status == 503:
            return resp.headers["X-Airgap-Error"]
        assert resp.status == 200, await resp.text()
        return resp.headers["X-Airgap-Upstream"]


async def wait_upstream(
    session: aiohttp.ClientSession, proxy: ServedProxy, tenant: str, expected: str, *, refused_ok: bool = False
) -> float:
    """Seconds until ``proxy`` routes ``tenant`` to ``expected`` (``refused_ok``: 503s meanwhile are fine)."""
    began = time.monotonic()
    while (seen := await upstream_of(session, proxy, tenant, refused_ok=refused_ok)) != expected:
        assert time.monotonic() - began < 10, f"{tenant} still routed to {seen}"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_a_change_through_one_replica_is_served_by_the_other_within_refresh_s(
    aiohttp_server: Any, tmp_path: Path, postgres: PostgresServer, pg_database: str, replicas: list[ServedProxy]
) -> None:
    upstream = await aiohttp_server(FakeUpstream().app())
    url = postgres.url(pg_database)
    a = await start(replicas, tmp_path, url, name="a")
    b = await start(replicas, tmp_path, url, name="b")
    async with aiohttp.ClientSession() as session:
        put_url = a.url + "/api/v1/tenants/team-a/llm-provider"
        async with session.put(put_url, json=provider(f"http://127.0.0.1:{upstream.port}/v1"), headers=ADMIN) as resp:
            assert resp.status == 201
        assert await upstream_of(session, a, "team-a") == "tenant:team-a"  # at once on the writer
        assert await wait_upstream(session, b, "team-a", "tenant:team-a") < REFRESH_S + 1.0

        async with session.delete(b.url + "/api/v1/tenants/team-a/llm-provider", headers=ADMIN) as resp:
            assert resp.status == 204
        assert await wait_upstream(session, a, "team-a", "deterministic") < REFRESH_S + 1.0

        # Concurrent writes through both replicas: every one lands, both replicas agree.
        base = f"http://127.0.0.1:{upstream.port}/v1"

        async def put(proxy: ServedProxy, tenant: str, model: str) -> int:
            path = f"{proxy.url}/api/v1/tenants/{tenant}/llm-provider"
            async with session.put(path, json=provider(base, model=model), headers=ADMIN) as resp:
                return resp.status

        writes = [put(p, f"t{i % 10}", f"m-{p.port}-{i}") for i in range(40) for p in (a, b)]
        assert set(await asyncio.gather(*writes)) <= {200, 201}
        await asyncio.sleep(REFRESH_S * 3)
        views = []
        for proxy in (a, b):
            async with session.get(proxy.url + "/api/v1/tenants", headers=ADMIN) as resp:
                views.append({p["tenant"]: p["model"] for p in (await resp.json())["data"]})
        assert views[0] == views[1] and sorted(views[0]) == [f"t{i}" for i in range(10)]
        for tenant, model in views[0].items():
            for proxy in (a, b):
                async with session.get(
                    proxy.url + "/api/v1/llm/status", params={"tenant": tenant}, headers=ADMIN
                ) as resp:
                    assert (await resp.json())["model"] == model

        # A restarted replica serves the tenants from the start.
        await a.stop()
        replicas.remove(a)
        again = await start(replicas, tmp_path, url, name="a")
        assert await upstream_of(session, again, "t3") == "tenant:t3"


async def test_the_database_stopped_and_started_under_load(
    aiohttp_server: Any, tmp_path: Path, postgres: PostgresServer, pg_database: str, replicas: list[ServedProxy]
) -> None:
    upstream = await aiohttp_server(FakeUpstream().app())
    url = postgres.url(pg_database)
    a = await start(replicas, tmp_path, url, name="a", max_stale_s=1.5)
    b = await start(replicas, tmp_path, url, name="b", max_stale_s=1.5)
    seen: Counter[tuple[str, int, str]] = Counter()
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        put_url = a.url + "/api/v1/tenants/team-a/llm-provider"
        async with session.put(put_url, json=provider(f"http://127.0.0.1:{upstream.port}/v1"), headers=ADMIN) as resp:
            assert resp.status == 201
        await wait_upstream(session, b, "team-a", "tenant:team-a")

        async def load(proxy: ServedProxy, tenant: bool) -> None:
            headers = {"X-Tenant-ID": "team-a"} if tenant else {}
            while not stop.is_set():
                async with session.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
                    code = resp.headers.get("X-Airgap-Error", "")
                    seen["tenant" if tenant else "plain", resp.status, code] += 1
                await asyncio.sleep(0.01)

        loaders = [asyncio.ensure_future(load(p, t)) for p in (a, b) for t in (True, False)]
        try:
            recovered_s = await _outage(session, postgres, a, b, seen)
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)
    assert all(p.process.returncode is None for p in (a, b))
    assert {k for k in seen if k[0] == "plain"} == {("plain", 200, "")}, seen
    assert {k for k in seen if k[0] == "tenant"} == {("tenant", 200, ""), ("tenant", 503, "tenant_store_unavailable")}
    assert recovered_s < 15
    for proxy in (a, b):
        await proxy.event("tenant_store_connected")


async def _outage(
    session: aiohttp.ClientSession,
    postgres: PostgresServer,
    a: ServedProxy,
    b: ServedProxy,
    seen: Counter[tuple[str, int, str]],
) -> float:
    """Stop the database until tenant requests are refused, start it again: seconds until both serve tenants."""
    await asyncio.sleep(0.5)
    postgres.stop()
    try:
        began = time.monotonic()
        while seen["tenant", 503, "tenant_store_unavailable"] == 0:
            assert time.monotonic() - began < 15, seen
            await asyncio.sleep(0.1)
        for proxy in (a, b):
            while True:
                async with session.get(proxy.url + "/readyz") as resp:
                    assert resp.status == 200
                    store = (await resp.json())["tenant_store"]
                if not store["serving"]:
                    break
                assert time.monotonic() - began < 15, store
                await asyncio.sleep(0.1)
            assert store["reason"] and store["connected"] is False
        await asyncio.sleep(1.0)
    finally:
        postgres.start()
    began = time.monotonic()
    for proxy in (a, b):
        await wait_upstream(session, proxy, "team-a", "tenant:team-a", refused_ok=True)
    return time.monotonic() - began


async def test_three_replicas_starting_together_create_the_schema_once(
    tmp_path: Path, postgres: PostgresServer, pg_database: str, replicas: list[ServedProxy]
) -> None:
    url = postgres.url(pg_database)
    started = await asyncio.gather(*(start(replicas, tmp_path, url, name=f"r{i}") for i in range(3)))
    async with aiohttp.ClientSession() as session:
        for proxy in started:
            async with session.get(proxy.url + "/readyz") as resp:
                store = (await resp.json())["tenant_store"]
            assert store["serving"] is True and store["connected"] is True, store
    for proxy in started:
        assert not [e for e in proxy.events if e.get("event") == "tenant_store_unavailable"], proxy.stderr
    assert postgres.psql(pg_database, "SELECT schema_version, revision FROM airgap_proxy_meta").strip() == "1|0"
    tables = postgres.psql(pg_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    assert tables.split() == ["airgap_proxy_meta", "tenant_providers"]
