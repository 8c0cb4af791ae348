"""The byte tunnel behind a ``CONNECT``: two transports joined, back-pressure both ways.

Each end is an :class:`asyncio.Protocol` whose ``data_received`` writes to
the other end's transport, so no tunnel byte is held anywhere but in the two
transports' own buffers. When one end's write buffer passes its high-water
mark (``pause_writing``), reading from the other end stops until it drains
(``resume_writing``). A half-close (EOF) is passed on where the transport can
write one; the tunnel ends when both ends have closed, either end is lost,
nothing has moved for ``idle_timeout_s``, or :meth:`Tunnel.close` is called
(the drain at shutdown). Only byte counts are kept, never bytes.
"""

from __future__ import annotations

import asyncio
from typing import cast

IDLE = "idle timeout"
CLIENT_CLOSED = "client closed"
UPSTREAM_CLOSED = "upstream closed"
SHUTDOWN = "shutdown"
# Seconds a closing end may take to flush what is still buffered for it before it is aborted.
FLUSH_S = 5.0


class End(asyncio.Protocol):
    """One end of a tunnel (the client's or the upstream's connection)."""

    def __init__(self, tunnel: Tunnel, closed: str) -> None:
        self._tunnel = tunnel
        self.closed_reason = closed
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self._tunnel.relay(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self._tunnel.half_closed(self)
        return True  # keep the transport: the other direction may still be sending

    def pause_writing(self) -> None:
        self._tunnel.peer(self).pause_reading()

    def resume_writing(self) -> None:
        self._tunnel.peer(self).resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._tunnel.finish(self.closed_reason)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class Tunnel:
    """A client connection and an upstream connection relaying to each other.

    Create it, let the egress client connect :attr:`upstream`, then
    :meth:`attach` the client's transport; :meth:`wait` returns why it ended.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout_s: float) -> None:
        self._loop = loop
        self._idle_s = idle_timeout_s
        self.client = End(self, CLIENT_CLOSED)
        self.upstream = End(self, UPSTREAM_CLOSED)
        self._done: asyncio.Future[str] = loop.create_future()
        self._last = loop.time()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def bytes_up(self) -> int:
        return self.client.received

    @property
    def bytes_down(self) -> int:
        return self.upstream.received

    def attach(self, transport: asyncio.Transport, early: bytes) -> None:
        """Take over the client's transport; ``early``: bytes it sent after the ``CONNECT`` head."""
        transport.set_protocol(self.client)
        self.client.connection_made(transport)
        if self._done.done():  # the upstream went away while the 200 was being written
            transport.close()
            return
        if early:
            self.client.data_received(early)
        transport.resume_reading()
        self._timer = self._loop.call_later(self._idle_s, self._check_idle)

    def peer(self, end: End) -> End:
        return self.upstream if end is self.client else self.client

    def relay(self, end: End, data: bytes) -> None:
        self._last = self._loop.time()
        peer = self.peer(end).transport
        if peer is not None and not peer.is_closing():
            peer.write(data)

    def half_closed(self, end: End) -> None:
        peer = self.peer(end)
        if peer.eof:
            self.finish(peer.closed_reason)  # both done: the reason is whoever closed first
        elif peer.transport is None or not peer.transport.can_write_eof():
            self.finish(end.closed_reason)
        elif not peer.transport.is_closing():
            peer.transport.write_eof()

    def _check_idle(self) -> None:
        quiet = self._loop.time() - self._last
        if quiet >= self._idle_s:
            self.finish(IDLE)
        else:
            self._timer = self._loop.call_later(self._idle_s - quiet, self._check_idle)

    def close(self, reason: str = SHUTDOWN) -> None:
        self.finish(reason)

    def finish(self, reason: str) -> None:
        """End the tunnel; what is still buffered for an end is flushed for up to ``FLUSH_S``, then it is aborted."""
        if self._done.done():
            return
        self._done.set_result(reason)
        if self._timer is not None:
            self._timer.cancel()
        for end in (self.client, self.upstream):
            transport = end.transport
            if transport is None:
                continue
            pending = transport.get_write_buffer_size() > 0 and not end.lost
            transport.close()
            if pending:
                self._loop.call_later(FLUSH_S, transport.abort)

    async def wait(self) -> str:
        return await asyncio.shield(self._done)
