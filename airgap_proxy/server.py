"""Run the application: event loop, listening socket, signals, graceful shutdown.

- ``SIGTERM``/``SIGINT`` drain: stop listening (new connections are refused),
  let requests in flight, streams included, finish for up to
  ``timeouts.shutdown_grace_s``, cancel what is left, close, exit 0.
- ``SIGHUP`` reloads the configuration (:func:`airgap_proxy.reload.reload_app`);
  a bad file is logged and the running configuration stays.
- As a worker of ``serve --workers N`` (:mod:`airgap_proxy.workers`) the
  socket is bound with ``SO_REUSEPORT`` next to the other workers', and a
  repeated stop signal during the drain is ignored: the supervisor owns the
  deadline.
- ``timeouts.client_header_s`` is aiohttp's keep-alive timeout, which (since
  aiohttp 3.14) also runs from the moment a connection opens: a client that has
  not sent a complete request head by then is disconnected, whether it is idle
  or dribbling a header (slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from airgap_proxy import logs, reload
from airgap_proxy.app import create_app
from airgap_proxy.config import Config, ConfigError, TimeoutsConfig
from airgap_proxy.egress import guard
from airgap_proxy.errors import BadHttpRequest, InternalError, Overloaded, ProxyError
from airgap_proxy.headers import ERROR_HEADER
from airgap_proxy.state import STATE

SHUTDOWN_GRACE_S = TimeoutsConfig.shutdown_grace_s
_log = logs.get_logger("airgap_proxy.server")


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional on platforms without it
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"X-Airgap-Error: overloaded\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class _Refuse(asyncio.Protocol):
    """A connection past ``limits.max_connections``: one 503, then close."""

    def __init__(self, reply: bytes) -> None:
        self._reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.WriteTransport, transport)  # uvloop's transports do not subclass asyncio's
        stream.write(self._reply)
        stream.close()


class EnvelopeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse in the OpenAI envelope.

    aiohttp's own answer is text that repeats the refused line (an
    ``Authorization`` header with a control byte, key included); this one
    names only the parser's exception class. No slots of its own, so that a
    handler aiohttp built can take this class (see :class:`CappedSite`).
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, "")  # logs, and refuses once a response has started
        error: ProxyError
        if status >= 500:
            error = InternalError("The proxy could not handle the request")
        else:
            error = BadHttpRequest(f"Malformed HTTP request ({type(exc).__name__ if exc else 'unreadable'})")
        response = web.Response(
            status=status, body=json.dumps(error.envelope()).encode(), content_type="application/json"
        )
        response.headers[ERROR_HEADER] = error.code
        response.force_close()
        return response


class CappedSite(web.BaseSite):
    """A TCP site that holds at most ``max_connections`` client connections.

    aiohttp has no connection cap; past it a new connection is answered with
    a 503 ``overloaded`` envelope and closed before any request is read, so
    an idle or slow crowd cannot exhaust file descriptors or memory.
    """

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, max_connections: int, *, reuse_port: bool = False
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._max = max_connections
        self._reuse_port = reuse_port
        body = json.dumps(Overloaded("Too many connections (limits.max_connections); retry shortly").envelope())
        self._reply = _OVERLOADED % (len(body), body.encode())

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            if len(server.connections) >= self._max:
                _log.warning("connection_refused", reason="limits.max_connections", limit=self._max)
                return _Refuse(self._reply)
            handler = server()
            handler.__class__ = EnvelopeRequestHandler  # aiohttp offers no handler class to choose
            return handler

        self._server = await loop.create_server(
            factory, self._host, self._port, reuse_address=True, reuse_port=self._reuse_port or None
        )


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner ``serve`` uses, with the client-side timeouts and the drain grace period."""
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=config.timeouts.client_header_s,
        shutdown_timeout=config.timeouts.shutdown_grace_s,
    )


def run(
    config: Config, *, host: str | None = None, port: int | None = None, loader: reload.Loader | None = None
) -> int:
    """Serve until SIGTERM or SIGINT. Returns the process exit status."""
    logs.configure(config.logging, secrets=logs.secrets_of(config))
    host, port = listen_address(config, host, port)
    app = create_app(config, loader=loader)
    _log.info(
        "starting",
        host=host,
        port=port,
        airgapped=config.airgapped,
        self_egress_guard=guard.installed(),
        upstreams=[u.name for u in config.upstreams],
        config=config.source,
    )
    return run_app(app, config, host, port)


def listen_address(config: Config, host: str | None, port: int | None) -> tuple[str, int]:
    """``--host``/``--port`` over the configuration's ``listen``."""
    return host or config.listen.host, config.listen.port if port is None else port


def run_app(
    app: web.Application,
    config: Config,
    host: str,
    port: int,
    *,
    worker: bool = False,
    on_listening: Callable[[], None] | None = None,
) -> int:
    """Run :func:`serve` on a fresh uvloop loop; 1 if ``host:port`` cannot be bound."""
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        try:
            runner.run(serve(app, config, host, port, worker=worker, on_listening=on_listening))
        except OSError as exc:
            print(f"airgap-proxy: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


async def serve(
    app: web.Application,
    config: Config,
    host: str,
    port: int,
    *,
    worker: bool = False,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Listen on ``host:port`` until a stop signal, then drain and clean up.

    ``worker``: one of several processes sharing the port (``SO_REUSEPORT``).
    A worker starts with the stop and reload signals blocked (so that one sent
    while it starts waits instead of killing it); they are unblocked once the
    handlers are in place. ``on_listening`` runs once the socket is bound.
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(logs.loop_exception_handler)
    runner = make_runner(app, config)
    await runner.setup()
    # What start-up built lives as long as the process: keep it out of the
    # collector's way, so that full collections under load scan only what
    # requests allocate (fewer and shorter pauses).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = loop.create_task(_reload_on_signal(app))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    try:
        await CappedSite(runner, host, port, config.limits.max_connections, reuse_port=worker).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        _log.info("listening", host=host, port=port)
        if on_listening is not None:
            on_listening()
        await stop.wait()
        for site in list(runner.sites):
            await site.stop()
        _log.info("draining", in_flight=app[STATE].in_flight, grace_s=config.timeouts.shutdown_grace_s)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
            if worker:  # a second SIGTERM (systemd signals the whole group, then so does the supervisor)
                signal.signal(sig, signal.SIG_IGN)
        for task in list(reloads):
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        started = time.monotonic()
        await runner.cleanup()
        logs.flush()  # audit lines still waiting for the end of the loop's turn
        logs.report_suppressed()
        _log.info("stopped", drain_s=round(time.monotonic() - started, 3))


async def _reload_on_signal(app: web.Application) -> None:
    with contextlib.suppress(ConfigError):  # logged by reload_app; the running configuration stays
        try:
            await reload.reload_app(app)
        except Exception as exc:  # noqa: BLE001 - a failed reload must never stop the server
            _log.error("config_reload_failed", error=f"{type(exc).__name__}: {exc}")
