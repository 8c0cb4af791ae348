"""Operations: SIGTERM drains in-flight streams, SIGHUP and the admin endpoint reload the configuration.

The signal tests run ``airgap-proxy serve`` as a real process against a fake
upstream served by the test's own event loop; the log lines on its stderr are
the events the tests wait on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from airgap_proxy.config import load_config
from airgap_proxy.state import STATE
from airgap_proxy.upstreams import UpstreamPool
from tests.conftest import PROXY_ENV_VARS, make_config
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, ADMIN_TOKEN
from tests.test_serve import free_port

ROOT = Path(__file__).resolve().parent.parent
STREAM = {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
RELOAD = "/api/v1/admin/reload"


class ServedProxy:
    """``airgap-proxy serve`` in a subprocess; its JSON log lines, as they come."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr.append(line)
            if line.startswith("{"):
                self.events.append(json.loads(line))
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def event(self, name: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        """The ``count``-th log event called ``name`` (waits for it)."""

        def found() -> list[dict[str, Any]]:
            return [e for e in self.events if e.get("event") == name]

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(found()) >= count or self._reader.done())
        assert len(found()) >= count, f"no {name!r} event:\n" + "\n".join(self.stderr)
        return found()[count - 1]

    def vm(self, field: str) -> int:
        """A ``/proc/PID/status`` memory figure in bytes (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field}")

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.kill()
        code = await self.process.wait()
        await self._reader
        return code


async def start_proxy(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, ready: str = "listening", timeout: float = 15
) -> ServedProxy:
    """``airgap-proxy serve --port P ARGS`` on a free port, once ``ready`` is logged."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "airgap_proxy",
        "serve",
        "--port",
        str(port),
        *args,
        cwd=cwd,
        env={**clean, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    proxy = ServedProxy(process, port)
    try:
        await proxy.event(ready, timeout=timeout)
    except BaseException:
        await proxy.stop()
        raise
    return proxy


async def serve(config_path: Path, **env: str) -> ServedProxy:
    return await start_proxy("--config", str(config_path), cwd=config_path.parent, env=env)


@pytest.fixture
async def proxies() -> AsyncIterator[list[ServedProxy]]:
    started: list[ServedProxy] = []
    yield started
    for proxy in started:
        await proxy.stop()


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


async def refused(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def read_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    return [line for line in (await resp.read()).split(b"\n\n") if line]


# --------------------------------------------------------------------------- #
# SIGTERM
# --------------------------------------------------------------------------- #


async def test_sigterm_lets_a_stream_finish_refuses_new_connections_and_exits_0(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    fake = FakeUpstream(stream_chunks=8, chunk_delay_s=0.25)
    upstream = await aiohttp_server(fake.app())
    config = write_config(
        tmp_path / "proxy.yaml",
        {
            "upstreams": [{"name": "slow", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}],
            "timeouts": {"shutdown_grace_s": 8},
        },
    )
    proxy = await serve(config)
    proxies.append(proxy)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json=STREAM) as resp,
    ):
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        assert b"tok0" in first
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        draining = await proxy.event("draining")
        assert draining["in_flight"] == 1
        assert await refused(proxy.port), "a new connection was accepted after SIGTERM"
        rest = await resp.read()
    events = [e for e in (first + rest).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert len(events) == 9  # every chunk, then [DONE]
    assert await asyncio.wait_for(proxy.process.wait(), 10) == 0
    elapsed = time.monotonic() - signalled
    assert elapsed < 8, elapsed
    stopped = await proxy.event("stopped")
    assert stopped["drain_s"] < 8
    [audit] = [e for e in proxy.events if e["event"] == "request"]
    assert audit["status"] == 200 and audit["upstream"] == "slow"


async def test_sigterm_cuts_a_stream_longer_than_the_grace_period(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    fake = FakeUpstream(stream_chunks=40, chunk_delay_s=0.25)
    upstream = await aiohttp_server(fake.app())
    config = write_config(
        tmp_path / "proxy.yaml",
        {
            "upstreams": [{"name": "slow", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}],
            "timeouts": {"shutdown_grace_s": 1},
        },
    )
    proxy = await serve(config)
    proxies.append(proxy)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json=STREAM) as resp,
    ):
        await resp.content.readuntil(b"\n\n")
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        body = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            body = await resp.read()
        assert b"[DONE]" not in body
    assert await asyncio.wait_for(proxy.process.wait(), 10) == 0
    assert time.monotonic() - signalled < 4


# --------------------------------------------------------------------------- #
# SIGHUP
# --------------------------------------------------------------------------- #


async def test_sighup_reloads_the_file_and_a_bad_file_keeps_the_running_config(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    config = write_config(tmp_path / "proxy.yaml", {"health": {"interval_s": 60}})
    proxy = await serve(config)
    proxies.append(proxy)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.headers["X-Airgap-Upstream"] == "deterministic"

        write_config(
            config,
            {
                "health": {"interval_s": 60},
                "upstreams": [{"name": "local", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}],
                "listen": {"port": 1},
            },
        )
        proxy.process.send_signal(signal.SIGHUP)
        reloaded = await proxy.event("config_reloaded")
        assert reloaded["generation"] == 2 and reloaded["upstreams"] == ["local"]
        assert (await proxy.event("config_reload_needs_restart"))["keys"] == ["listen"]
        async with session.post(f"{proxy.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert resp.headers["X-Airgap-Upstream"] == "local"

        config.write_text("upstreams: [{name: local}]\n", encoding="utf-8")
        proxy.process.send_signal(signal.SIGHUP)
        failed = await proxy.event("config_reload_failed")
        assert failed["error"] == "upstreams[0].base_url: is required"
        async with session.post(f"{proxy.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert resp.headers["X-Airgap-Upstream"] == "local"
        async with session.get(f"{proxy.url}/metrics") as resp:
            text = await resp.text()
    assert 'airgap_proxy_config_reloads_total{result="ok"} 1.0' in text
    assert 'airgap_proxy_config_reloads_total{result="error"} 1.0' in text
    proxy.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.process.wait(), 10) == 0


# --------------------------------------------------------------------------- #
# The admin endpoint (in process)
# --------------------------------------------------------------------------- #


def admin_raw(tmp_path: Path, upstreams: list[dict[str, Any]]) -> dict[str, Any]:
    return {"health": {"interval_s": 60}, "tenants": {"store": str(tmp_path / "t.db")}, "upstreams": upstreams}


async def test_reload_swaps_upstreams_while_an_in_flight_stream_finishes_on_the_old_ones(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    old_fake = FakeUpstream(stream_chunks=6, chunk_delay_s=0.1)
    new_fake = FakeUpstream()
    old_server = await aiohttp_server(old_fake.app())
    new_server = await aiohttp_server(new_fake.app())
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    path = write_config(
        tmp_path / "proxy.yaml",
        admin_raw(tmp_path, [{"name": "old", "base_url": f"http://127.0.0.1:{old_server.port}/v1"}]),
    )
    app = create_app(load_config(str(path), env), loader=lambda: load_config(str(path), env))
    client = await aiohttp_client(app)
    old_egress = app[STATE].egress
    with capture_logs() as logs:
        stream = await client.post("/v1/chat/completions", json=STREAM)
        first = await stream.content.readuntil(b"\n\n")
        write_config(path, admin_raw(tmp_path, [{"name": "new", "base_url": f"http://127.0.0.1:{new_server.port}/v1"}]))
        resp = await client.post(RELOAD, headers=ADMIN)
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"reloaded": True, "generation": 2, "restart_needed": []}
        after = await client.post("/v1/chat/completions", json=CHAT)
        assert after.headers["X-Airgap-Upstream"] == "new"
        assert not any(e["event"] == "config_generation_closed" for e in logs), "closed under a running stream"
        rest = await stream.read()
        events = [e for e in (first + rest).split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]" and len(events) == 7
        assert stream.headers["X-Airgap-Upstream"] == "old"
        await asyncio.wait_for(app[STATE].retiring, 5)  # type: ignore[arg-type]
    assert [e["generation"] for e in logs if e["event"] == "config_generation_closed"] == [1]
    assert not old_egress.running  # the old outbound client is closed
    assert len(old_fake.received) == 1 and len(new_fake.received) == 1


async def test_reload_with_a_bad_file_is_400_and_changes_nothing(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], tmp_path: Path
) -> None:
    _fake, base = upstream
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    path = write_config(tmp_path / "proxy.yaml", admin_raw(tmp_path, [{"name": "up", "base_url": base}]))
    app = create_app(load_config(str(path), env), loader=lambda: load_config(str(path), env))
    client = await aiohttp_client(app)
    generation = app[STATE].generation
    path.write_text("limits: {max_in_flight: 0}\n", encoding="utf-8")
    with capture_logs() as logs:
        resp = await client.post(RELOAD, headers=ADMIN)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_config"
    assert "limits.max_in_flight: must be at least 1, got 0" in error["message"]
    assert [e["error"] for e in logs if e["event"] == "config_reload_failed"] == [
        "limits.max_in_flight: must be at least 1, got 0"
    ]
    assert app[STATE].generation is generation
    ok = await client.post("/v1/chat/completions", json=CHAT)
    assert ok.status == 200 and ok.headers["X-Airgap-Upstream"] == "up"


async def test_reload_needs_the_admin_token(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_config(admin_raw(tmp_path, []), {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN})
    client = await aiohttp_client(create_app(config, loader=lambda: config))
    assert (await client.post(RELOAD)).status == 401
    assert (await client.post(RELOAD, headers={"Authorization": "Bearer wrong-token-0123456789"})).status == 403
    no_admin = await aiohttp_client(create_app(make_config({}), loader=make_config))
    assert (await no_admin.post(RELOAD, headers=ADMIN)).status == 404


async def test_reload_keeps_the_health_of_unchanged_upstreams() -> None:
    raw = {
        "upstreams": [
            {"name": "a", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "b", "base_url": "http://127.0.0.1:8/v1"},
        ]
    }
    old = UpstreamPool(make_config(raw))
    old.observe("a", True)
    old.runtimes["a"].in_flight = 3
    changed = {"upstreams": [raw["upstreams"][0], {"name": "b", "base_url": "http://127.0.0.1:7/v1"}]}
    new = UpstreamPool(make_config(changed), previous=old)
    assert new.runtimes["a"] is old.runtimes["a"]
    assert new.runtimes["b"] is not old.runtimes["b"] and new.runtimes["b"].in_flight == 0
    strict = UpstreamPool(make_config({**raw, "policy": {"allow_networks": ["10.0.0.0/8"]}}), previous=old)
    assert strict.runtimes["a"] is not old.runtimes["a"]  # a new verdict: a fresh runtime
