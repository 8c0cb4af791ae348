"""Soak: a steady mix of streaming and non-streaming requests through a real proxy process.

    python benchmarks/soak.py --duration 300 --rate 50

Starts a local upstream (tests/fakes.py's FakeUpstream) and ``airgap-proxy
serve`` as subprocesses on loopback, sends ``--rate`` requests per second
(every other one streaming) for ``--duration`` seconds, and restarts the
upstream ``--restarts`` times during the run (down for ``--down`` seconds
each time). It reports:

- errors: anything but a complete 200 answer (target 0);
- fallback answers (``X-Airgap-Upstream: deterministic``), counted apart:
  they are correct answers while the upstream is down;
- the proxy's VmRSS every ``--sample`` seconds (target: flat).

Exit status 1 when there were errors. ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = """
import sys
from aiohttp import web
from tests.fakes import FakeUpstream
web.run_app(FakeUpstream(stream_chunks=5).app(), host="127.0.0.1", port=int(sys.argv[1]), print=None,
            access_log=None, shutdown_timeout=2)
"""
CHAT = {"model": "soak", "messages": [{"role": "user", "content": "hello"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRGAP_PROXY_", "LLM_", "AISOC_"))}
    env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class Tally:
    upstream: int = 0
    fallback: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return self.upstream + self.fallback + self.errors


async def one(session: aiohttp.ClientSession, url: str, stream: bool, tally: Tally) -> None:
    started = time.monotonic()
    try:
        async with session.post(url, json={**CHAT, "stream": stream}) as resp:
            body = await resp.read()
            served_by = resp.headers.get("X-Airgap-Upstream", "")
            if resp.status != 200:
                tally.error(f"HTTP {resp.status}")
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.error(type(exc).__name__)
        return
    if stream and (not body.rstrip().endswith(b"data: [DONE]") or b'data: {"error"' in body):
        tally.error("stream ended without [DONE]")
        return
    tally.latencies.append(time.monotonic() - started)
    if served_by == "deterministic":
        tally.fallback += 1
    else:
        tally.upstream += 1


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="airgap-soak-"))
    upstream_port, proxy_port = free_port(), free_port()
    config = {
        "upstreams": [{"name": "local", "base_url": f"http://127.0.0.1:{upstream_port}/v1"}],
        "health": {"interval_s": 1, "timeout_s": 1, "unhealthy_after": 1, "healthy_after": 1},
        "fallback": {"mode": "deterministic"},
        "timeouts": {"connect_s": 2, "upstream_s": 10},
        "logging": {"format": "json", "level": "warning"},
    }
    (workdir / "config.yaml").write_text(json.dumps(config))
    env = clean_env()

    def start_upstream() -> subprocess.Popen[bytes]:
        log = (workdir / "upstream.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM, str(upstream_port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        wait_port(upstream_port)
        return process

    upstreams = [start_upstream()]
    proxy_log = (workdir / "proxy.log").open("ab")
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airgap_proxy",
            "serve",
            "--config",
            str(workdir / "config.yaml"),
            "--port",
            str(proxy_port),
        ],
        cwd=workdir,
        env=env,
        stdout=proxy_log,
        stderr=proxy_log,
    )
    proxy_log.close()
    wait_port(proxy_port)
    url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
    tally = Tally()
    samples: list[dict[str, Any]] = []
    restarts: list[float] = []
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    restart_at = [args.duration * (i + 1) / (args.restarts + 1) for i in range(args.restarts)]

    async def restarter(began: float) -> None:
        """Restart the upstream on schedule, while the requests keep flowing."""
        for at in restart_at:
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            restarts.append(round(time.monotonic() - began, 1))
            upstreams[0].send_signal(signal.SIGTERM)
            await loop.run_in_executor(None, upstreams[0].wait)
            await asyncio.sleep(args.down)
            upstreams[0] = await loop.run_in_executor(None, start_upstream)

    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
        ) as session:
            began = time.monotonic()
            restarting = loop.create_task(restarter(began))
            next_sample = 0.0
            sent = 0
            while (elapsed := time.monotonic() - began) < args.duration:
                if elapsed >= next_sample:
                    samples.append(
                        {
                            "t_s": round(elapsed),
                            "rss_kb": rss_kb(proxy.pid),
                            "requests": tally.total,
                            "errors": tally.errors,
                            "fallback": tally.fallback,
                        }
                    )
                    print(json.dumps(samples[-1]), flush=True)
                    next_sample += args.sample
                # A steady rate: catch up on the schedule, never burst past it.
                due = int((time.monotonic() - began) * args.rate)
                while sent < due:
                    task = loop.create_task(one(session, url, sent % 2 == 1, tally))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(1 / args.rate)
            await restarting
            if pending:
                await asyncio.wait(pending, timeout=30)
            await asyncio.sleep(1)
            samples.append(
                {
                    "t_s": round(time.monotonic() - began),
                    "rss_kb": rss_kb(proxy.pid),
                    "requests": tally.total,
                    "errors": tally.errors,
                    "fallback": tally.fallback,
                }
            )
            print(json.dumps(samples[-1]), flush=True)
    finally:
        for process in (proxy, upstreams[0]):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    latencies = sorted(tally.latencies)

    def percentile(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else 0.0

    rss = [s["rss_kb"] for s in samples]
    steady = rss[1:] or rss
    return {
        "duration_s": args.duration,
        "rate_per_s": args.rate,
        "requests": tally.total,
        "served_by_upstream": tally.upstream,
        "fallback_answers": tally.fallback,
        "errors": tally.errors,
        "error_kinds": tally.error_kinds,
        "upstream_restarts_at_s": restarts,
        "latency_ms": {"p50": percentile(0.5), "p99": percentile(0.99), "max": percentile(1.0)},
        "rss_kb": {"first": rss[0], "after_warmup": steady[0], "last": rss[-1], "max": max(rss)},
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="seconds (default 300)")
    parser.add_argument("--rate", type=float, default=50, help="requests per second (default 50)")
    parser.add_argument("--restarts", type=int, default=3, help="upstream restarts during the run (default 3)")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the upstream stays down (default 2)")
    parser.add_argument("--sample", type=float, default=10, help="seconds between RSS samples (default 10)")
    parser.add_argument("--json", type=Path, help="write the summary to this file")
    args = parser.parse_args()
    summary = asyncio.run(soak(args))
    text = json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
