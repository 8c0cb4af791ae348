"""Start and stop the processes a benchmark measures: the upstream instrument and the proxies.

Every process listens on a free port of 127.0.0.1, runs in its own session
(so that Ctrl-C reaches the runner, which stops them in order) and is
stopped through its process group. Child environments carry no
``*_proxy`` variables and none of the proxy's own configuration.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.measure import pinned

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
PROXY_CPU = "0"
UPSTREAM_CPU = "1"
LITELLM_KEY = "sk-bench-master-key-0123456789abcdef"
LITELLM_ENV = {  # as tests/real_servers.py: offline, no telemetry, no price list download
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_MODE": "PRODUCTION",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "NO_REDOC": "True",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}
OWN_PREFIXES = ("AIRGAP_PROXY_", "LLM_", "AISOC_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment without forward-proxy settings or airgap-proxy configuration, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith(OWN_PREFIXES)}
    return {**env, **extra}


def litellm_path() -> Path:
    """Where ``scripts/real-servers setup`` puts the LiteLLM proxy (``$LITELLM`` overrides)."""
    if "LITELLM" in os.environ:
        return Path(os.environ["LITELLM"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    root = Path(os.environ.get("REAL_SERVERS_DIR", cache / "airgap-proxy" / "real-servers"))
    return root / "venv-litellm" / "bin" / "litellm"


@dataclass
class Server:
    """A running process listening on ``port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 400) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:].strip()
        return ""

    def stop(self, grace: float = 15) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wait_ready(server: Server, path: str, timeout: float, headers: Mapping[str, str] | None = None) -> None:
    """Poll ``GET path`` until it answers below 500; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.process.returncode}): {server.log_tail()}")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
        try:
            connection.request("GET", path, headers=dict(headers or {}))
            if connection.getresponse().status < 500:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s: {server.log_tail()}")


class Fleet:
    """The processes of one run; ``with Fleet(dir) as fleet`` stops every one on exit, Ctrl-C included."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.servers: list[Server] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        while self.servers:
            self.servers.pop().stop()

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cpus: str | None, port: int, cwd: Path = ROOT
    ) -> Server:
        log = self.work / f"{name}-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                pinned(cpus, argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
        server = Server(name, port, process, log)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def instrument(
        self, chunks: int | None = None, pace_ms: float | None = None, cpus: str | None = UPSTREAM_CPU
    ) -> Server:
        port = free_port()
        argv = [sys.executable, str(HERE / "instrument.py"), str(port)]
        if chunks is not None:
            argv += [str(chunks), str(pace_ms or 0)]
        server = self.spawn("instrument", argv, child_env(), cpus, port)
        wait_ready(server, "/v1/models", 10)
        return server

    def airgap_proxy(
        self,
        upstream: Server | None,
        *,
        cpus: str | None = PROXY_CPU,
        workers: int | None = None,
        limits: Mapping[str, int] | None = None,
        provider_type: str | None = None,
        config: Mapping[str, object] | None = None,
    ) -> Server:
        """``python -m airgap_proxy serve``; the JSON audit log (stderr) goes to the log file."""
        port = free_port()
        extra = {"AIRGAP_PROXY_HOST": "127.0.0.1", "AIRGAP_PROXY_PORT": str(port)}
        if upstream is not None:
            extra["LLM_BASE_URL"] = f"{upstream.url}/v1"
        if provider_type is not None:
            extra["LLM_PROVIDER_TYPE"] = provider_type  # local-ollama speaks every surface
        argv = [sys.executable, "-m", "airgap_proxy", "serve"]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if limits or config:
            path = self.work / f"airgap-proxy-{port}.yaml"
            raw = {"version": 1, **(config or {}), **({"limits": dict(limits)} if limits else {})}
            path.write_text(json.dumps(raw))  # JSON is YAML
            argv += ["--config", str(path)]
        server = self.spawn("airgap-proxy", argv, child_env(**extra), cpus, port)
        wait_ready(server, "/healthz", 20)
        return server

    def passthrough(self, upstream: Server) -> Server:
        port = free_port()
        argv = [sys.executable, str(HERE / "passthrough.py"), str(port), f"{upstream.url}/v1"]
        server = self.spawn("passthrough", argv, child_env(), PROXY_CPU, port)
        wait_ready(server, "/v1/models", 20)
        return server

    def nginx(self, upstream: Server) -> Server:
        """nginx, one worker process, keep-alive to the upstream, no buffering; all its files in a temp dir."""
        port = free_port()
        prefix = self.work / f"nginx-{port}"
        (prefix / "logs").mkdir(parents=True)
        temp_paths = "\n".join(
            f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(f"""worker_processes 1;
daemon off;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp_paths}
    upstream up {{ server 127.0.0.1:{upstream.port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
        argv = ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        server = self.spawn("nginx", argv, child_env(), PROXY_CPU, port)
        wait_ready(server, "/v1/models", 10)
        return server

    def litellm(self, models: Mapping[str, Server], binary: Path) -> Server:
        """The LiteLLM proxy, one worker, a model per upstream (``bench`` → the instrument)."""
        port = free_port()
        config = {
            "model_list": [
                {
                    "model_name": name,
                    "litellm_params": {"model": "openai/bench", "api_base": f"{up.url}/v1", "api_key": "unused"},
                }
                for name, up in models.items()
            ],
            "general_settings": {"master_key": LITELLM_KEY, "disable_spend_logs": True},
            "litellm_settings": {"telemetry": False, "drop_params": True},
        }
        path = self.work / f"litellm-{port}.yaml"
        path.write_text(json.dumps(config))
        argv = [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        server = self.spawn("litellm", argv, child_env(**LITELLM_ENV), PROXY_CPU, port, cwd=self.work)
        wait_ready(server, "/health/liveliness", 120)
        return server
