"""The lean HTTP/1.1 client, against raw servers on 127.0.0.1 that script every byte.

Each test owns the wire: a :class:`RawServer` runs one script per accepted
connection, counts connections and records every request it reads, so the
client's framing, keep-alive, retry and timeout behaviour is observed from
the other end of a real socket. Requests go through :class:`EgressClient`,
the public way in.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pytest

from airgap_proxy import policy
from airgap_proxy.egress import EgressClient
from airgap_proxy.egress.http1 import UpstreamResponse
from airgap_proxy.errors import UpstreamError, UpstreamTimeout

# A defect must fail a test, not hang it: waits the client does not bound itself get this.
GUARD_S = 4.0
pytestmark = pytest.mark.timeout(15)

ONLY_127_0_0_1 = policy.Rules(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),), allow_hosts=())
LIMIT = 1 << 24


def ok(body: bytes = b"ok") -> bytes:
    """A keep-alive 200 with a Content-Length body."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    """``parts`` as a chunked body, terminated (``trailer`` lines end with CRLF)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n" + trailer + b"\r\n"


def head_fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of a raw request, in order, names as sent."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = []
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields.append((name, value.strip()))
    return fields


def values(raw: bytes, name: str) -> list[str]:
    return [value for field_name, value in head_fields(raw) if field_name.lower() == name.lower()]


@dataclass
class Peer:
    """One accepted connection, as its script sees it."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer
    requests: list[bytes] = field(default_factory=list)

    async def read_request(self) -> bytes | None:
        """The next request (head and Content-Length body), or None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for name, value in head_fields(head):
            if name.lower() == "content-length":
                length = int(value)
        try:
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        raw = head + body
        self.requests.append(raw)
        self.server.requests.append(raw)
        return raw

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def dribble(self, data: bytes, every_s: float) -> None:
        """Send ``data`` one byte at a time, stopping when the client hangs up."""
        for i in range(len(data)):
            if self.reader.at_eof() or self.writer.is_closing():
                return
            await self.send(data[i : i + 1])
            await asyncio.sleep(every_s)

    def reset(self) -> None:
        """Hang up abortively: the client sees a connection reset, not an end of stream."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def client_closed(self) -> bool:
        """Wait until the client closes its side; True when it did (FIN or reset)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        return True


Script = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1:0 running ``script`` for each connection."""

    script: Script
    port: int = 0
    connections: int = 0
    peers: list[Peer] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    server: asyncio.Server | None = None

    def url(self, path: str = "/v1/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        peer = Peer(self.connections, reader, writer, self)
        self.peers.append(peer)
        try:
            await self.script(peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a broken script must fail its test, not vanish in a task
            self.errors.append(exc)
        finally:
            writer.close()
            with suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self.tasks.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


@dataclass
class Wire:
    """Starts raw servers and records what the event loop reports (protocol callbacks that crashed)."""

    servers: list[RawServer] = field(default_factory=list)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    async def server(self, script: Script) -> RawServer:
        raw = RawServer(script)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        raw.port = raw.server.sockets[0].getsockname()[1]
        self.servers.append(raw)
        return raw

    def take_loop_errors(self) -> list[str]:
        messages = [str(context.get("message")) for context in self.loop_errors]
        self.loop_errors.clear()
        return messages


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    loop = asyncio.get_running_loop()
    wire = Wire()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: wire.loop_errors.append(context))
    yield wire
    for raw in wire.servers:
        await raw.close()
    loop.set_exception_handler(previous)
    assert [raw.errors for raw in wire.servers if raw.errors] == []
    assert wire.take_loop_errors() == []


ClientFactory = Callable[..., Awaitable[EgressClient]]


@pytest.fixture
async def make_client(wire: Wire) -> AsyncIterator[ClientFactory]:
    """Egress clients allowed to reach 127.0.0.1 only; closed before the servers (``wire``)."""
    made: list[EgressClient] = []

    async def make(read_timeout_s: float = 2.0) -> EgressClient:
        client = EgressClient(ONLY_127_0_0_1, enforce=True, connect_timeout_s=2, read_timeout_s=read_timeout_s)
        await client.start()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> EgressClient:
    return await make_client()


async def get(client: EgressClient, url: str, **kwargs: Any) -> UpstreamResponse:
    return await client.request("GET", url, headers={}, body=None, **kwargs)


async def fetch(client: EgressClient, url: str, method: str = "GET", body: bytes | None = None) -> bytes:
    """One whole request: send, read the body, release."""
    response = await client.request(method, url, headers={}, body=body)
    try:
        return await response.read(LIMIT)
    finally:
        response.release()


async def serve_ok_forever(peer: Peer) -> None:
    """Keep-alive: answer every request on the connection with its ordinal."""
    while await peer.read_request() is not None:
        await peer.send(ok(b"answer %d" % len(peer.server.requests)))


# 1. Content-Length responses


async def test_content_length_response_status_headers_and_body(wire: Wire, client: EgressClient) -> None:
    body = b'{"hello": "world"}'

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            b"HTTP/1.1 201 Created For You\r\n"
            b"Content-Type: Application/JSON ; Charset=UTF-8\r\n"
            b"Set-Cookie: a=1\r\n"
            b"X-Trace: t\r\n"
            b"set-cookie: b=2\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await peer.client_closed()

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert response.status == 201
        assert response.reason == "Created For You"
        assert response.headers.getall("SET-COOKIE") == ["a=1", "b=2"]
        assert response.headers["x-trace"] == "t"
        assert response.headers["content-type"] == "Application/JSON ; Charset=UTF-8"  # as sent
        assert response.content_type == "application/json"
        assert response.content_length == len(body)
        assert await response.read(LIMIT) == body
        assert response.complete
    finally:
        response.release()


async def test_response_head_split_across_reads_is_reassembled(wire: Wire, client: EgressClient) -> None:
    head = b"HTTP/1.1 200 Everything Fine\r\nX-Long-Name: first second\r\nContent-Length: 4\r\n\r\n"

    async def script(peer: Peer) -> None:
        await peer.read_request()
        for i in range(len(head)):  # one segment per byte: every parser callback sees a piece
            await peer.send(head[i : i + 1])
            await asyncio.sleep(0.002)
        await peer.send(b"body")
        await peer.client_closed()

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert response.status == 200
        assert response.headers["X-Long-Name"] == "first second"
        assert await response.read(LIMIT) == b"body"
        assert response.reason == "Everything Fine"
    finally:
        response.release()


# 2. Chunked responses, streamed as they arrive


async def test_chunked_body_is_exact_and_streamed_as_it_arrives(wire: Wire, client: EgressClient) -> None:
    first = b"first chunk"
    rest = [b"%03d:" % i + b"x" * i for i in range(1, 60)]
    go_on = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(first)[:-5])
        await asyncio.wait_for(go_on.wait(), 3)  # the client must hand chunk 1 over before the rest exists
        wire_chunks = [b"%x;ext=%d\r\n%s\r\n" % (len(part), i, part) for i, part in enumerate(rest[:-1])]
        wire_chunks.append(b'%x;name="quoted; value";flag\r\n%s\r\n' % (len(rest[-1]), rest[-1]))
        for piece in wire_chunks:
            await peer.send(piece)
        await peer.send(b"0\r\n\r\n")
        await peer.client_closed()

    server = await wire.server(script)
    response = await get(client, server.url())
    received = b""
    try:
        async for chunk in response.iter_chunks():
            received += chunk
            if len(received) >= len(first):
                go_on.set()
        assert go_on.is_set()
        assert received == first + b"".join(rest)
        assert response.complete
        assert response.content_length is None
    finally:
        response.release()


async def test_body_arriving_in_tiny_pieces_is_intact(wire: Wire, client: EgressClient) -> None:
    parts = [b"alpha", b"", b"beta" * 3, b"gamma"]
    body = chunked(*[part for part in parts if part])

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await peer.dribble(body, 0.002)
        await peer.client_closed()

    server = await wire.server(script)
    assert await fetch(client, server.url()) == b"".join(parts)


# 3. Close-delimited bodies


async def test_close_delimited_body_is_delivered_and_not_reused(wire: Wire, client: EgressClient) -> None:
    body = b"until the end " * 1000

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body)
        # returning closes the connection: that is the end of the body

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert response.content_length is None
        assert await response.read(LIMIT) == body
        assert response.complete
    finally:
        response.release()
    assert await fetch(client, server.url()) == body
    assert server.connections == 2


async def test_close_delimited_body_ended_by_a_reset_is_an_error(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\npart of a body")
        await asyncio.sleep(0.1)  # let the client take the bytes before the reset
        peer.reset()

    server = await wire.server(script)
    with pytest.raises(UpstreamError, match="cut short"):
        await fetch(client, server.url())


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", id="length"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly this\r\n", id="chunked"),
    ],
)
async def test_framed_body_cut_short_by_close_is_an_error(wire: Wire, client: EgressClient, answer: bytes) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)

    server = await wire.server(script)
    response = await get(client, server.url())
    received = b""
    try:
        with pytest.raises(UpstreamError, match="cut short"):
            async for chunk in response.iter_chunks():
                received += chunk
        assert response.body_if_complete() is None
    finally:
        response.release()
    assert received == b"only this"


# 4. Keep-alive


async def test_read_and_released_connection_is_reused(wire: Wire, client: EgressClient) -> None:
    server = await wire.server(serve_ok_forever)
    assert await fetch(client, server.url()) == b"answer 1"
    assert await fetch(client, server.url(), "POST", b"{}") == b"answer 2"
    assert await fetch(client, server.url()) == b"answer 3"
    assert server.connections == 1
    assert len(server.peers[0].requests) == 3


async def test_response_released_before_its_end_closes_the_connection(wire: Wire, client: EgressClient) -> None:
    saw_close = asyncio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            if await peer.client_closed():
                saw_close.set()
        else:
            await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await get(client, server.url())
    async for chunk in response.iter_chunks():
        assert chunk
        break
    response.release()
    await asyncio.wait_for(saw_close.wait(), 3)
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", id="connection close"),
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", id="http/1.0"),
    ],
)
async def test_response_asking_to_close_is_not_reused(wire: Wire, client: EgressClient, answer: bytes) -> None:
    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(answer)

    server = await wire.server(script)
    assert await fetch(client, server.url()) == b"ok"
    assert await fetch(client, server.url()) == b"ok"
    assert server.connections == 2


# 5. Stale connections: resent only when no response byte came back


async def test_reused_connection_closed_before_any_byte_is_retried_once(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await peer.send(ok(b"first"))
            await peer.read_request()  # the idle-close race: read it, hang up without a byte
        else:
            await peer.read_request()
            await peer.send(ok(b"second"))
            await peer.client_closed()

    server = await wire.server(script)
    assert await fetch(client, server.url()) == b"first"
    assert await fetch(client, server.url("/v1/again"), "POST", b'{"n": 2}') == b"second"
    assert server.connections == 2
    _first, second, resent = server.requests
    assert second == resent
    assert second.startswith(b"POST /v1/again HTTP/1.1\r\n")
    assert second.endswith(b'\r\n\r\n{"n": 2}')


async def test_reused_connection_closed_after_part_of_a_response_is_not_retried(
    wire: Wire, client: EgressClient
) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"first"))
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")  # a response began: resending could repeat its effect

    server = await wire.server(script)
    assert await fetch(client, server.url()) == b"first"
    with pytest.raises(UpstreamError) as caught:
        await fetch(client, server.url(), "POST", b"{}")
    assert type(caught.value) is UpstreamError
    assert server.connections == 1
    assert len(server.requests) == 2


async def test_retry_after_a_stale_connection_uses_a_new_connection(wire: Wire, client: EgressClient) -> None:
    both_busy = asyncio.Event()
    busy = 0

    async def script(peer: Peer) -> None:
        nonlocal busy
        if peer.index <= 2:
            await peer.read_request()
            busy += 1
            if busy == 2:
                both_busy.set()
            await asyncio.wait_for(both_busy.wait(), 3)  # two connections in use at once
            await peer.send(ok(b"warm"))
            await peer.read_request()  # then both are closed by the upstream on reuse
        else:
            await serve_ok_forever(peer)

    server = await wire.server(script)
    assert list(await asyncio.gather(fetch(client, server.url()), fetch(client, server.url()))) == [b"warm", b"warm"]
    assert await fetch(client, server.url()) == b"answer 4"  # 3 was lost with the stale connection
    assert server.connections == 3


# 6. A new connection closed before any response byte


async def test_new_connection_closed_before_any_byte_is_not_retried(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()

    server = await wire.server(script)
    with pytest.raises(UpstreamError, match="closed the connection"):
        await fetch(client, server.url())
    assert server.connections == 1
    assert len(server.requests) == 1


# 7. Timeouts


async def test_silent_upstream_is_a_read_timeout(wire: Wire, make_client: ClientFactory) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.client_closed()

    server = await wire.server(script)
    client = await make_client(read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        async with asyncio.timeout(GUARD_S):
            await get(client, server.url())
    assert time.monotonic() - started >= 0.25
    assert server.connections == 1


async def test_a_request_in_flight_keeps_its_timeout_when_the_client_closes(
    wire: Wire, make_client: ClientFactory
) -> None:
    """A configuration reload closes the old client while its requests finish: they must not hang."""

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.client_closed()

    server = await wire.server(script)
    client = await make_client(read_timeout_s=0.3)
    loop = asyncio.get_running_loop()
    pending = loop.create_task(get(client, server.url()))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(UpstreamTimeout):
        async with asyncio.timeout(GUARD_S):
            await pending


async def test_body_stalling_midway_is_a_read_timeout(wire: Wire, make_client: ClientFactory) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await peer.client_closed()

    server = await wire.server(script)
    client = await make_client(read_timeout_s=0.3)
    response = await get(client, server.url())
    received = b""
    try:
        with pytest.raises(UpstreamTimeout):
            async with asyncio.timeout(GUARD_S):
                async for chunk in response.iter_chunks():
                    received += chunk
    finally:
        response.release()
    assert received == b"x" * 10


@pytest.mark.parametrize("dribbled", ["head", "body"])
async def test_total_timeout_fires_while_bytes_keep_trickling(
    wire: Wire, make_client: ClientFactory, dribbled: str
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"

    async def script(peer: Peer) -> None:
        await peer.read_request()
        if dribbled == "head":
            await peer.dribble(head, 0.1)
        else:
            await peer.send(head)
            await peer.dribble(b"b" * 1000, 0.1)
        await peer.client_closed()

    server = await wire.server(script)
    client = await make_client(read_timeout_s=3.0)  # never reached: a byte comes every 0.1 s
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        async with asyncio.timeout(GUARD_S):
            response = await get(client, server.url(), timeout_s=0.6)
            try:
                await response.read(LIMIT)
            finally:
                response.release()
    elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 2.5  # the total timeout, not the read timeout and not the end of the body


# 8. Informational responses


@pytest.mark.parametrize("together", [True, False], ids=["one write", "separate writes"])
async def test_informational_responses_are_skipped(wire: Wire, client: EgressClient, together: bool) -> None:
    pieces = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nX-Hint: yes\r\n\r\n",
        b"HTTP/1.1 200 Final\r\nX-Final: 1\r\nContent-Length: 5\r\n\r\nfinal",
    ]

    async def script(peer: Peer) -> None:
        await peer.read_request()
        if together:
            await peer.send(b"".join(pieces))
        else:
            for piece in pieces:
                await peer.send(piece)
                await asyncio.sleep(0.02)
        await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert response.status == 200
        assert response.reason == "Final"
        assert dict(response.headers) == {"X-Final": "1", "Content-Length": "5"}
        assert await response.read(LIMIT) == b"final"
    finally:
        response.release()
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="bare"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
            id="with upgrade headers",
        ),
    ],
)
async def test_switching_protocols_is_an_error(wire: Wire, client: EgressClient, answer: bytes) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)
        await peer.client_closed()

    server = await wire.server(script)
    with pytest.raises(UpstreamError, match="switched protocols"):
        await get(client, server.url())
    await asyncio.sleep(0.05)  # let the transport finish closing and report
    assert wire.take_loop_errors() == []  # no protocol callback crashed
    assert server.connections == 1


# 9. Invalid responses


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HELLO\r\n\r\n", id="not http"),
        pytest.param(b"HTTP/1.1 2x0 OK\r\n\r\n", id="bad status"),
        pytest.param(b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", id="bad header"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", id="two content lengths"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            id="length and chunked",
        ),
    ],
)
async def test_invalid_response_is_an_error_and_closes(wire: Wire, client: EgressClient, answer: bytes) -> None:
    closed = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)
        if await peer.client_closed():
            closed.set()

    server = await wire.server(script)
    with pytest.raises(UpstreamError):
        await get(client, server.url())
    await asyncio.wait_for(closed.wait(), 3)
    assert server.connections == 1


async def test_invalid_chunk_midway_fails_the_body(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        if peer.index > 1:
            return await serve_ok_forever(peer)
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await asyncio.sleep(0.05)
        await peer.send(b"zz\r\nnope\r\n")
        await peer.client_closed()

    server = await wire.server(script)
    response = await get(client, server.url())
    received = b""
    try:
        with pytest.raises(UpstreamError, match="invalid"):
            async for chunk in response.iter_chunks():
                received += chunk
    finally:
        response.release()
    assert received == b"abc"
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 2


# 10. Responses without a body


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
        pytest.param(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", id="304 with a length"),
    ],
)
async def test_no_body_statuses_complete_immediately(wire: Wire, client: EgressClient, answer: bytes) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer)
        await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert response.complete
        assert response.body_if_complete() == b""
    finally:
        response.release()
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 1


async def test_head_response_with_a_length_completes_without_a_body(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        if peer.index > 1:
            return await serve_ok_forever(peer)
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n")
        await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await client.request("HEAD", server.url(), headers={}, body=None)
    try:
        assert response.status == 200
        assert response.content_length == 10
        assert response.complete
        assert response.body_if_complete() == b""
    finally:
        response.release()
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 2
    assert server.requests[0].startswith(b"HEAD /v1/x HTTP/1.1\r\n")


# 11. Request framing


async def test_request_framing_is_ours_and_caller_headers_keep_their_order(wire: Wire, client: EgressClient) -> None:
    server = await wire.server(serve_ok_forever)
    caller_headers = [
        ("Host", "evil.example"),
        ("X-Repeat", "one"),
        ("Content-Length", "999"),
        ("transfer-encoding", "chunked"),
        ("Connection", "close"),
        ("Keep-Alive", "timeout=1"),
        ("Upgrade", "h2c"),
        ("TE", "trailers"),
        ("x-repeat", "two"),
        ("Authorization", "Bearer k"),
        ("X-Repeat", "three"),
    ]
    response = await client.request("POST", server.url("/v1/chat?a=1"), headers=caller_headers, body=b"hello")
    try:
        assert await response.read(LIMIT) == b"answer 1"
    finally:
        response.release()
    (raw,) = server.requests
    assert raw.startswith(b"POST /v1/chat?a=1 HTTP/1.1\r\n")
    assert raw.endswith(b"\r\n\r\nhello")
    assert values(raw, "Host") == [f"127.0.0.1:{server.port}"]
    assert values(raw, "Content-Length") == ["5"]
    for name in ("Transfer-Encoding", "Connection", "Keep-Alive", "Upgrade", "TE"):
        assert values(raw, name) == []
    assert [(n, v) for n, v in head_fields(raw) if n.lower() == "x-repeat"] == [
        ("X-Repeat", "one"),
        ("x-repeat", "two"),
        ("X-Repeat", "three"),
    ]
    assert values(raw, "Authorization") == ["Bearer k"]


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [
        pytest.param("GET", None, None, id="GET without body"),
        pytest.param("GET", b"", None, id="GET with empty body"),
        pytest.param("POST", b"", "0", id="POST with empty body"),
        pytest.param("POST", None, "0", id="POST without body"),
        pytest.param("PUT", b"abc", "3", id="PUT with body"),
        pytest.param("DELETE", b"{}", "2", id="DELETE with body"),
    ],
)
async def test_content_length_matches_the_body(
    wire: Wire, client: EgressClient, method: str, body: bytes | None, length: str | None
) -> None:
    server = await wire.server(serve_ok_forever)
    assert await fetch(client, server.url(), method, body) == b"answer 1"
    (raw,) = server.requests
    assert values(raw, "Content-Length") == ([] if length is None else [length])
    assert raw.endswith(b"\r\n\r\n" + (body or b""))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(("X-Evil", "a\r\nX-Smuggled: 1"), id="CRLF in value"),
        pytest.param(("X-Evil", "a\nX-Smuggled: 1"), id="LF in value"),
        pytest.param(("X-Evil", "a\rb"), id="CR in value"),
        pytest.param(("X-Evil", "a\x00b"), id="NUL in value"),
    ],
)
async def test_line_break_in_a_header_is_refused_before_sending(
    wire: Wire, client: EgressClient, header: tuple[str, str]
) -> None:
    server = await wire.server(serve_ok_forever)
    with pytest.raises(UpstreamError, match="line break"):
        await client.request("GET", server.url(), headers=[header], body=None)
    assert server.connections == 0
    assert await fetch(client, server.url()) == b"answer 1"  # the client is still fine


@pytest.mark.parametrize(
    "name",
    ["X-Evil\r\nX-Smuggled", "X-Evil\n", "Content-Length ", "X:Y", "X Y", "", "X\x00", "Ünïcode"],
)
async def test_a_header_name_that_is_not_a_token_is_refused_before_sending(
    wire: Wire, client: EgressClient, name: str
) -> None:
    server = await wire.server(serve_ok_forever)
    with pytest.raises(UpstreamError, match="not an HTTP token"):
        await client.request("GET", server.url(), headers=[(name, "1")], body=None)
    assert server.connections == 0
    assert await fetch(client, server.url()) == b"answer 1"  # the client is still fine


# 12. Back-pressure


async def test_slow_consumer_pauses_reading_and_gets_the_whole_body(wire: Wire, make_client: ClientFactory) -> None:
    body = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(8 * 1024 * 1024 // 32))
    parts = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            await peer.send(b"%x\r\n%s\r\n" % (len(part), part))
        await peer.send(b"0\r\n\r\n")
        await peer.client_closed()

    server = await wire.server(script)
    # Slower than the read timeout: a paused connection is the client's doing, not the upstream's.
    client = await make_client(read_timeout_s=0.5)
    response = await get(client, server.url())
    digest = hashlib.sha256()
    chunks = 0
    try:
        async with asyncio.timeout(GUARD_S):
            async for chunk in response.iter_chunks():
                digest.update(chunk)
                chunks += 1
                if chunks in (2, 5):
                    await asyncio.sleep(0.8)
                    # White-box on purpose: how much the response holds, and whether the
                    # transport stopped reading, is the back-pressure under test.
                    assert response._conn._paused
                    assert response._buffered <= 1024 * 1024
        assert digest.digest() == hashlib.sha256(body).digest()
    finally:
        response.release()


async def test_connection_paused_when_its_response_completed_is_resumed_before_reuse(
    wire: Wire, client: EgressClient
) -> None:
    body = b"z" * (256 * 1024 + 5)  # crosses the high-water mark with its very last bytes

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:-10]))
        await asyncio.sleep(0.1)
        await peer.send(body[-10:])
        await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        for _ in range(200):
            if response.complete:
                break
            await asyncio.sleep(0.01)
        assert response.body_if_complete() == body
    finally:
        response.release()
    await asyncio.sleep(0)  # it rejoins the pool once what arrived while paused has been read
    second = await get(client, server.url(), timeout_s=1.0)
    try:
        assert await second.read(LIMIT) == b"answer 2"
    finally:
        second.release()
    assert server.connections == 1


# 13. read(limit)


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_read_refuses_a_body_over_the_limit(wire: Wire, client: EgressClient, framing: str) -> None:
    body = b"y" * 1000

    async def script(peer: Peer) -> None:
        while await peer.read_request() is not None:
            if framing == "length":
                await peer.send(ok(body))
            else:
                await peer.send(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body[:500], body[500:])
                )

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        with pytest.raises(UpstreamError, match="larger than 999 bytes"):
            await response.read(999)
    finally:
        response.release()
    response = await get(client, server.url())
    try:
        assert await response.read(1000) == body
    finally:
        response.release()


# 14. Redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_returned_as_is_and_never_followed(wire: Wire, client: EgressClient, status: int) -> None:
    target = await wire.server(serve_ok_forever)

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            b"HTTP/1.1 %d Elsewhere\r\nLocation: %s\r\nContent-Length: 5\r\n\r\nmoved"
            % (status, target.url("/next").encode())
        )
        await peer.client_closed()

    server = await wire.server(script)
    response = await client.request("POST", server.url(), headers={}, body=b"{}")
    try:
        assert response.status == status
        assert response.headers["Location"] == target.url("/next")
        assert await response.read(LIMIT) == b"moved"
    finally:
        response.release()
    assert target.connections == 0


# 15. One pool per origin


async def test_origins_never_share_connections(wire: Wire, client: EgressClient) -> None:
    first = await wire.server(serve_ok_forever)
    second = await wire.server(serve_ok_forever)
    for server in (first, second, first, second, first):
        await fetch(client, server.url())
    assert (first.connections, second.connections) == (1, 1)
    assert len(first.peers[0].requests) == 3
    assert len(second.peers[0].requests) == 2
    assert values(second.requests[0], "Host") == [f"127.0.0.1:{second.port}"]


# 16. Closing the client


async def test_close_hangs_up_idle_connections_and_refuses_requests(wire: Wire, client: EgressClient) -> None:
    hung_up = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok())
        if await peer.client_closed():
            hung_up.set()

    server = await wire.server(script)
    assert await fetch(client, server.url()) == b"ok"
    assert not hung_up.is_set()
    await client.close()
    await asyncio.wait_for(hung_up.wait(), 3)
    with pytest.raises(UpstreamError, match="egress client is not running"):
        await get(client, server.url())
    assert server.connections == 1


async def test_response_released_after_close_closes_its_connection(wire: Wire, client: EgressClient) -> None:
    hung_up = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok())
        if await peer.client_closed():
            hung_up.set()

    server = await wire.server(script)
    response = await get(client, server.url())
    assert await response.read(LIMIT) == b"ok"
    await client.close()
    response.release()  # in flight during close: not kept by a closed pool
    await asyncio.wait_for(hung_up.wait(), 3)


# 17. Nothing listening


async def test_connection_refused_is_an_upstream_error(client: EgressClient) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError, match="cannot connect") as caught:
        await get(client, f"http://127.0.0.1:{port}/v1/x")
    assert type(caught.value) is UpstreamError


# Bytes that belong to no response


async def test_chunked_trailers_do_not_leak_into_the_next_response(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(b"data", trailer=b"X-Trailer-One: 1\r\nX-Trailer-Two: 2\r\n")
        )
        await serve_ok_forever(peer)

    server = await wire.server(script)
    assert await fetch(client, server.url()) == b"data"
    response = await get(client, server.url())
    try:
        assert await response.read(LIMIT) == b"answer 2"
        assert dict(response.headers) == {"Content-Length": "8"}
    finally:
        response.release()
    assert server.connections == 1


async def test_bytes_after_a_complete_response_do_not_change_it(wire: Wire, client: EgressClient) -> None:
    async def script(peer: Peer) -> None:
        if peer.index > 1:
            return await serve_ok_forever(peer)
        await peer.read_request()
        await peer.send(ok(b"real") + b"HTTP/1.1 500 Injected\r\nX-Injected: 1\r\nContent-Length: 5\r\n\r\nextra")
        await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert (response.status, response.reason) == (200, "OK")
        assert "X-Injected" not in response.headers
        assert await response.read(LIMIT) == b"real"
    finally:
        response.release()
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 2  # a connection that talked out of turn is not reused


async def test_bytes_arriving_while_idle_are_never_the_next_answer(client: EgressClient) -> None:
    """A late, unsolicited response that reached the socket before the next request was written.

    The upstream runs in a thread and the event loop is held while the stray bytes land, so
    the next request takes the pooled connection before any callback could have read them:
    only a look at the socket itself tells the connection is not quiet.
    """
    leak = threading.Event()
    leaked = threading.Event()
    connections: list[socket.socket] = []

    def serve(listener: socket.socket) -> None:
        with suppress(OSError):
            while True:
                conn, _ = listener.accept()
                connections.append(conn)
                threading.Thread(target=answer, args=(conn, len(connections)), daemon=True).start()

    def answer(conn: socket.socket, index: int) -> None:
        with suppress(OSError), conn:
            reader = conn.makefile("rb")
            while (line := reader.readline()) and line.startswith(b"GET"):
                while reader.readline() not in (b"\r\n", b""):
                    pass
                conn.sendall(ok(b"answer on connection %d" % index))
                if index == 1 and leak.wait(GUARD_S):
                    conn.sendall(ok(b"LEAKED"))
                    leaked.set()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/x"
        assert await fetch(client, url) == b"answer on connection 1"
        leak.set()
        assert leaked.wait(GUARD_S)
        time.sleep(0.05)  # holds the loop: the stray bytes wait unread in the kernel
        assert await fetch(client, url) == b"answer on connection 2"
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


# Response head limits: an upstream cannot make the proxy hold (or relay) an unbounded head

HUGE = 16 * 1024 * 1024


def fields(count: int, size: int = 10) -> bytes:
    """``count`` header lines of ``size`` bytes each (name, ": ", value)."""
    return b"".join(b"X-F%04d: %s\r\n" % (i, b"v" * (size - 9)) for i in range(count))


async def stream_until_hung_up(peer: Peer, start: bytes, filler: bytes, total: int, end: bytes) -> int:
    """Send ``start``, then ``filler`` up to ``total`` bytes, then ``end``; the bytes written before a hang-up."""
    # A small send buffer: what was written is close to what the client took in.
    peer.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    written = 0
    try:
        await peer.send(start)
        while written < total:
            await peer.send(filler)
            written += len(filler)
        await peer.send(end)
        await peer.client_closed()
    except ConnectionError:
        pass
    return written


async def test_a_huge_header_line_is_refused_before_its_end(wire: Wire, client: EgressClient) -> None:
    written: list[int] = []

    async def script(peer: Peer) -> None:
        await peer.read_request()
        start, end = b"HTTP/1.1 200 OK\r\nX-Huge: ", b"\r\nContent-Length: 2\r\n\r\nok"
        written.append(await stream_until_hung_up(peer, start, b"h" * 65536, HUGE, end))

    server = await wire.server(script)
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamError, match="upstream response head is larger than 65536 bytes"):
            await get(client, server.url())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for _ in range(200):
        if written:
            break
        await asyncio.sleep(0.01)
    assert written and written[0] < HUGE // 8  # the client hung up long before the head ended
    assert peak < 2 * 1024 * 1024, f"{peak} bytes held while refusing the head"


def answer_with(head: bytes) -> bytes:
    """A keep-alive 200 whose head carries the header lines ``head``."""
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: 2\r\n\r\nok" % head


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(answer_with(fields(128)), "more than 128 header fields", id="too many fields"),
        pytest.param(answer_with(fields(1, 8191)), "header line is longer than 8190 bytes", id="one line too long"),
        pytest.param(answer_with(fields(9, 8000)), "head is larger than 65536 bytes", id="head too large"),
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\n%s\r\n%s" % (fields(100), answer_with(fields(30))),
            "more than 128 header fields",
            id="informational heads count",
        ),
    ],
)
async def test_a_head_over_a_limit_is_refused_and_the_connection_closed(
    wire: Wire, client: EgressClient, answer: bytes, error: str
) -> None:
    closed = asyncio.Event()

    async def script(peer: Peer) -> None:
        if peer.index > 1:
            return await serve_ok_forever(peer)
        await peer.read_request()
        await peer.send(answer)
        if await peer.client_closed():
            closed.set()

    server = await wire.server(script)
    with pytest.raises(UpstreamError, match=error):
        await get(client, server.url())
    await asyncio.wait_for(closed.wait(), GUARD_S)
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 2


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(fields(127), id="128 fields with Content-Length"),
        pytest.param(fields(1, 8190), id="a line of 8190 bytes"),
        pytest.param(fields(8, 8000), id="a head just under 64 KiB"),
    ],
)
async def test_a_head_at_the_limits_is_relayed_and_reused(wire: Wire, client: EgressClient, head: bytes) -> None:
    async def script(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer_with(head))
        await serve_ok_forever(peer)

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        assert len(response.headers) == head.count(b"\r\n") + 1
        assert await response.read(LIMIT) == b"ok"
    finally:
        response.release()
    assert await fetch(client, server.url()) == b"answer 2"
    assert server.connections == 1


async def test_a_huge_trailer_fails_the_body_before_its_end(wire: Wire, client: EgressClient) -> None:
    written: list[int] = []

    async def script(peer: Peer) -> None:
        await peer.read_request()
        start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"data")[:-2] + b"X-Huge: "
        written.append(await stream_until_hung_up(peer, start, b"t" * 65536, HUGE, b"\r\n\r\n"))

    server = await wire.server(script)
    response = await get(client, server.url())
    try:
        with pytest.raises(UpstreamError, match="upstream response trailer section is larger than 65536 bytes"):
            await response.read(LIMIT)
    finally:
        response.release()
    for _ in range(200):
        if written:
            break
        await asyncio.sleep(0.01)
    assert written and written[0] < HUGE // 8
