"""The egress canary: a real "outside" host in its own network namespace must see nothing.

Namespace A holds the canary at TEST-NET address 203.0.113.10 (and its NAT64
form 64:ff9b::cb71:a0a): it records every TCP connection and every DNS
datagram it receives. Namespace B holds the proxy, a local upstream on
127.0.0.1, a veth link to A (so the canary is routable, and B's default route
and name server point at it), and a hosts file mapping ``canary.test`` to it.
The proxy is driven through every path that could open a connection (default
upstream, routed upstreams, failover, fallback, health probes, tenant
providers through the admin API, forward-proxy tunnels and absolute-form
requests) with the canary written in every notation
the policy knows. The canary must record zero attempts, while the local
upstream keeps answering; then a control connection from B proves the canary
would have seen one.

A stray connection from inside a process under the self-egress guard is
refused and never reaches the canary either.

A third namespace with nothing but loopback shows that start-up, with a
configuration naming only external upstreams, makes no outbound attempt at
all (every ``connect``/``sendto`` of the process, seen by strace).

Needs root and ``ip`` (iproute2); strace for the syscall audits. Skips with the
reason otherwise.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROXY_ENV_VARS

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
CANARY_V4 = "203.0.113.10"
CANARY_V6 = "64:ff9b::cb71:a0a"
CANARY_PORT = 8000
PROXY_PORT = 8080
LOCAL_PORT = 9000
GONE_PORT = 9001
ADMIN_TOKEN = "canary-admin-token-0123456789"
SECRET_KEY = "canary-secret-key-0123456789abcdef"
# Every way the policy knows to write the canary's address or name.
CANARY_HOSTS = (
    "203.0.113.10",
    "3405803786",
    "0xcb.0x71.0xa.0xa",
    "0xcb710a0a",
    "0313.0161.012.012",
    "0313.0x71.10.012",
    "203.113.2570",
    "203.7408138",
    "[::ffff:203.0.113.10]",
    "[::ffff:cb71:a0a]",
    "[64:ff9b::cb71:a0a]",
    "[64:ff9b::203.0.113.10]",
    "[::203.0.113.10]",
    "canary.test",
    "CANARY.TEST.",
    "ｃａｎａｒｙ.test",
    "canary6.test",
    # IPv4-compatible IPv6 embeds a local IPv4 but is routed as IPv6, off the host (to the canary here).
    "[::127.0.0.1]",
    "[::10.0.0.5]",
    "[::192.168.1.1]",
    "[0:0:0:0:0:0:7f00:1]",
    "compat6.test",
)
# IPv4-compatible addresses the canary also holds: B's IPv6 default route leads to it.
COMPAT_ADDRESSES = ("::7f00:1", "::a00:5", "::c0a8:101")

CANARY_SCRIPT = """
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(128)
    while True:
        c, peer = s.accept(); log.write(f"tcp {port} {peer[0]}\\n"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(4096); log.write(f"udp {port} {peer[0]}\\n")
for port in (80, 443, 8000):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
threading.Thread(target=udp, args=(53,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

UPSTREAM_SCRIPT = """
import sys
from aiohttp import web
from tests.fakes import FakeUpstream
web.run_app(FakeUpstream().app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


# --------------------------------------------------------------------------- namespaces


def run(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=timeout)


def netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"agp{os.getpid()}probe"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        return f"ip netns add failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=10)
    return None


class Namespaces:
    """Namespaces, veth links and /etc/netns files created by this test, removed in :meth:`close`."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.etc: list[Path] = []
        self.processes: list[subprocess.Popen[str]] = []

    def add(self, suffix: str, hosts: str = "", resolv: str = "") -> str:
        name = f"agp{os.getpid()}{suffix}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        # `ip netns exec` bind-mounts /etc/netns/<name>/* over /etc/*.
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        self.etc.append(etc)
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + hosts)
        (etc / "resolv.conf").write_text(resolv or "nameserver 127.0.0.1\n")
        return name

    def exec(self, ns: str, *args: str, log: Path | None = None, env: dict[str, str] | None = None) -> Any:
        sink = log.open("a") if log is not None else None
        try:
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args],
                cwd=ROOT,
                env=env,
                stdout=sink or subprocess.DEVNULL,
                stderr=sink or subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        finally:
            if sink is not None:
                sink.close()
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        for name in self.names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
        for etc in self.etc:
            shutil.rmtree(etc, ignore_errors=True)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.close()


def in_ns(ns: str, code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_listening(ns: str, port: int, process: subprocess.Popen[str], log: Path) -> None:
    code = f"""
import socket, time
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", {port})) == 0:
            raise SystemExit(0)
    time.sleep(0.05)
raise SystemExit(1)
"""
    result = in_ns(ns, code)
    assert result.returncode == 0 and process.poll() is None, log.read_text()[-3000:] if log.exists() else ""


def proxy_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def proxy_command(config: Path, strace_log: Path | None) -> list[str]:
    serve = [sys.executable, "-m", "airgap_proxy", "serve", "--config", str(config), "--port", str(PROXY_PORT)]
    if strace_log is None:
        return serve
    return ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(strace_log), *serve]


_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def outbound_targets(strace_log: Path) -> list[str]:
    """Every non-loopback address the traced process tried to reach (connect, sendto, sendmsg)."""
    seen = []
    for line in strace_log.read_text().splitlines():
        for v4, v6 in _ADDRESS.findall(line):
            address = v4 or v6
            if address in ("0.0.0.0", "::"):
                continue  # AF_UNSPEC-style disconnects of UDP sockets
            if address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1"):
                continue
            seen.append(line)
    return seen


# --------------------------------------------------------------------------- the driver (runs inside B)


def drive(base_port: int) -> dict[str, Any]:
    """The whole scenario, from inside namespace B; returns what it saw."""

    def call(method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", base_port, timeout=15)
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return response.status, parsed, response.getheader("X-Airgap-Upstream")

    def chat(model: str, **headers: str) -> tuple[int, Any, Any]:
        return call(
            "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]}, headers
        )

    def code(body: Any) -> Any:
        return body.get("error", {}).get("code") if isinstance(body, dict) else body

    out: dict[str, Any] = {"local": [], "routed": {}, "tenant": {}}

    def local() -> None:
        status, _body, upstream = chat("local")
        out["local"].append([status, upstream])

    local()
    for index, host in enumerate(CANARY_HOSTS):
        status, body, upstream = chat(f"canary-{index}")
        out["routed"][host] = [status, code(body) or upstream]
        local()
    status, body, upstream = chat("via-default")
    out["default"] = [status, code(body) or upstream]
    status, body, upstream = chat("ha")
    out["failover_up"] = [status, upstream]
    status, body, upstream = chat("fb")
    out["fallback_ip_backup"] = [status, upstream]
    status, body, upstream = chat("fb2")
    out["fallback_name_backup"] = [status, upstream or code(body)]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    provider_path = "/api/v1/tenants/t-canary/llm-provider"
    for host in CANARY_HOSTS:
        provider = {
            "provider_type": "local-openai-compatible",
            "base_url": f"http://{host}:{CANARY_PORT}/v1",
            "model": "m",
            "api_key": "sk-tenant-canary-0123456789",
        }
        put_status, put_body, _ = call("PUT", provider_path, provider, admin)
        verify_status, _, _ = call("PUT", provider_path + "?verify=true", provider, admin)
        get_status, _, _ = call("GET", provider_path, None, admin)
        out["tenant"][host] = [put_status, code(put_body), verify_status, get_status]
        local()
    provider = {
        "provider_type": "local-openai-compatible",
        "base_url": f"http://127.0.0.1:{LOCAL_PORT}/v1",
        "model": "m",
    }
    put_status, _, _ = call("PUT", "/api/v1/tenants/t-local/llm-provider?verify=true", provider, admin)
    status, _, upstream = chat("m", **{"X-Tenant-ID": "t-local"})
    out["tenant_local"] = [put_status, status, upstream]
    out["status"] = call("GET", "/api/v1/llm/status")[0]
    # The forward-proxy backstop: a tunnel or an absolute-form request to the canary, in every notation.
    out["tunnel"], out["absolute"] = {}, {}
    for host in CANARY_HOSTS:
        out["tunnel"][host] = proxy_request(
            base_port, f"CONNECT {host}:{CANARY_PORT} HTTP/1.1", f"{host}:{CANARY_PORT}"
        )
        target = f"GET http://{host}:{CANARY_PORT}/v1/models HTTP/1.1"
        out["absolute"][host] = proxy_request(base_port, target, f"{host}:{CANARY_PORT}")
        local()
    out["tunnel_local"] = local_tunnel(base_port)
    time.sleep(1.5)  # let the health probes run a few more rounds against every upstream
    local()
    return out


# --------------------------------------------------------------------------- the tests


def proxy_request(port: int, request_line: str, host: str) -> int:
    """Send one forward-proxy request head to the proxy; the status it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(f"{request_line}\r\nHost: {host}\r\n\r\n".encode())
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    return int(head.split()[1])


def local_tunnel(port: int) -> list[Any]:
    """A tunnel to the local upstream, and one request through it: both must work."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        target = f"127.0.0.1:{LOCAL_PORT}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        established = sock.recv(65536).split(b"\r\n", 1)[0]
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return [int(established.split()[1]), int(answer.split(b"\r\n", 1)[0].split()[1])]


def canary_config(workdir: Path) -> Path:
    upstreams: list[dict[str, Any]] = [
        {"name": "local", "base_url": f"http://127.0.0.1:{LOCAL_PORT}/v1", "models": ["local", "ha"]},
        {"name": "gone", "base_url": f"http://127.0.0.1:{GONE_PORT}/v1", "models": ["fb", "fb2"]},
        # LLM_BASE_URL (the canary, by name) replaces this one's URL and keeps its models.
        {"name": "default", "base_url": f"http://127.0.0.1:{LOCAL_PORT}/v1", "models": ["via-default"]},
        {
            "name": "backup-ip",
            "base_url": f"http://{CANARY_V4}:{CANARY_PORT}/v1",
            "models": ["ha", "fb"],
            "priority": 1,
        },
        {
            "name": "backup-name",
            "base_url": f"http://canary.test:{CANARY_PORT}/v1",
            "models": ["ha", "fb2"],
            "priority": 1,
        },
    ]
    upstreams += [
        {"name": f"canary{i}", "base_url": f"http://{host}:{CANARY_PORT}/v1", "models": [f"canary-{i}"]}
        for i, host in enumerate(CANARY_HOSTS)
    ]
    config = {
        "upstreams": upstreams,
        "health": {"interval_s": 0.3, "timeout_s": 1, "unhealthy_after": 2},
        "fallback": {"mode": "deterministic"},
        "tenants": {"store": str(workdir / "tenants.db")},
        "timeouts": {"connect_s": 2, "upstream_s": 10},
        "logging": {"format": "json", "level": "info"},
        "forward_proxy": {"enabled": True, "allow_ports": [CANARY_PORT, LOCAL_PORT, 443, 80]},
    }
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))
    return path


def test_the_canary_sees_nothing_while_local_traffic_flows(netns: Namespaces, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    pid = os.getpid()
    hosts = f"{CANARY_V4} canary.test\n{CANARY_V6} canary6.test\n::127.0.0.1 compat6.test\n"
    outside = netns.add("a")
    inside = netns.add("b", hosts=hosts, resolv=f"nameserver {CANARY_V4}\n")
    veth_a, veth_b = f"agp{pid}va"[-15:], f"agp{pid}vb"[-15:]
    run("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
    run("ip", "link", "set", veth_a, "netns", outside)
    run("ip", "link", "set", veth_b, "netns", inside)
    for ns, dev, v4, v6 in (
        (outside, veth_a, f"{CANARY_V4}/24", f"{CANARY_V6}/96"),
        (inside, veth_b, "203.0.113.2/24", "64:ff9b::2/96"),
    ):
        run("ip", "netns", "exec", ns, "ip", "addr", "add", v4, "dev", dev)
        run("ip", "netns", "exec", ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
        run("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
    for address in COMPAT_ADDRESSES:
        run("ip", "netns", "exec", outside, "ip", "-6", "addr", "add", f"{address}/128", "dev", veth_a, "nodad")
    # Everything B sends anywhere but loopback ends up at the canary, over IPv4 and IPv6.
    run("ip", "netns", "exec", inside, "ip", "route", "add", "default", "via", CANARY_V4)
    run("ip", "netns", "exec", inside, "ip", "-6", "route", "add", "default", "via", CANARY_V6)

    canary_log = tmp_path / "canary.log"
    canary_log.touch()
    canary = netns.exec(outside, sys.executable, "-c", CANARY_SCRIPT, str(canary_log), log=tmp_path / "canary.out")
    upstream_log = tmp_path / "upstream.log"
    upstream = netns.exec(
        inside, sys.executable, "-c", UPSTREAM_SCRIPT, str(LOCAL_PORT), log=upstream_log, env=proxy_env()
    )
    wait_listening(inside, LOCAL_PORT, upstream, upstream_log)
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "canary.out").read_text():
        assert canary.poll() is None and time.monotonic() < deadline, "canary did not start"
        time.sleep(0.05)

    strace_log = tmp_path / "strace.log" if shutil.which("strace") else None
    proxy_log = tmp_path / "proxy.log"
    env = proxy_env(
        AIRGAP_PROXY_ADMIN_TOKEN=ADMIN_TOKEN,
        AIRGAP_PROXY_SECRET_KEY=SECRET_KEY,
        LLM_BASE_URL=f"http://canary.test:{CANARY_PORT}/v1",
    )
    proxy = netns.exec(inside, *proxy_command(canary_config(tmp_path), strace_log), log=proxy_log, env=env)
    wait_listening(inside, PROXY_PORT, proxy, proxy_log)

    driver = in_ns(
        inside, f"import json, tests.test_canary as t; print(json.dumps(t.drive({PROXY_PORT})))", timeout=120
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    seen = json.loads(driver.stdout)
    stop(proxy)

    # The local upstream kept answering throughout.
    assert seen["local"] and all(entry == [200, "local"] for entry in seen["local"]), seen["local"]
    assert seen["failover_up"] == [200, "local"]
    assert seen["fallback_ip_backup"] == [200, "deterministic"]
    # A name checked at connect time: refused (422) on the second attempt, or already marked unhealthy.
    assert seen["fallback_name_backup"] in ([422, "airgap_violation"], [200, "deterministic"]), seen
    # Literals are refused at load (422 always). Names are checked at connect time: 422, or, once the
    # refused health probes have marked the upstream unhealthy, the deterministic fallback.
    refused = ([422, "airgap_violation"], [200, "deterministic"])
    for host, result in seen["routed"].items():
        expected = refused[:1] if host[0].isdigit() or host.startswith("[") else refused
        assert result in expected, (host, result)
    assert seen["default"] in refused
    for host, (put, code, put_verify, get) in seen["tenant"].items():
        assert (put, code, put_verify, get) == (422, "airgap_violation", 422, 404), host
    assert seen["tenant_local"] == [201, 200, "tenant:t-local"]
    # The backstop refused every tunnel and absolute-form request to the canary, and tunnels locally.
    # (A name in raw non-ASCII is no valid request line at all: 400 from the HTTP parser, refused as well.)
    for kind in ("tunnel", "absolute"):
        wrong = {h: c for h, c in seen[kind].items() if c != (403 if h.isascii() else 400)}
        assert not wrong, (kind, wrong)
    assert seen["tunnel_local"] == [200, 200]
    assert seen["status"] == 200

    # The canary saw nothing, and nothing left B's loopback at the syscall level either.
    assert canary_log.read_text() == "", canary_log.read_text()
    if strace_log is not None:
        assert outbound_targets(strace_log) == []
        assert "127.0.0.1" in strace_log.read_text()  # the trace did capture the local traffic

    # The self-egress guard, as serve installs it: a stray connection from inside the process to the
    # canary is refused before the system call, and logged with the module that asked.
    stray = in_ns(
        inside,
        "import socket\n"
        "from airgap_proxy.config import parse_config\n"
        "from airgap_proxy.egress import guard\n"
        "guard.install(parse_config({}, {}, lambda path: '').rules, enforce=True)\n"
        "try:\n"
        f"    socket.create_connection(({CANARY_V4!r}, {CANARY_PORT}), timeout=5)\n"
        "    print('connected')\n"
        "except PermissionError as exc:\n"
        "    print('refused:', exc)\n",
    )
    assert stray.returncode == 0, stray.stderr
    assert "refused: airgap-proxy refused socket.connect to 203.0.113.10" in stray.stdout, stray.stdout
    assert "connected" not in stray.stdout
    assert "self_egress_refused" in stray.stdout + stray.stderr and "caller=__main__" in stray.stdout + stray.stderr
    assert canary_log.read_text() == "", canary_log.read_text()

    # Control: from B the canary is reachable, by address, by name, by its NAT64 form and by the
    # IPv4-compatible forms of local addresses, and it records.
    controls = (CANARY_V4, "canary.test", CANARY_V6, "::127.0.0.1", "compat6.test")
    control = in_ns(
        inside,
        "import socket\n"
        f"for host in {controls!r}:\n"
        f"    socket.create_connection((host, {CANARY_PORT}), timeout=5).close()\n",
    )
    assert control.returncode == 0, control.stderr
    deadline = time.monotonic() + 5
    while len(canary_log.read_text().splitlines()) < len(controls):
        assert time.monotonic() < deadline, canary_log.read_text()
        time.sleep(0.05)
    assert len(canary_log.read_text().splitlines()) == len(controls)


def test_start_up_makes_no_outbound_attempt(netns: Namespaces, tmp_path: Path) -> None:
    """Loopback only: the proxy starts, serves, probes, and never tries to reach anything else."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    os.chmod(tmp_path, 0o755)
    alone = netns.add("c", hosts=f"{CANARY_V4} canary.test\n", resolv=f"nameserver {CANARY_V4}\n")
    config = {
        "upstreams": [
            {"name": "ip", "base_url": f"http://{CANARY_V4}:{CANARY_PORT}/v1"},
            {"name": "nat64", "base_url": f"http://[{CANARY_V6}]:{CANARY_PORT}/v1"},
            {"name": "name", "base_url": f"http://canary.test:{CANARY_PORT}/v1"},
            {"name": "hosted", "base_url": "https://api.openai.com/v1"},
            {"name": "hosted-type", "provider_type": "openai", "base_url": f"http://127.0.0.1:{LOCAL_PORT}/v1"},
        ],
        "health": {"interval_s": 0.3, "timeout_s": 1},
        "tenants": {"store": str(tmp_path / "tenants.db")},
        "logging": {"format": "json", "level": "info"},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(config))
    strace_log = tmp_path / "strace.log"
    proxy_log = tmp_path / "proxy.log"
    env = proxy_env(LLM_BASE_URL=f"http://{CANARY_V4}:{CANARY_PORT}/v1")
    proxy = netns.exec(alone, *proxy_command(config_path, strace_log), log=proxy_log, env=env)
    wait_listening(alone, PROXY_PORT, proxy, proxy_log)
    served = in_ns(
        alone,
        "import http.client, json\n"
        f"c = http.client.HTTPConnection('127.0.0.1', {PROXY_PORT}, timeout=10)\n"
        "body = json.dumps({'model': 'x', 'messages': [{'role': 'user', 'content': 'hi'}]})\n"
        "c.request('POST', '/v1/chat/completions', body=body)\n"
        "print(c.getresponse().status)\n",
    )
    assert served.stdout.strip() == "422", served.stderr
    time.sleep(1.0)  # several probe rounds
    assert proxy.poll() is None, proxy_log.read_text()[-3000:]
    stop(proxy)
    events = [json.loads(line)["event"] for line in proxy_log.read_text().splitlines() if line.startswith("{")]
    assert "starting" in events and "listening" in events
    assert outbound_targets(strace_log) == []

    # Control: the same audit does catch an outbound attempt.
    control_log = tmp_path / "control.log"
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            alone,
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=connect",
            "-o",
            str(control_log),
            sys.executable,
            "-c",
            f"import socket\ntry: socket.create_connection(('{CANARY_V4}', 80), timeout=1)\nexcept OSError: pass",
        ],
        check=True,
        timeout=30,
    )
    assert len(outbound_targets(control_log)) == 1


if __name__ == "__main__":  # pragma: no cover - used by the driver step through `python -c`
    print(json.dumps(drive(int(sys.argv[1]))))
