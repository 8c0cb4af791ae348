"""Real servers as processes for the tests marked ``real``: llama.cpp, LiteLLM and the proxy itself.

llama.cpp comes two ways: llama-cpp-python's Python server (:func:`llama_server`)
and llama.cpp's own ``llama-server`` binary (:func:`native_llama_server`), which
also serves the Anthropic Messages and OpenAI Responses APIs.

``scripts/real-servers setup`` builds and caches the servers' virtualenvs and
the model, then writes ``ready.env``; :func:`load_setup` reads it. Without it
the ``real`` tests skip with the command to run, except in CI (``CI=true``),
where a missing setup is a failure: CI must never pass by running nothing.

Every server listens on 127.0.0.1 on a free port, logs to a file (a pipe
nobody reads would block a chatty server), runs in its own process group, is
waited for with a deadline, and is killed at the end. Every HTTP call made
here has a timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import PROXY_ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
SETUP_COMMAND = "scripts/real-servers setup"
LLAMA_KEY = "sk-llama-local-upstream"
LITELLM_KEY = "sk-litellm-master-key"
LLAMA_MODEL = "smollm2-135m-instruct"
LITELLM_MODEL = "mock-gpt"
LITELLM_TEXT = "Hello from the LiteLLM proxy's mock model."
START_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 60.0
HEALTH_TIMEOUT_S = 20.0
# What a proxy in front of real servers is configured with: frequent probes, so
# that a dead upstream (connection refused) is noticed within a second, and a
# probe timeout longer than any generation here: llama-cpp-python serves one
# request at a time, its /v1/models included, so a probe waits for the
# generation in progress (see test_a_long_generation_does_not_mark_llama_down).
HEALTH = {"interval_s": 0.5, "timeout_s": 60, "unhealthy_after": 1, "healthy_after": 1}
# Servers must not reach anything: no proxies, no hub, no telemetry, no price list download.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "NO_REDOC": "True",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class RealSetup:
    """What ``scripts/real-servers setup`` produced."""

    llama_python: Path
    litellm_python: Path
    litellm: Path
    model: Path
    llama_server: Path


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def setup_dir() -> Path:
    explicit = os.environ.get("REAL_SERVERS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "airgap-proxy" / "real-servers"


def load_setup() -> RealSetup:
    """The paths from ``ready.env``; skip (locally) or fail (in CI) when the setup is missing."""
    ready = setup_dir() / "ready.env"
    problem = None
    if not ready.is_file():
        problem = f"the real servers are not set up ({ready} is missing): run {SETUP_COMMAND}"
    else:
        values = dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line)
        try:
            found = RealSetup(
                Path(values["REAL_LLAMA_PYTHON"]),
                Path(values["REAL_LITELLM_PYTHON"]),
                Path(values["REAL_LITELLM"]),
                Path(values["REAL_MODEL"]),
                Path(values["REAL_LLAMA_SERVER"]),
            )
        except KeyError as exc:
            problem = f"{ready} has no {exc}: run {SETUP_COMMAND} again"
        else:
            paths = (found.llama_python, found.litellm_python, found.litellm, found.model, found.llama_server)
            missing = [str(p) for p in paths]
            missing = [p for p in missing if not Path(p).exists()]
            if not missing:
                return found
            problem = f"{', '.join(missing)} missing: run {SETUP_COMMAND} again"
    if in_ci():
        pytest.fail(f"CI=true and {problem}", pytrace=False)
    pytest.skip(problem)


# --------------------------------------------------------------------------- #
# Small HTTP helpers (standard library, every call bounded)
# --------------------------------------------------------------------------- #


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    method: str,
    port: int,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers={**all_headers, **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


# --------------------------------------------------------------------------- #
# Processes
# --------------------------------------------------------------------------- #


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS and k != "PYTHONPATH"}
    return {**env, **OFFLINE_ENV, **extra}


@dataclass
class Server:
    """One server process on 127.0.0.1:``port``; ``ready`` says when it can answer."""

    name: str
    argv: Sequence[str]
    port: int
    ready: Callable[[Server], bool]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=child_env)
    cwd: Path = ROOT
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> Server:
        assert self.process is None or self.process.poll() is not None, f"{self.name} already running"
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.ready(self):
                    return self
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group: the server dies mid-whatever, as in a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def llama_server(setup: RealSetup, log_dir: Path, port: int | None = None) -> Server:
    """llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct, one thread."""
    port = port or free_port()
    argv = [
        str(setup.llama_python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(setup.model),
        "--model_alias",
        LLAMA_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api_key",
        LLAMA_KEY,
        "--embedding",
        "true",
        # Two threads on two shared cores collapse throughput; one is steady.
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--n_ctx",
        "2048",
        # Otherwise a new request cuts the stream that is running.
        "--interrupt_requests",
        "false",
        "--verbose",
        "false",
    ]

    def ready(server: Server) -> bool:
        reply = call("GET", server.port, "/v1/models", headers={"Authorization": f"Bearer {LLAMA_KEY}"}, timeout=2)
        return reply.status == 200

    return Server("llama.cpp", argv, port, ready, log_dir / f"llama-{port}.log")


def native_llama_server(setup: RealSetup, log_dir: Path, port: int | None = None) -> Server:
    """llama.cpp's own ``llama-server`` with SmolLM2-135M-Instruct: two slots, one thread, offline."""
    port = port or free_port()
    argv = [
        str(setup.llama_server),
        "-m",
        str(setup.model),
        "--alias",
        LLAMA_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        LLAMA_KEY,
        "-c",
        "2048",
        "-np",
        "2",
        "-t",
        "1",
        "-tb",
        "1",
        # The model's own chat template through the Jinja engine, as tool calling needs.
        "--jinja",
        "--no-webui",
        "--offline",
    ]

    def ready(server: Server) -> bool:
        # /health needs no key; it answers 503 while the model loads, 200 once it can serve.
        return call("GET", server.port, "/health", timeout=2).status == 200

    return Server("llama-server", argv, port, ready, log_dir / f"llama-server-{port}.log")


def litellm_server(setup: RealSetup, log_dir: Path, port: int | None = None) -> Server:
    """The LiteLLM proxy serving a mock model: no provider is ever called."""
    port = port or free_port()
    config = {
        "model_list": [
            {
                "model_name": LITELLM_MODEL,
                "litellm_params": {
                    "model": "openai/fake",
                    "api_key": "unused",
                    # Never contacted (mock_response answers); a closed local port if it ever were.
                    "api_base": "http://127.0.0.1:9/v1",
                    "mock_response": LITELLM_TEXT,
                },
            }
        ],
        "general_settings": {"master_key": LITELLM_KEY, "disable_spend_logs": True},
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    config_path = log_dir / f"litellm-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    argv = [str(setup.litellm), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]

    def ready(server: Server) -> bool:
        return call("GET", server.port, "/health/liveliness", timeout=2).status == 200

    return Server("litellm", argv, port, ready, log_dir / f"litellm-{port}.log", cwd=log_dir)


def proxy_server(log_dir: Path, upstreams: Sequence[Mapping[str, Any]], **settings: Any) -> Server:
    """``airgap-proxy serve`` as a real process with a config file, as an operator runs it."""
    port = free_port()
    config = {
        "version": 1,
        "upstreams": list(upstreams),
        "health": HEALTH,
        "timeouts": {"connect_s": 2, "upstream_s": 120},
        "logging": {"format": "json", "level": "info"},
        "tenants": {"store": str(log_dir / f"tenants-{port}.db")},
        **settings,
    }
    config_path = log_dir / f"proxy-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [sys.executable, "-m", "airgap_proxy", "serve", "--config", str(config_path), "--port", str(port)]

    def ready(server: Server) -> bool:
        return call("GET", server.port, "/healthz", timeout=2).status == 200

    return Server("airgap-proxy", argv, port, ready, log_dir / f"proxy-{port}.log", env=child_env())


def status(proxy: Server) -> dict[str, Any]:
    reply = call("GET", proxy.port, "/api/v1/llm/status", timeout=5)
    assert reply.status == 200, reply.body
    data = reply.json()
    assert isinstance(data, dict)
    return data


def upstream_health(proxy: Server, name: str) -> str:
    [detail] = [u for u in status(proxy)["upstreams"] if u["name"] == name]
    return str(detail["health"])


def wait_for_health(proxy: Server, name: str, health: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    wait_until(f"upstream {name} {health}", lambda: upstream_health(proxy, name) == health, timeout)


@dataclass
class Servers:
    """Started servers, stopped in reverse order at the end, and the clients made for them."""

    log_dir: Path
    started: list[Server] = field(default_factory=list)
    clients: dict[int, openai.OpenAI] = field(default_factory=dict)

    def start(self, server: Server) -> Server:
        self.started.append(server)
        return server.start()

    def client(self, proxy: Server) -> openai.OpenAI:
        """The openai SDK pointed at ``proxy`` as an agent points it (LLM_BASE_URL), every call bounded."""
        if proxy.port not in self.clients:
            llm_base_url = f"http://127.0.0.1:{proxy.port}/v1"
            self.clients[proxy.port] = openai.OpenAI(
                base_url=llm_base_url, api_key="agent-key", max_retries=0, timeout=CLIENT_TIMEOUT_S
            )
        return self.clients[proxy.port]

    def stop_all(self) -> None:
        for client in self.clients.values():
            client.close()
        for server in reversed(self.started):
            server.stop()


@pytest.fixture(scope="session")
def real_setup() -> RealSetup:
    return load_setup()


@pytest.fixture(scope="module")
def native_llama(real_setup: RealSetup, servers: Servers) -> Server:
    """A ``llama-server`` for the module, stopped with the module's other servers."""
    return servers.start(native_llama_server(real_setup, servers.log_dir))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    started = Servers(tmp_path_factory.mktemp("real-servers"))
    try:
        yield started
    finally:
        started.stop_all()
