"""``airgap-proxy serve --workers N``: a supervisor and N worker processes on one port.

Real processes on 127.0.0.1. Which worker answered is read from ``/proc``:
the sockets a worker holds (``/proc/PID/fd``) matched against the established
connections on the proxy's port (``/proc/net/tcp``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airgap_proxy.config import ConfigError, load_config, parse_workers
from airgap_proxy.workers import available_cpus, worker_count
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, ADMIN_TOKEN, SECRET_KEY, provider
from tests.test_operations import ServedProxy, start_proxy, write_config
from tests.test_serve import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
# Enough fresh connections that the kernel's hash puts some on each of two workers
# (all on one: probability 2**-23).
FRESH_CONNECTIONS = 24


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


async def serve_workers(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, ready: str = "workers_started"
) -> ServedProxy:
    """``airgap-proxy serve --port P ARGS`` with its log lines, once ``ready`` is logged."""
    return await start_proxy(*args, cwd=cwd, env=env, ready=ready, timeout=20)


@pytest.fixture
async def proxies() -> AsyncIterator[list[ServedProxy]]:
    """Supervisors to kill at the end (their workers follow: PR_SET_PDEATHSIG)."""
    started: list[ServedProxy] = []
    yield started
    for proxy in started:
        pids = children(proxy.process.pid) if proxy.process.returncode is None else []
        await proxy.stop()
        await wait_gone(pids)


def children(pid: int) -> list[int]:
    return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def alive(pid: int) -> bool:
    """Running (a zombie left to a non-reaping init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while any(alive(pid) for pid in pids):
            await asyncio.sleep(0.05)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def accepted_inodes(port: int) -> set[int]:
    """Inodes of the established connections whose local end is ``port`` (the server's side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                inodes.add(inode)
    return inodes


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTP/1.1 request on an open connection, which stays open."""
    reader, writer = streams
    payload = b"" if body is None else json.dumps(body).encode()
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(payload))}
    head.update(headers or {})
    writer.write(
        f"{method} {path} HTTP/1.1\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
        + b"\r\n"
        + payload
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    received = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        received[name.strip().lower()] = value.strip()
    return Answer(status, received, await reader.readexactly(int(received["content-length"])))


@asynccontextmanager
async def fresh_connections(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> AsyncIterator[list[Answer]]:
    """The same request on :data:`FRESH_CONNECTIONS` new connections, held open inside the block."""
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(FRESH_CONNECTIONS)]
    try:
        yield [await request(streams, method, path, body, headers) for streams in opened]
    finally:
        for _, writer in opened:
            writer.close()
        for _, writer in opened:
            await writer.wait_closed()


def connections_by_worker(port: int, pids: list[int]) -> dict[int, int]:
    """How many of the open connections on ``port`` each worker holds."""
    accepted = accepted_inodes(port)
    return {pid: len(socket_inodes(pid) & accepted) for pid in pids}


async def assert_every_worker_answers(
    proxy: ServedProxy, pids: list[int], check: Any = None, path: str = "/v1/chat/completions", **kwargs: Any
) -> None:
    async with fresh_connections(proxy.port, "POST", path, CHAT, **kwargs) as answers:
        assert [a.status for a in answers] == [200] * FRESH_CONNECTIONS
        for answer in answers:
            if check is not None:
                check(answer)
        held = connections_by_worker(proxy.port, pids)
    assert sum(held.values()) == FRESH_CONNECTIONS, held
    assert all(held.values()), f"a worker answered nothing: {held}"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airgap_proxy", *args],
        env=clean_env(**(env or {})),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --------------------------------------------------------------------------- #
# The worker count
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1", 1, id="one"),
        pytest.param("4", 4, id="four"),
        pytest.param(" 2 ", 2, id="spaces"),
        pytest.param("0", 0, id="zero is auto"),
        pytest.param("auto", 0, id="auto"),
        pytest.param("AUTO", 0, id="auto upper case"),
        pytest.param("256", 256, id="the limit"),
    ],
)
def test_worker_counts_that_parse(text: str, expected: int) -> None:
    assert parse_workers("--workers", text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("-1", id="negative"),
        pytest.param("two", id="word"),
        pytest.param("1.5", id="fraction"),
        pytest.param("257", id="over the limit"),
        pytest.param("²", id="non-ASCII digit"),
        pytest.param("", id="empty"),
    ],
)
def test_worker_counts_that_do_not_parse(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_workers("--workers", text)
    assert caught.value.path == "--workers"
    assert "expected a number of worker processes 1-256, or 0 or auto" in caught.value.message


def test_auto_is_one_worker_per_available_cpu() -> None:
    assert available_cpus() == len(os.sched_getaffinity(0))
    assert worker_count(0) == available_cpus()
    assert worker_count(3) == 3


def test_the_environment_variable_sets_the_count() -> None:
    assert load_config(None, {}).workers == 1
    assert load_config(None, {"AIRGAP_PROXY_WORKERS": "3"}).workers == 3
    assert load_config(None, {"AIRGAP_PROXY_WORKERS": "auto"}).workers == 0


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["--workers", "two"],
            {},
            "airgap-proxy: config error: --workers: expected a number of worker processes 1-256, "
            "or 0 or auto (one per CPU), got 'two'",
            id="flag",
        ),
        pytest.param(
            ["--workers", "-3"],
            {},
            "airgap-proxy: config error: --workers: expected a number of worker processes 1-256, "
            "or 0 or auto (one per CPU), got '-3'",
            id="negative flag",
        ),
        pytest.param(
            [],
            {"AIRGAP_PROXY_WORKERS": "many"},
            "airgap-proxy: config error: AIRGAP_PROXY_WORKERS: expected a number of worker processes 1-256, "
            "or 0 or auto (one per CPU), got 'many'",
            id="environment",
        ),
        pytest.param(
            ["--workers", "2", "--port", "0"],
            {},
            "airgap-proxy: config error: listen.port: port 0 (any free port) would give each worker its own port; "
            "set a port",
            id="port 0",
        ),
    ],
)
def test_invalid_worker_counts_exit_2_with_one_line(args: list[str], env: dict[str, str], expected: str) -> None:
    result = run_cli("serve", *args, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == expected


async def test_the_flag_wins_over_the_environment_and_one_worker_is_a_single_process(
    proxies: list[ServedProxy],
) -> None:
    proxy = await serve_workers("--workers", "1", env={"AIRGAP_PROXY_WORKERS": "2"}, ready="listening")
    proxies.append(proxy)
    assert children(proxy.process.pid) == []
    assert not [e for e in proxy.events if e["event"] in {"workers_started", "workers_stopping"}]
    proxy.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.process.wait(), 20) == 0


async def test_the_environment_variable_starts_workers(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers(env={"AIRGAP_PROXY_WORKERS": "2"})
    proxies.append(proxy)
    assert len(children(proxy.process.pid)) == 2


async def test_auto_on_one_cpu_is_a_single_process(proxies: list[ServedProxy]) -> None:
    port = free_port()
    cpu = min(os.sched_getaffinity(0))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "airgap_proxy",
        "serve",
        "--port",
        str(port),
        "--workers",
        "auto",
        cwd=ROOT,
        env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    proxy = ServedProxy(process, port)
    proxies.append(proxy)
    await proxy.event("listening", timeout=20)
    assert children(process.pid) == []


# --------------------------------------------------------------------------- #
# Serving
# --------------------------------------------------------------------------- #


async def test_two_workers_both_answer_and_sigterm_stops_them_with_status_0(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    started = proxy.events[-1]
    assert started["event"] == "workers_started" and started["count"] == 2
    pids = children(proxy.process.pid)
    assert pids == sorted(started["pids"]) and len(set(pids)) == 2
    assert len([e for e in proxy.events if e["event"] == "listening"]) == 2

    def deterministic(answer: Answer) -> None:
        assert answer.headers["x-airgap-upstream"] == "deterministic"
        assert answer.json()["object"] == "chat.completion"

    await assert_every_worker_answers(proxy, pids, deterministic)
    # One audit line per request, whichever worker answered (each follows its
    # response by a moment: the answer leaves first).
    await proxy.event("request", FRESH_CONNECTIONS)
    assert len([e for e in proxy.events if e["event"] == "request"]) == FRESH_CONNECTIONS

    proxy.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.process.wait(), 20) == 0
    await proxy.stop()
    stopped = [e for e in proxy.events if e["event"] == "worker_stopped"]
    assert sorted(e["pid"] for e in stopped) == pids
    assert all(e["exit_code"] == 0 for e in stopped)
    assert [e["status"] for e in proxy.events if e["event"] == "workers_stopped"] == [0]
    assert not any(alive(pid) for pid in pids)


async def test_sigint_drains_every_worker_too(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    proxy.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proxy.process.wait(), 20) == 0
    await proxy.stop()
    assert len([e for e in proxy.events if e["event"] == "stopped"]) == 2
    assert not any(alive(pid) for pid in pids)
    assert not any("Traceback" in line for line in proxy.stderr)


async def test_sighup_reloads_every_worker_and_a_replacement_catches_up(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    config = write_config(tmp_path / "proxy.yaml", {"health": {"interval_s": 60}})
    proxy = await serve_workers("--workers", "2", "--config", str(config), cwd=tmp_path)
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    write_config(
        config,
        {
            "health": {"interval_s": 60},
            "upstreams": [{"name": "local", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}],
        },
    )
    proxy.process.send_signal(signal.SIGHUP)
    await proxy.event("config_reloaded", count=2)
    assert (await proxy.event("workers_reloading"))["pids"] == pids

    def local(answer: Answer) -> None:
        assert answer.headers["x-airgap-upstream"] == "local"

    await assert_every_worker_answers(proxy, pids, local)

    # A replacement starts from the start-up configuration, then reloads as the others did.
    os.kill(pids[0], signal.SIGKILL)
    replaced = await proxy.event("worker_ready")
    await proxy.event("config_reloaded", count=3)
    now = children(proxy.process.pid)
    assert now == sorted([pids[1], replaced["pid"]])
    await assert_every_worker_answers(proxy, now, local)


async def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    os.kill(pids[1], signal.SIGKILL)
    exited = await proxy.event("worker_exited")
    assert exited["pid"] == pids[1] and exited["signal"] == "SIGKILL" and exited["exit_code"] is None
    started = await proxy.event("worker_started")
    await proxy.event("worker_ready")
    now = children(proxy.process.pid)
    assert now == sorted([pids[0], started["pid"]]) and started["pid"] != pids[1]
    await assert_every_worker_answers(proxy, now)
    assert proxy.process.returncode is None


async def test_workers_that_keep_crashing_make_the_supervisor_give_up(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    for crash in range(1, 6):
        victim = children(proxy.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        await proxy.event("worker_exited", count=crash)
        if crash < 5:
            await proxy.event("worker_ready", count=crash)
    assert await asyncio.wait_for(proxy.process.wait(), 30) == 1
    await proxy.stop()
    loop = await proxy.event("workers_crash_loop")
    assert loop["crashes"] == 5 and loop["window_s"] == 10.0
    assert [e["status"] for e in proxy.events if e["event"] == "workers_stopped"] == [1]


async def test_workers_stop_when_the_supervisor_is_killed(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    pids = children(proxy.process.pid)
    proxy.process.kill()
    await proxy.stop()
    await wait_gone(pids)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", proxy.port)) != 0


async def test_a_tenant_registered_through_one_worker_reaches_every_worker(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    """The tenant store is one SQLite file (WAL): every worker reads it per request."""
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    config = write_config(tmp_path / "proxy.yaml", {"tenants": {"store": str(tmp_path / "tenants.db")}})
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN, "AIRGAP_PROXY_SECRET_KEY": SECRET_KEY}
    proxy = await serve_workers("--workers", "2", "--config", str(config), env=env, cwd=tmp_path)
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    assert len([e for e in proxy.events if e["event"] == "tenant_store_opened"]) == 2
    streams = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        body = provider(f"http://127.0.0.1:{upstream.port}/v1", model="m1")
        put = await request(streams, "PUT", "/api/v1/tenants/team-a/llm-provider", body, ADMIN)
        assert put.status in (200, 201), put.body
    finally:
        streams[1].close()
        await streams[1].wait_closed()

    def tenant(answer: Answer) -> None:
        assert answer.headers["x-airgap-upstream"] == "tenant:team-a"

    await assert_every_worker_answers(proxy, pids, tenant, headers={"X-Tenant-ID": "team-a"})


# --------------------------------------------------------------------------- #
# Failing to start
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain socket", "SO_REUSEPORT socket of the same user"])
def test_a_port_in_use_is_a_clean_error_before_any_worker_starts(reuse_port: bool) -> None:
    with socket.socket() as holder:
        if reuse_port:  # SO_REUSEPORT on both sides would let the workers share it: the check must not
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--workers", "2", "--port", str(port))
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"airgap-proxy: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "workers_started" not in result.stderr and "listening" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tenant_store_that_cannot_open_fails_before_any_worker_starts(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"tenants: {{store: {tmp_path / 'missing' / 'tenants.db'}}}\n")
    result = run_cli(
        "serve",
        "--workers",
        "2",
        "--port",
        str(free_port()),
        "--config",
        str(config),
        env={"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("airgap-proxy: cannot open tenant store")
    assert "listening" not in result.stderr
    assert "Traceback" not in result.stderr
    assert ADMIN_TOKEN not in result.stderr + result.stdout


# A worker that fails before it listens, whatever the reason: the supervisor is
# run with its worker body replaced (the process tests cannot otherwise make a
# worker alone fail: the supervisor checks the port and the store first).
FAILING_WORKER = """
import sys
from airgap_proxy import workers
from airgap_proxy.config import Config

def fail(*args, **kwargs):
    print("worker failed on purpose", file=sys.stderr)
    return 3

workers._serve_worker = fail
raise SystemExit(workers.supervise(Config(), 2, port=int(sys.argv[1])))
"""


def test_a_worker_that_exits_before_listening_fails_the_start() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FAILING_WORKER, str(free_port())],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "worker failed on purpose" in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = next(e for e in events if e["event"] == "workers_start_failed")
    assert failed["exit_code"] == 3
    assert [e["event"] for e in events if e["event"].startswith("workers_")] == [
        "workers_start_failed",
        "workers_stopping",
        "workers_stopped",
    ]
    assert [e["status"] for e in events if e["event"] == "workers_stopped"] == [1]
    assert "Traceback" not in result.stderr


async def test_many_workers_open_a_new_tenant_store_together(tmp_path: Path, proxies: list[ServedProxy]) -> None:
    """SQLite fails some of several connections that turn a new file into WAL at once: the supervisor creates it."""
    config = write_config(tmp_path / "proxy.yaml", {"tenants": {"store": str(tmp_path / "tenants.db")}})
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN, "AIRGAP_PROXY_SECRET_KEY": SECRET_KEY}
    proxy = await serve_workers("--workers", "8", "--config", str(config), env=env, cwd=tmp_path)
    proxies.append(proxy)
    assert len([e for e in proxy.events if e["event"] == "tenant_store_opened"]) == 8
