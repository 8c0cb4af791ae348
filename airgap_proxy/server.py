"""Run the application: event loop, listening socket, graceful shutdown."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from airgap_proxy import logs
from airgap_proxy.app import create_app
from airgap_proxy.config import Config

SHUTDOWN_GRACE_S = 10.0


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional on platforms without it
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(config: Config, *, host: str | None = None, port: int | None = None) -> int:
    """Serve until interrupted. Returns the process exit status."""
    logs.configure(config.logging)
    log = logs.get_logger("airgap_proxy.server")
    host = host or config.listen.host
    port = config.listen.port if port is None else port
    app = create_app(config)
    loop = _loop_factory()
    asyncio.set_event_loop(loop)
    log.info(
        "starting",
        host=host,
        port=port,
        airgapped=config.airgapped,
        upstreams=[u.name for u in config.upstreams],
        config=config.source,
    )
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            handler_cancellation=True,
            access_log=None,
            print=None,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            loop=loop,
        )
    except OSError as exc:
        print(f"airgap-proxy: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
