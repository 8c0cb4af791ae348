"""Shared fixtures: real servers on 127.0.0.1 and a clean environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import settings

from airgap_proxy.app import create_app
from airgap_proxy.config import Config, parse_config
from tests.fakes import FakeUpstream
from tests.postgres_server import PostgresServer, require_binaries

PROXY_ENV_VARS = (
    "AISOC_AIRGAPPED",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "LLM_PROVIDER_TYPE",
    "AIRGAP_PROXY_CONFIG",
    "AIRGAP_PROXY_HOST",
    "AIRGAP_PROXY_PORT",
    "AIRGAP_PROXY_ADMIN_TOKEN",
    "AIRGAP_PROXY_SECRET_KEY",
    "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS",
    "AIRGAP_PROXY_TENANT_DB",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


# Log lines go to stderr in tests, as in production, so stdout stays the CLI's.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

# CI explores the same examples on every run (a failure there is reproducible from
# its log); elsewhere Hypothesis explores new ones each run, which is where the
# fuzz tests find bugs (their @example lines pin the ones found).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def make_config(raw: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
    def no_files(path: str) -> str:
        raise FileNotFoundError(path)

    return parse_config(dict(raw or {}), dict(env or {}), no_files)


class FakeResolver(AbstractResolver):
    """Answers from a table; each name may have a sequence of answers (rebinding)."""

    def __init__(self, table: Mapping[str, Sequence[Sequence[str]] | Sequence[str]]):
        self.answers: dict[str, list[list[str]]] = {}
        for name, value in table.items():
            if value and isinstance(value[0], str):
                self.answers[name] = [list(value)]  # type: ignore[arg-type]
            else:
                self.answers[name] = [list(v) for v in value]
        self.calls: list[str] = []

    def lookup(self, host: str) -> list[str]:
        self.calls.append(host)
        answers = self.answers.get(host)
        if not answers:
            raise OSError(f"{host} does not resolve")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for address in self.lookup(host):
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            results.append({"hostname": host, "host": address, "port": port, "family": fam, "proto": 0, "flags": 0})
        return results

    async def close(self) -> None:
        return None


@dataclass
class Recorder:
    """A TCP listener that only counts connection attempts."""

    host: str
    port: int
    connections: int = 0


@pytest.fixture
async def recorder() -> Any:
    """Factory: start a connection-counting listener on a loopback address."""
    servers: list[asyncio.AbstractServer] = []

    async def start(host: str = "127.0.0.2") -> Recorder:
        rec = Recorder(host, 0)

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            rec.connections += 1
            writer.close()

        server = await asyncio.start_server(on_connect, host, 0)
        rec.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return rec

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    """A fake OpenAI upstream on 127.0.0.1:0; returns (instrument, base_url)."""
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    return fake, f"http://127.0.0.1:{server.port}/v1"


class ThreadedServers:
    """Upstream and proxy running on their own event loop in a thread (for sync clients)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _start(self, app: web.Application, host: str) -> int:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        self.runners.append(runner)
        server = site._server
        assert server is not None
        # A listening TCP site's server has sockets; uvloop's does not subclass asyncio.Server.
        return int(cast(asyncio.Server, server).sockets[0].getsockname()[1])

    def start(self, app: web.Application, host: str = "127.0.0.1") -> int:
        return int(self.call(self._start(app, host)))

    def start_proxy(self, config: Config, **kwargs: Any) -> str:
        port = self.start(create_app(config, **kwargs))
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        async def stop() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def threaded() -> Iterator[ThreadedServers]:
    servers = ThreadedServers()
    yield servers
    servers.close()


ConfigFactory = Callable[..., Config]


class BlackHole:
    """A loopback port that never completes a connect: its accept queue is full and SYNs are dropped."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in (*self.fillers, self.listener):
            sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (started on first use; skipped, or failed in CI, without it)."""
    server = PostgresServer(require_binaries())
    try:
        server.start()
        yield server
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
    finally:
        server.remove()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[str]:
    """A new, empty database on the session's server (its name); dropped afterwards."""
    name = postgres.create_database()
    yield name
    with contextlib.suppress(Exception):
        postgres.drop_database(name)
