"""Proxy overhead benchmark: direct to a fast upstream vs through airgap-proxy.

Not a test. Run from the repository root:

    python benchmarks/bench_proxy.py [--requests 3000] [--concurrency 64]

It starts a minimal OpenAI-shaped upstream (aiohttp, pinned to CPU 1 when
``taskset`` exists), the proxy with ``airgap-proxy serve`` (pinned to CPU 0),
and drives load from this process. It prints p50/p99 latency and requests/s
for each scenario, direct and proxied, and the added latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()
STREAM = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello"}]}).encode()

UPSTREAM = r"""
import asyncio, json, sys
from aiohttp import web
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
CHUNK = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
async def chat(request):
    data = await request.read()
    if b'"stream": true' in data:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(20):
            await resp.write(CHUNK)
        await resp.write(b"data: [DONE]\n\n")
        return resp
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/v1/models", lambda r: web.json_response({"object": "list", "data": []}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


async def wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def one(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool) -> tuple[float, float]:
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        first = None
        async for _chunk in resp.content.iter_any():
            if first is None:
                first = time.perf_counter()
        done = time.perf_counter()
    assert resp.status == 200, resp.status
    return (first or done) - started, done - started


async def scenario(url: str, body: bytes, *, stream: bool, total: int, concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    ttfb: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(200, total)):  # warm-up
            await one(session, url, body, stream)
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                first, done = await one(session, url, body, stream)
                ttfb.append(first)
                latencies.append(done)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    ttfb.sort()
    return {
        "rps": total / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "ttfb_p50_ms": statistics.median(ttfb) * 1000,
    }


async def run(args: argparse.Namespace) -> None:
    up_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    upstream = subprocess.Popen(pinned(1, [sys.executable, "-c", UPSTREAM, str(up_port)]), env=env)
    proxy_env = {
        **env,
        "LLM_BASE_URL": f"http://127.0.0.1:{up_port}/v1",
        "AIRGAP_PROXY_PORT": str(proxy_port),
        "AISOC_AIRGAPPED": "true",
    }
    log = open(os.devnull, "w")  # noqa: SIM115 - closed below
    proxy = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "airgap_proxy", "serve"]), env=proxy_env, stderr=log, cwd=ROOT
    )
    try:
        await wait_ready(f"http://127.0.0.1:{up_port}/v1/models")
        await wait_ready(f"http://127.0.0.1:{proxy_port}/healthz")
        rows = []
        for name, body, stream, conc in (
            ("chat c=1", CHAT, False, 1),
            (f"chat c={args.concurrency}", CHAT, False, args.concurrency),
            ("stream(20 chunks) c=1", STREAM, True, 1),
            ("stream(20 chunks) c=32", STREAM, True, 32),
        ):
            total = args.requests if conc > 1 else max(500, args.requests // 4)
            direct = await scenario(
                f"http://127.0.0.1:{up_port}/v1/chat/completions", body, stream=stream, total=total, concurrency=conc
            )
            proxied = await scenario(
                f"http://127.0.0.1:{proxy_port}/v1/chat/completions", body, stream=stream, total=total, concurrency=conc
            )
            rows.append((name, direct, proxied))
        print(
            f"{'scenario':<24}{'direct rps':>12}{'proxy rps':>12}{'p50 added ms':>14}{'ttfb added ms':>15}"
            f"{'proxy p99 ms':>14}"
        )
        for name, direct, proxied in rows:
            print(
                f"{name:<24}{direct['rps']:>12.0f}{proxied['rps']:>12.0f}"
                f"{proxied['p50_ms'] - direct['p50_ms']:>14.3f}{proxied['ttfb_p50_ms'] - direct['ttfb_p50_ms']:>15.3f}"
                f"{proxied['p99_ms']:>14.3f}"
            )
    finally:
        for process in (proxy, upstream):
            process.send_signal(signal.SIGINT)
        for process in (proxy, upstream):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
