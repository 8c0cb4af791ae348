"""Fault injection: real misbehaving upstreams on loopback, the proxy as a real process.

The upstreams here are raw asyncio servers speaking just enough HTTP/1.1 to
misbehave in ways aiohttp would not let a server misbehave (reset before the
headers, reset inside a chunked stream, stall, malformed SSE, one 10 MB chunk).
They run on their own event loop in a thread; the proxy runs as
``python -m airgap_proxy serve`` so that its memory (VmRSS) and open file
descriptors can be read from ``/proc/<pid>`` before and after each fault.

For every fault the client gets a clean OpenAI error envelope, or a stream that
ends cleanly with ``data: {"error": ...}`` and no ``[DONE]``; a normal request
made while the fault is in progress is served promptly; and the proxy's memory
and descriptors come back to their baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import structlog
from aiohttp import web

from airgap_proxy.app import create_app
from tests.conftest import PROXY_ENV_VARS, FakeResolver, make_config
from tests.fakes import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_TIMEOUT_S = 1.0
BIG_CHUNK = 10 * 1024 * 1024
SLOW_READ_BODY = 256 * 1024
STREAMS = 1000
SLOW_CLIENTS = 500
# Memory may settle a little above where it started (allocator arenas, caches);
# a leak of per-request state shows as a multiple of this.
RSS_SLACK_KB = 12 * 1024
FD_SLACK = 4

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawRequest"], Awaitable[None]]


# --------------------------------------------------------------------------- raw HTTP upstreams


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


async def read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawRequest(method, path, headers, body)


def sse_event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk_event(index: int) -> bytes:
    return sse_event(
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "raw",
            "choices": [{"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": None}],
        }
    )


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)
CHUNKED_END = b"0\r\n\r\n"


def json_response(payload: Any, status: str = "200 OK") -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def chat_completion(text: str = "raw answer") -> dict[str, Any]:
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 1,
        "model": "raw",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    if request.json().get("stream"):
        writer.write(SSE_HEAD + b"".join(chunked(chunk_event(i)) for i in range(3)))
        writer.write(chunked(b"data: [DONE]\n\n") + CHUNKED_END)
    else:
        writer.write(json_response(chat_completion()))
    await writer.drain()


async def reset_before_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    reset(writer)


async def reset_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    writer.write(SSE_HEAD + chunked(chunk_event(0)) + chunked(chunk_event(1)))
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)


async def stall_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    writer.write(SSE_HEAD + chunked(chunk_event(0)))
    await writer.drain()
    await reader.read()  # until the proxy gives up and closes the connection


async def stall_before_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    await reader.read()


async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    """Answers, but only after a delay shorter than ``timeouts.upstream_s``."""
    await asyncio.sleep(UPSTREAM_TIMEOUT_S * 0.4)
    writer.write(SSE_HEAD + chunked(chunk_event(0)))
    await writer.drain()
    await asyncio.sleep(UPSTREAM_TIMEOUT_S * 0.4)
    writer.write(chunked(chunk_event(1)) + chunked(b"data: [DONE]\n\n") + CHUNKED_END)
    await writer.drain()


MALFORMED_SSE = (
    b"data: {not json\n\n",
    b"\xff\xfe\x00 invalid utf-8 and no newline",
    b"event: \n: comment only\n\nretry: x\n\n",
    b"data: " + b"x" * 100_000,
    b'data: {"usage": {"prompt_tokens": 999999999999999999999, "completion_tokens": -1}}\n\n',
    b"data: [DONE]\r\ndata: after done\n\n",
)


async def malformed_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    writer.write(SSE_HEAD + b"".join(chunked(part) for part in MALFORMED_SSE) + CHUNKED_END)
    await writer.drain()


BIG_EVENT = b'data: {"big": "' + b"b" * (BIG_CHUNK - 20) + b'"}\n\n'


async def big_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    writer.write(SSE_HEAD + chunked(BIG_EVENT) + chunked(b"data: [DONE]\n\n") + CHUNKED_END)
    await writer.drain()


async def big_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
    writer.write(json_response(chat_completion("z" * SLOW_READ_BODY)))
    await writer.drain()


@dataclass
class Barrier:
    """Counts streams in flight; the streams finish once ``size`` are open at once."""

    size: int
    open: int = 0
    peak: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)


def concurrent_streams(barrier: Barrier) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: RawRequest) -> None:
        barrier.open += 1
        barrier.peak = max(barrier.peak, barrier.open)
        if barrier.open >= barrier.size:
            barrier.event.set()
        try:
            writer.write(SSE_HEAD + chunked(chunk_event(0)))
            await writer.drain()
            deadline = time.monotonic() + 20
            while not barrier.event.is_set() and time.monotonic() < deadline:
                # SSE comments keep the proxy's read timeout from firing while the others arrive.
                writer.write(chunked(b": waiting\n\n"))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(barrier.event.wait(), UPSTREAM_TIMEOUT_S / 4)
            writer.write(b"".join(chunked(chunk_event(i)) for i in (1, 2)))
            writer.write(chunked(b"data: [DONE]\n\n") + CHUNKED_END)
            await writer.drain()
        finally:
            barrier.open -= 1

    return behave


class RawUpstreams:
    """Raw upstream servers on their own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []
        self.behaviours: dict[int, Behaviour] = {}
        self.handlers: set[asyncio.Task[None]] = set()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def start(self, behaviour: Behaviour) -> int:
        async def serve() -> int:
            async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None
                self.handlers.add(task)
                try:
                    request = await read_request(reader)
                    if request is None:
                        return
                    if request.method == "GET":  # health probes
                        writer.write(json_response({"object": "list", "data": [{"id": "raw", "object": "model"}]}))
                        await writer.drain()
                        return
                    await self.behaviours[port](reader, writer, request)
                except (ConnectionError, OSError):
                    pass
                finally:
                    self.handlers.discard(task)
                    writer.close()

            server = await asyncio.start_server(on_connect, "127.0.0.1", 0, backlog=4096)
            self.servers.append(server)
            port = int(server.sockets[0].getsockname()[1])
            self.behaviours[port] = behaviour
            return port

        return int(self.call(serve()))

    def replace(self, port: int, behaviour: Behaviour) -> None:
        self.behaviours[port] = behaviour

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            for task in list(self.handlers):
                task.cancel()
            await asyncio.sleep(0)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the proxy as a process


@dataclass
class Proxy:
    process: subprocess.Popen[bytes]
    base: str
    upstream_ports: dict[str, int]
    log: Path

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def assert_alive(self) -> None:
        assert self.process.poll() is None, self.log.read_text()[-4000:]


FAULTS: dict[str, Behaviour] = {
    "good": good,
    "reset-early": reset_before_headers,
    "reset-mid": reset_mid_stream,
    "stall-mid": stall_mid_stream,
    "stall-early": stall_before_headers,
    "slow": slow,
    "malformed": malformed_sse,
    "big": big_chunk,
    "big-body": big_body,
    "streams": good,  # replaced by the concurrency test
}


def free_port() -> int:
    return closed_port()


@pytest.fixture(scope="module")
def raw_upstreams() -> Iterator[RawUpstreams]:
    servers = RawUpstreams()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def proxy(raw_upstreams: RawUpstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    ports = {name: raw_upstreams.start(behaviour) for name, behaviour in FAULTS.items()}
    ports["refused"] = closed_port()
    upstreams = [
        {"name": name, "base_url": f"http://127.0.0.1:{port}/v1", "models": [name]} for name, port in ports.items()
    ]
    config = {
        "upstreams": upstreams,
        # Failures must stay failures in these tests, not open the circuit.
        "health": {"interval_s": 3600, "timeout_s": 1, "unhealthy_after": 1_000_000},
        "fallback": {"mode": "error"},
        "timeouts": {"connect_s": 2, "upstream_s": UPSTREAM_TIMEOUT_S},
        "logging": {"format": "json", "level": "warning"},
    }
    workdir = tmp_path_factory.mktemp("faults")
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = workdir / "proxy.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    env["PYTHONPATH"] = str(ROOT)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "airgap_proxy", "serve", "--config", str(path), "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=sink,
            stderr=sink,
        )
    proxy = Proxy(process, f"http://127.0.0.1:{port}", ports, log)
    try:
        deadline = time.monotonic() + 15
        while True:
            proxy.assert_alive()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.05)
        yield proxy
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


# --------------------------------------------------------------------------- client helpers


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def assert_envelope(body: Any, code: str) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "code", "param"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


async def normal_request(session: aiohttp.ClientSession, proxy: Proxy, within_s: float = 5.0) -> float:
    """A healthy request succeeds promptly, whatever else is going on; returns when it finished.

    The bound is loose because the machine may be shared; tests that need "before the fault
    ends" compare the returned time with the fault's own end instead.
    """
    started = time.monotonic()
    async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("good")) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body["choices"][0]["message"]["content"] == "raw answer"
    assert resp.headers["X-Airgap-Upstream"] == "good"
    finished = time.monotonic()
    assert finished - started < within_s
    return finished


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e.strip()]


def assert_stream_ended_with_error(raw: bytes, code: str) -> None:
    parts = events(raw)
    assert b"data: [DONE]" not in parts, raw[-500:]
    last = parts[-1]
    assert last.startswith(b"data: "), raw[-500:]
    assert_envelope(json.loads(last[len(b"data: ") :]), code)


async def wait_settled(proxy: Proxy, rss_kb: int, fds: int, timeout: float = 10.0) -> None:
    """Memory and descriptors come back to (near) their baseline."""
    deadline = time.monotonic() + timeout
    while True:
        proxy.assert_alive()
        now_rss, now_fds = proxy.rss_kb(), proxy.fds()
        if now_rss <= rss_kb + RSS_SLACK_KB and now_fds <= fds + FD_SLACK:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"proxy did not settle: RSS {now_rss} kB (baseline {rss_kb} kB), fds {now_fds} (baseline {fds})"
            )
        await asyncio.sleep(0.2)


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as client:
        yield client


async def run_repeated(
    proxy: Proxy, session: aiohttp.ClientSession, fault: Callable[[], Awaitable[None]], times: int
) -> None:
    """Warm up, take the baseline, run ``fault`` ``times`` times with a normal request alongside, check it settles."""
    await fault()
    await normal_request(session, proxy)
    rss, fds = proxy.rss_kb(), proxy.fds()
    for _ in range(times):
        await asyncio.gather(fault(), normal_request(session, proxy))
    await normal_request(session, proxy)
    await wait_settled(proxy, rss, fds)


# --------------------------------------------------------------------------- the faults


async def test_connection_refused_is_502(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> None:
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("refused")) as resp:
            assert resp.status == 502
            assert_envelope(await resp.json(), "upstream_error")

    await run_repeated(proxy, session, fault, 20)


async def test_connection_refused_falls_back_when_deterministic(aiohttp_client: Any) -> None:
    config = make_config({"upstreams": [{"name": "gone", "base_url": f"http://127.0.0.1:{closed_port()}/v1"}]})
    client = await aiohttp_client(create_app(config))
    resp = await client.post("/v1/chat/completions", json=chat("m"))
    assert resp.status == 200
    assert resp.headers["X-Airgap-Upstream"] == "deterministic"
    assert (await resp.json())["system_fingerprint"] == "fp_airgap_deterministic"


async def test_a_fallback_after_an_upstream_failure_says_why_in_the_audit_event(aiohttp_client: Any) -> None:
    async def reset_on_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        finally:
            reset(writer)

    server = await asyncio.start_server(reset_on_request, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = make_config(
        {"upstreams": [{"name": "flaky", "base_url": f"http://127.0.0.1:{port}/v1"}], "health": {"interval_s": 60}}
    )
    client = await aiohttp_client(create_app(config))
    try:
        with structlog.testing.capture_logs() as logs:
            resp = await client.post("/v1/chat/completions", json=chat("m"))
            assert resp.status == 200
            assert resp.headers["X-Airgap-Upstream"] == "deterministic"
            # Now marked down: the next fallback names the health failure instead.
            for _ in range(5):
                await client.post("/v1/chat/completions", json=chat("m"))
    finally:
        server.close()
    audits = [e for e in logs if e["event"] == "request"]
    first = audits[0]
    assert first["decision"] == "fallback" and first["upstream"] == "deterministic"
    assert first["error"] is not None
    assert first["error"].startswith("upstream flaky failed: ")
    assert first["error_code"] is None  # the client got a 200: not an error sent
    last = audits[-1]
    assert last["decision"] == "fallback"
    assert last["error"] is not None and last["error"].startswith("no upstream available (flaky: ")


async def test_reset_before_headers_is_502(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> None:
        for stream in (False, True):
            async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("reset-early", stream)) as resp:
                assert resp.status == 502
                assert_envelope(await resp.json(), "upstream_error")

    await run_repeated(proxy, session, fault, 20)


async def test_reset_mid_stream_ends_with_an_error_event(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> None:
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("reset-mid", True)) as resp:
            assert resp.status == 200
            raw = await resp.read()  # a cleanly terminated chunked body: no ClientPayloadError
        assert events(raw)[:2] == [chunk_event(0).strip(), chunk_event(1).strip()]
        assert_stream_ended_with_error(raw, "upstream_error")

    await run_repeated(proxy, session, fault, 20)


async def test_stall_mid_stream_times_out_with_an_error_event(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> float:
        started = time.monotonic()
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("stall-mid", True)) as resp:
            assert resp.status == 200
            raw = await resp.read()
        ended = time.monotonic()
        assert UPSTREAM_TIMEOUT_S * 0.9 < ended - started < UPSTREAM_TIMEOUT_S + 5
        assert events(raw)[0] == chunk_event(0).strip()
        assert_stream_ended_with_error(raw, "upstream_timeout")
        return ended

    async def during_stall() -> float:
        await asyncio.sleep(UPSTREAM_TIMEOUT_S / 4)
        return max([await normal_request(session, proxy) for _ in range(3)])

    await fault()
    rss, fds = proxy.rss_kb(), proxy.fds()
    *stalls_ended, normal_done = await asyncio.gather(*(fault() for _ in range(20)), during_stall())
    assert normal_done < min(stalls_ended), "normal requests waited for the stalled streams"
    await wait_settled(proxy, rss, fds)


async def test_stall_before_headers_is_504(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> None:
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("stall-early")) as resp:
            assert resp.status == 504
            assert_envelope(await resp.json(), "upstream_timeout")

    await run_repeated(proxy, session, fault, 1)


async def test_slow_upstream_is_relayed_while_others_are_served(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> float:
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("slow", True)) as resp:
            assert resp.status == 200
            raw = await resp.read()
        assert events(raw) == [chunk_event(0).strip(), chunk_event(1).strip(), b"data: [DONE]"]
        return time.monotonic()

    async def meanwhile() -> float:
        return max([await normal_request(session, proxy) for _ in range(5)])

    await fault()
    rss, fds = proxy.rss_kb(), proxy.fds()
    *slow_ended, normal_done = await asyncio.gather(*(fault() for _ in range(50)), meanwhile())
    assert normal_done < min(slow_ended), "normal requests waited for the slow upstream"
    await wait_settled(proxy, rss, fds)


async def test_malformed_sse_is_relayed_verbatim_and_ends_cleanly(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    """The proxy relays bytes, it does not judge them: nothing crashes and the stream ends."""

    async def fault() -> None:
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("malformed", True)) as resp:
            assert resp.status == 200
            raw = await resp.read()
        assert raw == b"".join(MALFORMED_SSE)

    await run_repeated(proxy, session, fault, 20)


async def test_one_10mb_chunk_is_relayed_whole(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async def fault() -> None:
        async with session.post(f"{proxy.base}/v1/chat/completions", json=chat("big", True)) as resp:
            assert resp.status == 200
            raw = await resp.read()
        assert len(raw) == len(BIG_EVENT) + len(b"data: [DONE]\n\n")
        assert raw.startswith(BIG_EVENT[:100]) and raw.endswith(b'"}\n\ndata: [DONE]\n\n')

    await run_repeated(proxy, session, fault, 5)


async def test_dns_failure_is_a_clean_error(aiohttp_server: Any, session: aiohttp.ClientSession) -> None:
    """A name that does not resolve, or whose lookup times out, is refused (422, fail closed); the app goes on."""

    class TimingOutResolver(FakeResolver):
        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
            if host == "slow-dns.svc.cluster.local":
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            return await super().resolve(host, port, family)

    resolver = TimingOutResolver({"ok.svc.cluster.local": ["127.0.0.1"]})
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    good_port = server.port
    config = make_config(
        {
            "upstreams": [
                {"name": "nxdomain", "base_url": "http://gone.svc.cluster.local:8000/v1", "models": ["nx"]},
                {"name": "slowdns", "base_url": "http://slow-dns.svc.cluster.local:8000/v1", "models": ["slow"]},
                {"name": "ok", "base_url": f"http://ok.svc.cluster.local:{good_port}/v1", "models": ["ok"]},
            ],
            "health": {"interval_s": 3600, "unhealthy_after": 1_000_000},
            "fallback": {"mode": "error"},
        }
    )
    # A plain session: the test client keeps every response, which would look like a leak.
    proxy_server = await aiohttp_server(create_app(config, resolver=resolver))
    url = f"http://127.0.0.1:{proxy_server.port}/v1/chat/completions"

    async def round_trip() -> None:
        for model, host in (("nx", "gone"), ("slow", "slow-dns")):
            async with session.post(url, json=chat(model)) as resp:
                assert resp.status == 422
                body = await resp.json()
            assert_envelope(body, "airgap_violation")
            assert body["error"]["message"] == f"host {host}.svc.cluster.local does not resolve"
        async with session.post(url, json=chat("ok")) as resp:
            assert resp.status == 200, await resp.text()

    await round_trip()
    gc.collect()
    tracemalloc.start()
    try:
        await round_trip()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            await round_trip()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 128 * 1024, f"{after - before} bytes still held after 100 DNS failures"


async def test_1000_concurrent_streams_all_complete(proxy: Proxy, raw_upstreams: RawUpstreams) -> None:
    """1,000 streams open through the proxy at the same moment, and every one ends with [DONE]."""
    port = proxy.upstream_ports["streams"]

    async def burst(size: int) -> Barrier:
        barrier = Barrier(size)
        raw_upstreams.replace(port, concurrent_streams(barrier))
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=40)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

            async def one() -> int:
                async with client.post(f"{proxy.base}/v1/chat/completions", json=chat("streams", True)) as resp:
                    assert resp.status == 200
                    raw = await resp.read()
                data = [e for e in events(raw) if e.startswith(b"data: ")]
                assert data == [chunk_event(i).strip() for i in range(3)] + [b"data: [DONE]"], raw[-300:]
                return 1

            async def check_others() -> None:
                while barrier.peak < size // 2:
                    await asyncio.sleep(0.05)
                await normal_request(client, proxy, within_s=5.0)

            results = await asyncio.gather(*(one() for _ in range(size)), check_others())
        assert sum(r for r in results if r) == size
        return barrier

    await burst(100)
    rss, fds = proxy.rss_kb(), proxy.fds()
    barrier = await burst(STREAMS)
    assert barrier.peak == STREAMS, f"only {barrier.peak} streams were open at once"
    proxy.assert_alive()
    # Many sockets' worth of buffers were live at once: allow the allocator more room.
    deadline = time.monotonic() + 10
    while proxy.fds() > fds + FD_SLACK:
        assert time.monotonic() < deadline, f"{proxy.fds()} descriptors open, baseline {fds}"
        await asyncio.sleep(0.2)
    assert proxy.rss_kb() <= rss + 4 * RSS_SLACK_KB, (proxy.rss_kb(), rss)
    # A second burst must not grow it further: per-stream state is released.
    after_first = proxy.rss_kb()
    await burst(STREAMS)
    await wait_settled(proxy, after_first, fds)


async def test_500_slow_clients_do_not_block_others(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    """Half send their body a trickle at a time, half do not read their answer; others are served promptly."""
    host, port = "127.0.0.1", int(proxy.base.rsplit(":", 1)[1])
    # Long enough that trickling it takes far longer than the test: the senders are held until release.
    body = json.dumps({**chat("good"), "messages": [{"role": "user", "content": "x" * 4000}]}).encode()
    big_request = json.dumps(chat("big-body")).encode()

    def head(path: str, length: int) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
        ).encode()

    release = asyncio.Event()

    async def slow_sender() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head("/v1/chat/completions", len(body)))
            for index in range(0, len(body) - 1, 8):  # a trickle: 8 bytes at a time
                writer.write(body[index : index + 8])
                await writer.drain()
                await asyncio.sleep(0.1)
                if release.is_set():
                    writer.write(body[index + 8 :])
                    break
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), 20)
        finally:
            writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert b"raw answer" in response

    async def slow_reader() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.transport.set_write_buffer_limits(0)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            writer.write(head("/v1/chat/completions", len(big_request)) + big_request)
            await writer.drain()
            await release.wait()
            response = await asyncio.wait_for(reader.read(), 20)
        finally:
            writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert response.count(b"z") >= SLOW_READ_BODY

    await normal_request(session, proxy)
    rss, fds = proxy.rss_kb(), proxy.fds()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(slow_sender()) for _ in range(SLOW_CLIENTS // 2)]
    tasks += [loop.create_task(slow_reader()) for _ in range(SLOW_CLIENTS // 2)]
    try:
        deadline = time.monotonic() + 15
        while proxy.fds() < fds + SLOW_CLIENTS // 2:  # the trickling senders, at least, are connected
            assert time.monotonic() < deadline, f"only {proxy.fds() - fds} slow clients connected"
            await asyncio.sleep(0.1)
        # The slow clients are held until release: finishing now proves nobody waits for them.
        for _ in range(10):
            await normal_request(session, proxy)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for task in tasks:
            task.cancel()
    await normal_request(session, proxy)
    await wait_settled(proxy, rss, fds)


# --------------------------------------------------------------------------- keep-alive upstreams, proxy in process


def served_config(port: int) -> Any:
    return make_config(
        {
            "upstreams": [{"name": "raw", "base_url": f"http://127.0.0.1:{port}/v1", "models": ["raw"]}],
            "health": {"interval_s": 3600, "timeout_s": 1, "unhealthy_after": 1_000_000},
            "fallback": {"mode": "error"},
            "timeouts": {"connect_s": 2, "upstream_s": 5},
        }
    )


def keep_alive_json(payload: Any, head: bytes = b"") -> bytes:
    """A keep-alive JSON 200 with the extra header lines ``head``."""
    body = json.dumps(payload).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        head,
        len(body),
        body,
    )


def header_lines(count: int, size: int) -> bytes:
    """``count`` header lines of ``size`` bytes each (name, ": ", value)."""
    return b"".join(b"X-F%04d: %s\r\n" % (i, b"v" * (size - 9)) for i in range(count))


HUGE_HEAD = 16 * 1024 * 1024


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve_raw() -> Any:
    """Factory: serve a raw handler on 127.0.0.1 in this loop; its port. Every connection ends with the test."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def start(handler: RawHandler) -> int:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                with contextlib.suppress(ConnectionError):
                    await handler(reader, writer)
            finally:
                writer.close()
                tasks.discard(task)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


@dataclass
class HeadUpstream:
    """Answers POSTs with ``head`` lines, or streams a header line of ``HUGE_HEAD`` bytes; counts what it wrote."""

    head: bytes | None
    written: list[int] = field(default_factory=list)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A small send buffer: what was written is close to what the proxy took in.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        while (request := await read_request(reader)) is not None:
            if request.method == "GET" or self.head is not None:
                writer.write(keep_alive_json(chat_completion(), self.head or b""))
                await writer.drain()
                continue
            await self.stream_huge_head(writer)

    async def stream_huge_head(self, writer: asyncio.StreamWriter) -> None:
        written = 0
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: ")
            while written < HUGE_HEAD:
                writer.write(b"h" * 65536)
                await writer.drain()
                written += 65536
            writer.write(b"\r\n" + keep_alive_json(chat_completion()).partition(b"\r\n")[2])
            await writer.drain()
        finally:
            self.written.append(written)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        pytest.param(None, "upstream response head is larger than 65536 bytes", id="one huge line, streamed"),
        pytest.param(header_lines(200, 40), "upstream response has more than 128 header fields", id="too many"),
        pytest.param(header_lines(1, 9000), "header line is longer than 8190 bytes", id="one long line"),
    ],
)
async def test_an_oversized_upstream_head_is_a_502_and_read_no_further(
    aiohttp_server: Any, serve_raw: Any, session: aiohttp.ClientSession, head: bytes | None, message: str
) -> None:
    upstream = HeadUpstream(head)
    proxy = await aiohttp_server(create_app(served_config(await serve_raw(upstream))))
    tracemalloc.start()
    try:
        async with session.post(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", json=chat("raw")) as resp:
            body = await resp.json()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert resp.status == 502, body
    assert_envelope(body, "upstream_error")
    assert message in body["error"]["message"]
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held while refusing an upstream head"
    if head is None:
        for _ in range(200):
            if upstream.written:
                break
            await asyncio.sleep(0.01)
        assert upstream.written and upstream.written[0] < HUGE_HEAD // 8  # the proxy hung up early


async def test_an_upstream_head_just_under_the_limits_is_served(
    aiohttp_server: Any, serve_raw: Any, session: aiohttp.ClientSession
) -> None:
    upstream = HeadUpstream(header_lines(100, 600))  # 60,000 bytes, 102 fields with the framing ones
    proxy = await aiohttp_server(create_app(served_config(await serve_raw(upstream))))
    for _ in range(2):
        async with session.post(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", json=chat("raw")) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["choices"][0]["message"]["content"] == "raw answer"


class LateAnswerUpstream:
    """A keep-alive upstream in a thread that, once told to, writes an unsolicited second answer.

    It runs in a thread with blocking sockets so that it can write while the proxy's event
    loop is held; ``requests`` records (connection, path) for every request it read.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.leak = threading.Event()
        self.leaked = threading.Event()
        self.armed = False
        self.requests: list[tuple[int, str]] = []
        self.connections: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.connections.append(conn)
                threading.Thread(target=self.answer, args=(conn, len(self.connections)), daemon=True).start()

    def answer(self, conn: socket.socket, index: int) -> None:
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as reader:
            while line := reader.readline():
                length = 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                reader.read(length)
                self.requests.append((index, line.split(b" ")[1].decode()))
                # The first POST's connection gets the stray answer. Decided before the
                # answer goes out: the next request (and its leak.set()) may come before
                # this thread runs again.
                stray = line.startswith(b"POST") and not self.armed
                self.armed = self.armed or stray
                conn.sendall(keep_alive_json(chat_completion(f"answer on connection {index}")))
                if stray and self.leak.wait(5):
                    try:
                        conn.sendall(keep_alive_json(chat_completion("LEAKED")))
                    finally:
                        self.leaked.set()  # the held loop must not wait in vain if the write fails

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def late_answer_upstream() -> Iterator[LateAnswerUpstream]:
    upstream = LateAnswerUpstream()
    yield upstream
    upstream.close()


async def test_a_late_unsolicited_answer_never_reaches_the_next_client(
    aiohttp_server: Any, late_answer_upstream: LateAnswerUpstream
) -> None:
    """Client A's answer is followed on its connection by a stray one, while the proxy is busy.

    A middleware holds the event loop (as a loaded proxy is held by other work) for client
    B's request while the stray answer lands, so B's request takes the pooled connection
    before any callback could have read the stray bytes.
    """
    upstream = late_answer_upstream

    @web.middleware
    async def busy(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("X-Client") == "B":
            upstream.leak.set()
            assert upstream.leaked.wait(5)
            time.sleep(0.05)  # holds the loop: the stray bytes wait unread in the kernel
        return cast(web.StreamResponse, await handler(request))

    app = create_app(served_config(upstream.port))
    app.middlewares.insert(0, busy)
    proxy = await aiohttp_server(app)
    url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
    answers = []
    async with aiohttp.ClientSession() as session:
        for client in ("A", "B"):
            async with session.post(url, json=chat("raw"), headers={"X-Client": client}) as resp:
                body = await resp.json()
            assert resp.status == 200, body
            answers.append(body["choices"][0]["message"]["content"])
    posts = [index for index, path in upstream.requests if path == "/v1/chat/completions"]
    assert answers == [f"answer on connection {posts[0]}", f"answer on connection {posts[1]}"]
    assert posts[0] != posts[1]  # B's request went out on a new connection
