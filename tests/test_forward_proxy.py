"""The forward-proxy backstop: ``CONNECT`` tunnels and absolute-form requests, judged by the policy.

Real sockets throughout: raw ``CONNECT`` lines, httpx and the openai SDK with
an explicit proxy, and Debian's ``curl -x``, through the proxy to loopback
upstreams (a TLS one tunnelled end to end). Listeners on 127.0.0.2 stand for
the outside world and must see nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import trustme
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from airgap_proxy import policy
from airgap_proxy.api.tunnel import IDLE, UPSTREAM_CLOSED, Tunnel
from airgap_proxy.app import create_app
from tests.conftest import PROXY_ENV_VARS, FakeResolver, make_config
from tests.fakes import FakeUpstream
from tests.test_policy import ADDRESS_CASES, DENY_LIST_CASES, NOTATION_CASES
from tests.test_serve import ROOT

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}
ONLY_LOOPBACK_1 = {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}


def proxy_config(forward: dict[str, Any] | None = None, policy: dict[str, Any] | None = None, **env: str) -> Any:
    raw: dict[str, Any] = {"forward_proxy": {"enabled": True, **(forward or {})}}
    if policy is not None:
        raw["policy"] = policy
    return make_config(raw, env)


@dataclass
class Echo:
    """A TCP listener that echoes, and records every connection and byte it gets."""

    host: str
    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)


@pytest.fixture
async def echo() -> AsyncIterator[Any]:
    servers: list[asyncio.AbstractServer] = []

    async def start(host: str = "127.0.0.1") -> Echo:
        rec = Echo(host)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            rec.connections += 1
            while data := await reader.read(65536):
                rec.received += data
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(on_connect, host, 0)
        rec.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return rec

    yield start
    for server in servers:
        server.close()


async def start_proxy(aiohttp_server: Any, config: Any, resolver: Any = None) -> Any:
    return await aiohttp_server(create_app(config, resolver=resolver))


async def raw_request(port: int, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send ``head`` to the proxy; return the streams and the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, response


async def read_body(reader: asyncio.StreamReader, head: bytes) -> dict[str, Any]:
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    body: dict[str, Any] = json.loads(await reader.readexactly(length))
    return body


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def audits(logs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e) for e in logs if e["event"] == "request" and "host" in e]


async def audit_of(logs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The one forward-proxy audit event, once the tunnel has ended (it is emitted then)."""
    async with asyncio.timeout(5):
        while not audits(logs):
            await asyncio.sleep(0.01)
    [event] = audits(logs)
    return event


def connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


# --- CONNECT over a raw socket ------------------------------------------------------------------


async def test_connect_tunnels_bytes_both_ways_and_audits_the_counts(aiohttp_server: Any, echo: Any) -> None:
    upstream = await echo()
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [upstream.port]}))
    with capture_logs() as logs:
        reader, writer, head = await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}"))
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
        writer.write(b"ping" * 1000)
        assert await reader.readexactly(4000) == b"ping" * 1000
        writer.close()
        event = await audit_of(logs)
    assert upstream.connections == 1
    assert event["method"] == "CONNECT"
    assert (event["host"], event["port"], event["decision"], event["verdict"]) == (
        "127.0.0.1",
        upstream.port,
        "forward",
        "local",
    )
    assert (event["bytes_up"], event["bytes_down"], event["status"]) == (4000, 4000, 200)
    assert event["category"] is None and event["duration_ms"] > 0
    assert event["addresses"] == ["127.0.0.1"] and event["route"] == "forward_proxy"
    assert "ping" not in json.dumps(event)


async def test_bytes_sent_with_the_connect_head_are_not_lost(aiohttp_server: Any, echo: Any) -> None:
    upstream = await echo()
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [upstream.port]}))
    reader, writer, head = await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}") + b"early bytes")
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(11) == b"early bytes"
    writer.close()


async def test_a_half_close_is_passed_on_and_the_answer_still_comes_back(aiohttp_server: Any, echo: Any) -> None:
    upstream = await echo()
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [upstream.port]}))
    reader, writer, _ = await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}"))
    writer.write(b"last words")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"last words"  # then EOF: the upstream closed
    writer.close()


async def test_back_pressure_stops_reading_from_a_client_the_upstream_cannot_keep_up_with(
    aiohttp_server: Any,
) -> None:
    """An upstream that never reads: the proxy must stop reading the client, not buffer without end."""
    accepted: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await asyncio.sleep(30)

    stuck = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = stuck.sockets[0].getsockname()[1]
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [port]}))
    _reader, writer, _ = await raw_request(server.port, connect(f"127.0.0.1:{port}"))
    chunk = b"x" * 65536
    sent = 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(3):
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
    # Kernel buffers on three sockets plus two transport high-water marks: a few MiB at most.
    assert 0 < sent < 32 * 1024 * 1024
    writer.transport.abort()
    for accepted_writer in accepted:
        accepted_writer.transport.abort()
    stuck.close()
    await stuck.wait_closed()


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        pytest.param("api.openai.com:443", "host api.openai.com is on the deny list (hosted LLM API)", id="hosted api"),
        pytest.param("API.OpenAI.com.:443", "host api.openai.com is on the deny list", id="hosted api case and dot"),
        pytest.param(
            "statsig.anthropic.com:443", "host statsig.anthropic.com is on the deny list (agent-tool", id="telemetry"
        ),
        pytest.param("o4501.ingest.us.sentry.io:443", "(agent-tool telemetry", id="sentry ingest"),
        pytest.param("ab.chatgpt.com:443", "Codex CLI experiments", id="codex experiments"),
        pytest.param("metadata.google.internal:80", "cloud metadata service", id="metadata name"),
        pytest.param("169.254.169.254:80", "in deny_networks", id="metadata address"),
        pytest.param("0.0.0.0:443", "address 0.0.0.0 of host 0.0.0.0 is not in allow_networks", id="0.0.0.0"),
        pytest.param("user@localhost:443", "invalid URL: URL contains userinfo", id="userinfo"),
        pytest.param("localhost:22", "port 22 is not in forward_proxy.allow_ports (80, 443)", id="port"),
    ],
)
async def test_refused_targets_are_403_and_never_resolved(aiohttp_server: Any, target: str, reason: str) -> None:
    resolver = FakeResolver({})
    server = await start_proxy(aiohttp_server, proxy_config(), resolver)
    with capture_logs() as logs:
        reader, writer, head = await raw_request(server.port, connect(target))
        body = await read_body(reader, head)
        assert await reader.read() == b""  # and the connection is closed
    writer.close()
    assert head.startswith(b"HTTP/1.1 403 ")
    assert header(head, "X-Airgap-Error") == "airgap_violation"
    assert reason in (header(head, "X-Airgap-Reason") or "")
    assert body["error"]["code"] == "airgap_violation" and reason in body["error"]["message"]
    assert resolver.calls == []
    [event] = audits(logs)
    assert event["decision"] == "block" and event["status"] == 403 and event["reason"]


async def test_telemetry_is_labelled_in_the_audit_and_the_metric(aiohttp_server: Any) -> None:
    server = await start_proxy(
        aiohttp_server, proxy_config({"telemetry_hosts": ["*.phone-home.test"]}), FakeResolver({})
    )
    with capture_logs() as logs:
        for target in ("statsig.anthropic.com:443", "x.phone-home.test:443", "api.openai.com:443"):
            _, writer, _ = await raw_request(server.port, connect(target))
            writer.close()
    assert [e["category"] for e in audits(logs)] == ["telemetry", "telemetry", None]
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
    assert 'airgap_proxy_forward_proxy_total{category="telemetry",decision="block"} 2.0' in text
    assert 'airgap_proxy_forward_proxy_total{category="none",decision="block"} 1.0' in text


async def test_outside_forms_open_no_connection(aiohttp_server: Any, echo: Any) -> None:
    """Only 127.0.0.1 is local: a listener on 127.0.0.2 stands for the outside and sees nothing."""
    outside = await echo("127.0.0.2")
    resolver = FakeResolver({"outside.test": ["127.0.0.2"], "rebind.test": ["127.0.0.2"]})
    config = proxy_config({"allow_ports": [outside.port]}, ONLY_LOOPBACK_1)
    server = await start_proxy(aiohttp_server, config, resolver)
    forms = [
        f"127.0.0.2:{outside.port}",
        f"2130706434:{outside.port}",
        f"0x7f.0.0.2:{outside.port}",
        f"0177.0.0.02:{outside.port}",
        f"127.2:{outside.port}",
        f"[::ffff:127.0.0.2]:{outside.port}",
        f"[::ffff:7f00:2]:{outside.port}",
        f"outside.test:{outside.port}",
        f"user:pw@127.0.0.1:{outside.port}",
        f"0.0.0.0:{outside.port}",
    ]
    for form in forms:
        _reader, writer, head = await raw_request(server.port, connect(form))
        assert head.startswith(b"HTTP/1.1 403 "), form
        writer.close()
    assert outside.connections == 0
    assert resolver.calls == ["outside.test"]  # resolved once, through the egress path, and refused


async def test_an_allow_listed_name_is_still_pinned_at_connect_time(aiohttp_server: Any, echo: Any) -> None:
    outside = await echo("127.0.0.2")
    resolver = FakeResolver({"svc.internal.test": ["127.0.0.2"]})
    policy = {"allow_networks": ["127.0.0.1/32"], "allow_hosts": ["*.internal.test"]}
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [outside.port]}, policy), resolver)
    _, writer, head = await raw_request(server.port, connect(f"svc.internal.test:{outside.port}"))
    writer.close()
    assert head.startswith(b"HTTP/1.1 403 ")
    assert "127.0.0.2" in (header(head, "X-Airgap-Reason") or "")
    assert outside.connections == 0


async def test_a_name_resolves_once_and_the_checked_address_is_the_one_connected(
    aiohttp_server: Any, echo: Any
) -> None:
    """A rebinding name: the first answer is checked and used; the second (outside) is never asked for."""
    upstream = await echo()
    outside = await echo("127.0.0.2")
    resolver = FakeResolver({"ollama.test": [["127.0.0.1"], ["127.0.0.2"]]})
    config = proxy_config({"allow_ports": [upstream.port]}, ONLY_LOOPBACK_1)
    server = await start_proxy(aiohttp_server, config, resolver)
    reader, writer, head = await raw_request(server.port, connect(f"ollama.test:{upstream.port}"))
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"hi")
    assert await reader.readexactly(2) == b"hi"
    writer.close()
    assert resolver.calls == ["ollama.test"]
    assert (upstream.connections, outside.connections) == (1, 0)


async def test_report_only_tunnels_and_records_would_block(aiohttp_server: Any, echo: Any) -> None:
    outside = await echo("127.0.0.2")
    config = proxy_config({"allow_ports": [outside.port]}, ONLY_LOOPBACK_1, AISOC_AIRGAPPED="false")
    server = await start_proxy(aiohttp_server, config)
    with capture_logs() as logs:
        reader, writer, head = await raw_request(server.port, connect(f"127.0.0.2:{outside.port}"))
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        writer.close()
        event = await audit_of(logs)
    assert (event["decision"], event["verdict"]) == ("would_block", "external")
    assert event["reason"] == "address 127.0.0.2 of host 127.0.0.2 is not in allow_networks"
    assert outside.connections == 1


async def test_report_only_still_enforces_allow_ports(aiohttp_server: Any) -> None:
    server = await start_proxy(aiohttp_server, proxy_config(AISOC_AIRGAPPED="false"))
    _, writer, head = await raw_request(server.port, connect("127.0.0.1:22"))
    writer.close()
    assert head.startswith(b"HTTP/1.1 403 ")


async def test_an_idle_tunnel_is_closed_and_audited(aiohttp_server: Any, echo: Any) -> None:
    upstream = await echo()
    config = proxy_config({"allow_ports": [upstream.port], "idle_timeout_s": 0.3})
    server = await start_proxy(aiohttp_server, config)
    with capture_logs() as logs:
        reader, writer, _ = await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}"))
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 < time.monotonic() - started < 3
        writer.close()
        event = await audit_of(logs)
    assert event["error"] == IDLE


async def test_an_upstream_that_hangs_up_at_once_ends_the_tunnel_at_once(aiohttp_server: Any) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = rude.sockets[0].getsockname()[1]
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [port]}))
    with capture_logs() as logs:
        reader, writer, head = await raw_request(server.port, connect(f"127.0.0.1:{port}"))
        assert head.startswith(b"HTTP/1.1 200")
        async with asyncio.timeout(2):  # not aiohttp's 10 s linger
            assert await reader.read() == b""
        writer.close()
        event = await audit_of(logs)
    assert event["error"] == "upstream closed" and event["route"] == "forward_proxy"
    rude.close()


async def test_a_tunnel_whose_upstream_left_before_it_was_attached_closes_the_client(echo: Any) -> None:
    peer = await echo()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", peer.port)
    tunnel = Tunnel(loop, 60)
    tunnel.upstream.connection_lost(None)
    tunnel.attach(transport, b"")
    assert transport.is_closing()
    assert await asyncio.wait_for(tunnel.wait(), 1) == UPSTREAM_CLOSED


async def test_an_unreachable_local_target_is_502(aiohttp_server: Any) -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [dead_port]}))
    _reader, writer, head = await raw_request(server.port, connect(f"127.0.0.1:{dead_port}"))
    writer.close()
    assert head.startswith(b"HTTP/1.1 502 ")
    assert header(head, "X-Airgap-Error") == "upstream_error"


async def test_tunnels_count_towards_max_in_flight(aiohttp_server: Any, echo: Any) -> None:
    upstream = await echo()
    config = make_config(
        {"forward_proxy": {"enabled": True, "allow_ports": [upstream.port]}, "limits": {"max_in_flight": 1}}
    )
    server = await start_proxy(aiohttp_server, config)
    _, first, head = await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}"))
    assert head.startswith(b"HTTP/1.1 200")
    _, second, head = await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}"))
    assert head.startswith(b"HTTP/1.1 503 ")
    assert header(head, "X-Airgap-Error") == "overloaded"
    second.close()
    first.close()


async def test_the_v1_api_keeps_serving_while_tunnels_are_open(aiohttp_server: Any, echo: Any) -> None:
    upstream = await echo()
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [upstream.port]}))
    tunnels = [await raw_request(server.port, connect(f"127.0.0.1:{upstream.port}")) for _ in range(5)]
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and resp.headers["X-Airgap-Upstream"] == "deterministic"
    for reader, writer, _ in tunnels:
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        writer.close()


async def test_shutdown_drain_closes_open_tunnels_cleanly(echo: Any) -> None:
    upstream = await echo()
    config = make_config(
        {
            "forward_proxy": {"enabled": True, "allow_ports": [upstream.port]},
            "timeouts": {"shutdown_grace_s": 0.3},
        }
    )
    runner = web.AppRunner(create_app(config), handler_cancellation=True, shutdown_timeout=0.3)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with capture_logs() as logs:
        reader, writer, _ = await raw_request(port, connect(f"127.0.0.1:{upstream.port}"))
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 2
        assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    [event] = audits(logs)
    assert event["status"] == 200 and event["error"] == "closed by the shutdown drain"


# --- absolute-form ------------------------------------------------------------------------------


async def test_absolute_form_is_forwarded_through_the_egress_client(aiohttp_server: Any) -> None:
    fake = FakeUpstream()
    target = await aiohttp_server(fake.app())
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [target.port]}))
    with capture_logs() as logs:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{server.port}") as client:
            resp = await client.post(
                f"http://127.0.0.1:{target.port}/v1/chat/completions", json=CHAT, headers={"X-Custom": "kept"}
            )
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Hello from upstream"
    [received] = fake.received
    assert received.headers["X-Custom"] == "kept"
    assert "Proxy-Connection" not in received.headers
    [event] = audits(logs)
    assert (event["decision"], event["host"], event["bytes_down"] > 0) == ("forward", "127.0.0.1", True)


async def test_absolute_form_redirects_are_relayed_never_followed(aiohttp_server: Any, echo: Any) -> None:
    outside = await echo("127.0.0.2")

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"http://127.0.0.2:{outside.port}/"})

    app = web.Application()
    app.router.add_get("/", redirect)
    target = await aiohttp_server(app)
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [target.port, outside.port]}))
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{server.port}") as client:
        resp = await client.get(f"http://127.0.0.1:{target.port}/")
    assert resp.status_code == 302
    assert outside.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://api.openai.com/v1/models", id="hosted api"),
        pytest.param("http://statsig.anthropic.com/v1/rgstr", id="telemetry"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="metadata"),
        pytest.param("http://user@127.0.0.1/v1/models", id="userinfo"),
    ],
)
async def test_absolute_form_refusals_are_403_without_resolution(aiohttp_server: Any, url: str) -> None:
    resolver = FakeResolver({})
    server = await start_proxy(aiohttp_server, proxy_config(), resolver)
    reader, writer, head = await raw_request(server.port, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    body = await read_body(reader, head)
    writer.close()
    assert head.startswith(b"HTTP/1.1 403 ")
    assert header(head, "X-Airgap-Error") == "airgap_violation" and header(head, "X-Airgap-Reason")
    assert body["error"]["code"] == "airgap_violation"
    assert resolver.calls == []


async def test_absolute_form_for_the_proxy_itself_is_served_here(aiohttp_server: Any) -> None:
    server = await start_proxy(aiohttp_server, make_config({}))
    head = f"GET http://127.0.0.1:{server.port}/healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    _, writer, response = await raw_request(server.port, head)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200 ")


# --- disabled (the default) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(connect("127.0.0.1:443"), id="connect"),
        pytest.param(b"GET http://127.0.0.1:9/v1/models HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n", id="absolute"),
        pytest.param(b"GET http://example.test/healthz HTTP/1.1\r\nHost: example.test\r\n\r\n", id="our path"),
    ],
)
async def test_disabled_forward_proxy_answers_405(aiohttp_server: Any, echo: Any, head: bytes) -> None:
    resolver = FakeResolver({})
    server = await start_proxy(aiohttp_server, make_config({}), resolver)
    reader, writer, response = await raw_request(server.port, head)
    body = await read_body(reader, response)
    writer.close()
    assert response.startswith(b"HTTP/1.1 405 ")
    assert header(response, "X-Airgap-Error") == "method_not_allowed"
    assert body["error"]["code"] == "method_not_allowed"
    assert "forward_proxy.enabled" in body["error"]["message"]
    assert resolver.calls == []


# --- real clients through the proxy -------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_upstream(aiohttp_server: Any, ca: trustme.CA) -> Any:
    """A fake OpenAI upstream speaking TLS on 127.0.0.1, for ``localhost``."""
    fake = FakeUpstream()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = await aiohttp_server(fake.app(), ssl=context)
    return fake, server.port


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_httpx_tunnels_tls_end_to_end(aiohttp_server: Any, tls_upstream: Any, ca: trustme.CA) -> None:
    fake, port = tls_upstream
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [port]}))
    with capture_logs() as logs:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{server.port}", verify=client_tls(ca)) as client:
            resp = await client.post(f"https://localhost:{port}/v1/chat/completions", json=CHAT)
            again = await client.get(f"https://localhost:{port}/v1/models")
        assert resp.status_code == 200 and again.status_code == 200
        assert (len(fake.received), fake.probes) == (1, ["/v1/models"])  # both over one tunnel (keep-alive in TLS)
        event = await audit_of(logs)
    assert event["host"] == "localhost" and event["rule"] == "allow_network"
    assert event["bytes_up"] > 0 and event["bytes_down"] > 0


async def test_httpx_gets_the_refusal_as_a_proxy_error(aiohttp_server: Any) -> None:
    server = await start_proxy(aiohttp_server, proxy_config(), FakeResolver({}))
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{server.port}") as client:
        with pytest.raises(httpx.ProxyError, match="403"):
            await client.get("https://api.openai.com/v1/models")


async def test_openai_sdk_through_the_proxy(
    aiohttp_server: Any, tls_upstream: Any, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's own HTTP client: an explicit proxy to a local TLS server, and ``HTTPS_PROXY`` for a hosted one."""
    fake, port = tls_upstream
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [port]}), FakeResolver({}))
    proxy = f"http://127.0.0.1:{server.port}"
    http_client = openai.DefaultAsyncHttpxClient(proxy=proxy, verify=client_tls(ca))
    local = openai.AsyncOpenAI(
        base_url=f"https://127.0.0.1:{port}/v1", api_key="sk-local", http_client=http_client, max_retries=0
    )
    async with local:
        completion = await local.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello"}])
    assert completion.choices[0].message.content == "Hello from upstream"
    assert len(fake.received) == 1

    monkeypatch.setenv("HTTPS_PROXY", proxy)
    async with openai.AsyncOpenAI(api_key="sk-hosted", max_retries=0) as hosted:
        with pytest.raises(openai.APIConnectionError):
            await hosted.models.list()
    assert len(fake.received) == 1


@pytest.fixture
def curl() -> Iterator[str]:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (.ci/run installs Debian's)")
    yield path


async def run_curl(curl: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        curl, "--silent", "--show-error", "--noproxy", "", *args, stdout=-1, stderr=-1, env={"PATH": "/usr/bin:/bin"}
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_curl_tunnels_tls_and_is_refused_for_hosted_names(
    aiohttp_server: Any, tls_upstream: Any, ca: trustme.CA, curl: str, tmp_path: Any
) -> None:
    fake, port = tls_upstream
    resolver = FakeResolver({"localhost": ["127.0.0.1"]})
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [port]}), resolver)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    proxy = f"http://127.0.0.1:{server.port}"
    status, out, err = await run_curl(curl, "-x", proxy, "--cacert", str(bundle), f"https://localhost:{port}/v1/models")
    assert status == 0, err
    assert json.loads(out)["object"] == "list" and fake.probes == ["/v1/models"]
    status, _out, err = await run_curl(curl, "-x", proxy, "https://api.openai.com/v1/models")
    assert status != 0 and "403" in err
    status, out, _err = await run_curl(curl, "-x", proxy, "http://api.openai.com/v1/models")
    assert status == 0 and json.loads(out)["error"]["code"] == "airgap_violation"
    assert resolver.calls == ["localhost"]


# --- the real server: uvloop, the connection cap, the drain on SIGTERM --------------------------


async def test_serve_tunnels_releases_connections_and_drains_on_sigterm(echo: Any, tmp_path: Any) -> None:
    upstream = await echo()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "airgap-proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "forward_proxy": {"enabled": True, "allow_ports": [upstream.port]},
                "limits": {"max_connections": 2},
                "timeouts": {"shutdown_grace_s": 0.5},
                "logging": {"format": "json"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "airgap_proxy", "serve", "--config", str(config), "--port", str(port),
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(15):
            while True:
                try:
                    _, probe = await asyncio.open_connection("127.0.0.1", port)
                    probe.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        # More tunnels, one after the other, than the cap: each closed one gives its connection back.
        for index in range(5):
            reader, writer, head = await raw_request(port, connect(f"127.0.0.1:{upstream.port}"))
            assert head.startswith(b"HTTP/1.1 200"), index
            writer.write(b"round %d" % index)
            assert await reader.readexactly(7) == b"round %d" % index
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.05)
        reader, writer, head = await raw_request(port, connect(f"127.0.0.1:{upstream.port}"))
        assert head.startswith(b"HTTP/1.1 200")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # the drain closed the open tunnel
        writer.close()
        _out, err = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    tunnels = [e for e in events if e["event"] == "request" and e.get("method") == "CONNECT"]
    assert len(tunnels) == 6
    assert [e["error"] for e in tunnels[:5]] == ["client closed"] * 5
    assert tunnels[5]["error"] == "closed by the shutdown drain" and tunnels[5]["status"] == 200
    assert not [e for e in events if e.get("level") == "error"]


# --- the policy's deny corpus, through CONNECT --------------------------------------------------


def _authority(url: str) -> str:
    rest = url.split("//", 1)[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    has_port = re.search(r":\d+$", authority) is not None
    return authority if has_port else f"{authority}:443"


REFUSED_CORPUS = [
    pytest.param(_authority(str(case.values[0])), *case.values[1:], id=case.id)
    for case in DENY_LIST_CASES + NOTATION_CASES + ADDRESS_CASES
    if case.values[1] is not policy.Verdict.LOCAL and str(case.values[0]).isascii()
]


@pytest.mark.parametrize(("target", "verdict", "rule", "reason"), REFUSED_CORPUS)
async def test_the_policy_deny_corpus_is_refused_over_connect(
    aiohttp_server: Any, target: str, verdict: policy.Verdict, rule: policy.Rule, reason: str
) -> None:
    resolver = FakeResolver({})
    port = int(target.rsplit(":", 1)[1])
    server = await start_proxy(aiohttp_server, proxy_config({"allow_ports": [port]}), resolver)
    _reader, writer, head = await raw_request(server.port, connect(target))
    writer.close()
    if verdict is policy.Verdict.INVALID and head.startswith(b"HTTP/1.1 400 "):
        return  # aiohttp's own parser refused the request line first
    assert head.startswith(b"HTTP/1.1 403 "), target
    assert reason in (header(head, "X-Airgap-Reason") or "")
    assert resolver.calls == []
