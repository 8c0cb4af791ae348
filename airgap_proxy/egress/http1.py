"""A lean HTTP/1.1 client: one connection protocol and a keep-alive pool.

The hot path of a proxy is its upstream client, so this one does only what
forwarding needs: the request head and body go out in one write; the
response is parsed by llhttp (``httptools``) and its body handed over as it
arrives, with back-pressure (reading pauses while the client is slower).
It never follows redirects, never reads proxy variables, never decompresses.
A response head or trailer section over its limits (``MAX_HEAD_BYTES``,
``MAX_LINE_BYTES``, ``MAX_FIELDS``) fails the request as soon as it is seen,
and the connection is closed.

It opens no connection itself: the pool asks the egress module's connect
function (:mod:`airgap_proxy.egress`, the one chokepoint) for each new one.

Keep-alive: an idle connection is reused most-recent first and dropped after
``idle_s`` (below the 5 s keep-alive timeout of uvicorn, which serves vLLM
and LiteLLM). A reused connection that the upstream closes before sending a
single response byte is the usual idle-close race: the request is sent once
more on a new connection, never after any byte of a response. A connection
that received any byte while idle (a late or unsolicited response) is closed,
never reused: those bytes are no answer to the next request.
"""

from __future__ import annotations

import asyncio
import fcntl
import re
import termios
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import NamedTuple, Protocol, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from airgap_proxy import policy
from airgap_proxy.errors import UpstreamError, UpstreamTimeout

# Framing is ours: these are never taken from the caller's headers.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"})
_HIGH_WATER = 256 * 1024
IDLE_S = 4.0
# RFC 9110 token: what a header name may be. Names repeat, so valid ones are remembered.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKENS_SEEN: set[str] = set()
_TOKENS_CACHE = 4096
# How often timeouts of requests in flight are checked (their resolution).
SWEEP_S = 0.1
# An upstream's response head (every 1xx head before it included) and its trailer
# section are held whole until parsed, so each is bounded: aiohttp's 8190-byte line,
# llhttp-based servers' 64 KiB head (Node's is 16 KiB, nginx's upstream buffer 4-8 KiB),
# and 128 fields. An LLM API's head is 1-2 KiB and 20-40 fields.
MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 8190
MAX_FIELDS = 128
_INVALID = "upstream sent an invalid HTTP response"


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class HeadTooLarge(UpstreamError):
    """An upstream's response head or trailer section is over one of the limits above."""


class StaleConnection(Exception):
    """A reused connection closed before any response byte: safe to send again."""


class UpstreamResponse:
    """An upstream's response: status and headers now, the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_waiter",
        "complete",
        "content_length",
        "content_type",
        "headers",
        "reason",
        "status",
    )

    @property
    def decision(self) -> policy.Decision | None:
        """The egress policy's decision on the connection this response came on."""
        return self._conn.decision

    def __init__(self, conn: Http1Connection) -> None:
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_type = ""
        self.content_length: int | None = None
        self.complete = False
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def body_if_complete(self) -> bytes | None:
        """The whole body, if all of it has already arrived (nothing waits)."""
        if not self.complete or self._error is not None:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; what arrived together is handed over together."""
        chunks = self._chunks
        while True:
            if chunks:
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._conn.resume()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self.complete:
                return
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back to the pool if the body was read to its end, else close it."""
        self._conn.release(self)

    # Fed by the connection.
    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Http1Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream, one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin, pool: Http1Pool) -> None:
        self.loop = loop
        self.origin = origin
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._response: UpstreamResponse | None = None
        self._headers: list[tuple[str, str]] = []
        self._head_waiter: asyncio.Future[None] | None = None
        self._socket: _Socket | None = None
        self._unframed = 0  # bytes fed since the last body bytes: a head or trailer section, bounded
        self._head_bytes = 0
        self._fields = 0
        self._received = False
        self._until_close = False
        self._no_body = False
        self._informational = False
        self._keep_alive = False
        self._paused = False
        self._read_timeout_s = 0.0
        self._deadline: float | None = None
        self._last_read = 0.0
        self.closed = False
        self.idle_since = 0.0
        # The egress policy's decision on this connection's address (set on connect).
        self.decision: policy.Decision | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            self.close()  # nothing was asked: an upstream talking out of turn is not reused
            return
        self._received = True
        self._last_read = self.loop.time()
        self._unframed += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__  # what a callback raised
            self._abort(cause if isinstance(cause, UpstreamError) else UpstreamError(_INVALID))
            return
        except UpstreamError as exc:
            self._abort(exc)
            return
        if self._unframed > MAX_HEAD_BYTES:  # a head or trailer section that has not ended yet
            self._abort(self._too_large())

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.unwatch(self)
        response = self._response
        if response is None or response.complete:
            return
        if self._head_waiter is not None and response.status == 0:
            error: BaseException = (
                StaleConnection() if not self._received else UpstreamError("upstream closed the connection")
            )
            self._set_head(error)
        elif self._until_close and response.status and exc is None:
            response._finish()
        else:
            response._fail(UpstreamError("upstream response was cut short"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        response = self._response
        if response is not None and response.complete:
            # A second response to one request (a desync attempt): the parser stops
            # here, the connection is closed, the complete response stays as it was.
            raise UpstreamError("upstream sent more than one response")

    def on_status(self, status: bytes) -> None:
        assert self._response is not None
        self._response.reason += status.decode("latin-1")  # llhttp may hand it over in pieces
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        line = len(name) + 2 + len(value)
        if line > MAX_LINE_BYTES:
            raise HeadTooLarge(f"upstream response header line is longer than {MAX_LINE_BYTES} bytes")
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise HeadTooLarge(f"upstream response has more than {MAX_FIELDS} header fields")
        self._count_head(line + 2)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self._abort(UpstreamError("upstream switched protocols, which is never relayed"))
                return
            self._informational = True  # 100 Continue, 103 Early Hints: not the answer
            self._headers = []
            response.reason = ""
            return
        headers = CIMultiDict(self._headers)
        self._headers = []
        self._head_bytes = self._fields = 0  # the trailer section, if any, has limits of its own
        response.status = status
        response.headers = CIMultiDictProxy(headers)
        content_type = headers.get("Content-Type", "")
        response.content_type = content_type.partition(";")[0].strip().lower()
        length = headers.get("Content-Length")
        if length is not None and length.isdigit():
            response.content_length = int(length)
        self._until_close = (
            length is None and "Transfer-Encoding" not in headers and status not in (204, 304) and not self._no_body
        )
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message ends
        self._set_head(None)
        if self._no_body or (status in (204, 304)):
            response._finish()

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._unframed = 0
        if not self._no_body:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        self._headers = []  # chunked trailer fields: never relayed, never kept for the next response
        if self._informational:
            self._informational = False
            return
        assert self._response is not None
        self._pool.unwatch(self)
        self._response._finish()

    # For the pool and the response
    async def send(
        self, head: bytes, body: bytes | None, *, no_body: bool, read_timeout_s: float, deadline: float | None
    ) -> UpstreamResponse:
        assert self._transport is not None
        response = UpstreamResponse(self)
        self._response = response
        self._received = False
        self._unframed = self._head_bytes = self._fields = 0
        self._no_body = no_body
        self._until_close = False
        self._keep_alive = False
        self._read_timeout_s = read_timeout_s
        self._deadline = deadline
        self._last_read = self.loop.time()
        self._pool.watch(self)
        self._head_waiter = self.loop.create_future()
        if body:
            self._transport.writelines((head, body))
        else:
            self._transport.write(head)
        try:
            await self._head_waiter
        except BaseException:
            self._response = None
            self.close()
            raise
        finally:
            self._head_waiter = None
        return response

    def release(self, response: UpstreamResponse) -> None:
        if response is not self._response:
            return
        self._response = None
        self._pool.unwatch(self)
        reusable = (
            response.complete
            and response._error is None
            and not self._until_close
            and not self._no_body
            and not self.closed
            and self._keep_alive
        )
        if not reusable:
            self.close()
        elif self._paused:
            # A body that completed while reading was paused: what arrived meanwhile (TLS may
            # hold it decrypted, out of the socket's sight) is read before anyone may reuse it.
            self.resume()
            self.loop.call_soon(self._pool.put, self)
        else:
            self._pool.put(self)

    def is_quiet(self) -> bool:
        """True when nothing has arrived since the last response: an idle connection must be silent.

        Bytes the event loop has not read yet are seen in the socket (one ``ioctl``); bytes it
        has read already closed the connection (:meth:`data_received` without a request).
        """
        if self.closed or self._socket is None:
            return False
        try:
            return fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, _NO_BYTES) == _NO_BYTES
        except OSError:
            return False

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._last_read = self.loop.time()
            self._transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self._pool.unwatch(self)
        if self._transport is not None:
            self._transport.close()

    # Internals
    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise self._too_large()

    def _too_large(self) -> HeadTooLarge:
        response = self._response
        part = "trailer section" if response is not None and response.status else "head"
        return HeadTooLarge(f"upstream response {part} is larger than {MAX_HEAD_BYTES} bytes")

    def _set_head(self, error: BaseException | None) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _abort(self, error: BaseException) -> None:
        response = self._response
        if response is not None:
            if response.status == 0:
                self._set_head(error)
            else:
                response._fail(error)
        self.closed = True
        self._pool.unwatch(self)
        if self._transport is not None:
            self._transport.abort()

    def check_timeout(self, now: float) -> None:
        """Called by the pool's sweep while a request is in flight: reads never touch a timer."""
        response = self._response
        if response is None or response.complete:
            self._pool.unwatch(self)
        elif self._deadline is not None and now >= self._deadline:
            self._abort(UpstreamTimeout("upstream did not answer in time"))
        elif self._paused:
            self._last_read = now  # the client is the slow one
        elif now - self._last_read >= self._read_timeout_s:
            self._abort(UpstreamTimeout("upstream did not answer in time"))


class _Socket(Protocol):
    def fileno(self) -> int: ...


_NO_BYTES = bytes(4)  # FIONREAD's int, as the buffer ioctl fills

Connect = Callable[[Origin, "Http1Pool"], Awaitable[Http1Connection]]


class Http1Pool:
    """Keep-alive connections per origin; new ones come from ``connect``."""

    def __init__(self, connect: Connect, *, read_timeout_s: float, idle_s: float = IDLE_S) -> None:
        self._connect = connect
        self._read_timeout_s = read_timeout_s
        self._idle_s = idle_s
        self._idle: dict[Origin, list[Http1Connection]] = {}
        self._busy: set[Http1Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        *,
        timeout_s: float | None = None,
    ) -> UpstreamResponse:
        """Send one request and wait for the response head; the caller must release the response."""
        head = _request_head(origin, method, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        read_timeout_s = self._read_timeout_s if timeout_s is None else min(self._read_timeout_s, timeout_s)
        no_body = method == "HEAD"
        for attempt in range(2):
            conn = self._take(origin, loop.time()) if attempt == 0 else None  # the resend never reuses
            reused = conn is not None
            if conn is None:
                if deadline is None:
                    conn = await self._connect(origin, self)
                else:
                    async with asyncio.timeout_at(deadline):
                        conn = await self._connect(origin, self)
            try:
                return await conn.send(head, body, no_body=no_body, read_timeout_s=read_timeout_s, deadline=deadline)
            except StaleConnection:
                if reused:
                    continue
                raise UpstreamError("upstream closed the connection") from None
        raise UpstreamError("upstream closed the connection")

    def watch(self, conn: Http1Connection) -> None:
        """Check ``conn``'s timeouts until :meth:`unwatch`: one timer for every request in flight."""
        self._busy.add(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_later(SWEEP_S, self._check_timeouts, conn.loop)

    def unwatch(self, conn: Http1Connection) -> None:
        self._busy.discard(conn)

    def _check_timeouts(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        now = loop.time()
        for conn in list(self._busy):
            conn.check_timeout(now)
        if self._busy:
            self._sweep = loop.call_later(SWEEP_S, self._check_timeouts, loop)

    def put(self, conn: Http1Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)

    def _take(self, origin: Origin, now: float) -> Http1Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_s and conn.is_quiet():
                return conn
            conn.close()
        return None

    def close(self) -> None:
        self._closed = True  # requests in flight keep their timeouts: the sweep ends when they do
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _request_head(
    origin: Origin, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
) -> bytes:
    default = 443 if origin.scheme == "https" else 80
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host if origin.port == default else f'{host}:{origin.port}'}"]
    for name, value in headers:
        if name.lower() in _FRAMING:
            continue
        if name not in _TOKENS_SEEN:
            if not _TOKEN.fullmatch(name):
                raise UpstreamError("a header name for the upstream is not an HTTP token")
            if len(_TOKENS_SEEN) < _TOKENS_CACHE:
                _TOKENS_SEEN.add(name)
        if "\n" in value or "\r" in value or "\0" in value:
            raise UpstreamError("a header value for the upstream contains a line break or NUL")
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body) if body else 0}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
