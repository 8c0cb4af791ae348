"""Run in a subprocess by tests/test_guard.py: the self-egress guard, installed first, in a real process.

1. Install the guard (allow_networks: 127.0.0.1/32 and ::1 only, so 127.0.0.2
   stands for the outside world), then import every module of the package.
2. A full request cycle: forward, stream, failover past a dead upstream,
   fallback, reload, shutdown. The guard must see no stray attempt.
3. Stray attempts, each of which must raise PermissionError, while a canary
   listener on 127.0.0.2 must see no connection at all.

Prints one JSON line with what happened.
"""

from __future__ import annotations

import importlib
import json
import socket
import sys
import threading
from typing import Any

from airgap_proxy.config import parse_config
from airgap_proxy.egress import guard


def no_files(path: str) -> str:
    raise FileNotFoundError(path)


POLICY = {"allow_networks": ["127.0.0.1/32", "::1/128"]}
guard.install(parse_config({"policy": POLICY}, {}, no_files).rules, enforce=True)

import pkgutil  # noqa: E402 - everything below is imported under the hook

import airgap_proxy  # noqa: E402

imported = 0
for module in pkgutil.walk_packages(airgap_proxy.__path__, "airgap_proxy."):
    if module.name.endswith("__main__"):
        continue  # running it is the CLI
    importlib.import_module(module.name)
    imported += 1

import asyncio  # noqa: E402

from aiohttp import ClientSession, web  # noqa: E402

from airgap_proxy.app import create_app  # noqa: E402
from airgap_proxy.reload import LOADER, reload_app  # noqa: E402

canary_hits: list[str] = []


def canary() -> int:
    """A listener on 127.0.0.2 that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.2", 0))
    server.listen()

    def accept() -> None:
        while True:
            conn, peer = server.accept()
            canary_hits.append(str(peer))
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1])


async def upstream_app() -> web.AppRunner:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n')
            return response
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def port_of(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


async def cycle() -> dict[str, Any]:
    upstream = await upstream_app()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    raw = {
        "policy": POLICY,
        "upstreams": [
            {"name": "dead", "base_url": f"http://127.0.0.1:{dead.getsockname()[1]}/v1", "priority": 0},
            {"name": "live", "base_url": f"http://127.0.0.1:{port_of(upstream)}/v1", "priority": 1},
        ],
    }
    config = parse_config(raw, {}, no_files)
    app = create_app(config)
    app[LOADER] = lambda: parse_config(raw, {}, no_files)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{port_of(runner)}"
    statuses = []
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    async with ClientSession() as session:
        for body in (chat, {**chat, "stream": True}, chat):
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                await resp.read()
                statuses.append((resp.status, resp.headers.get("X-Airgap-Upstream")))
        forced = {"X-Airgap-Mode": "deterministic"}
        async with session.post(f"{base}/v1/chat/completions", json=chat, headers=forced) as resp:
            statuses.append((resp.status, resp.headers.get("X-Airgap-Upstream")))
        reloaded = (await reload_app(app)).generation
        async with session.post(f"{base}/v1/chat/completions", json=chat) as resp:
            statuses.append((resp.status, resp.headers.get("X-Airgap-Upstream")))
    await runner.cleanup()
    await upstream.cleanup()
    dead.close()
    return {"statuses": statuses, "generation": reloaded}


def attempt(name: str, action: Any) -> str:
    try:
        action()
    except PermissionError as exc:
        return f"refused: {exc}"
    except OSError as exc:
        return f"not refused: {exc.__class__.__name__}"
    return "not refused"


def strays(port: int) -> dict[str, str]:
    results = {}

    def connect_raw() -> None:
        with socket.socket() as sock:
            sock.connect(("127.0.0.2", port))

    def send_udp() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x", ("127.0.0.2", port))

    def by_notation(host: str) -> None:
        # Not an address ipaddress reads, but one the C resolver turns into 127.0.0.2 (inet_aton forms).
        with socket.socket() as sock:
            sock.settimeout(1)
            sock.connect((host, port))

    results["create_connection"] = attempt("create_connection", lambda: socket.create_connection(("127.0.0.2", port)))
    results["connect"] = attempt("connect", connect_raw)
    results["sendto"] = attempt("sendto", send_udp)
    results["connect_short_form"] = attempt("short", lambda: by_notation("127.2"))
    results["connect_hex_form"] = attempt("hex", lambda: by_notation("0x7f000002"))
    results["getaddrinfo_hosted"] = attempt("getaddrinfo", lambda: socket.getaddrinfo("api.openai.com", 443))
    in_thread: list[str] = []
    thread = threading.Thread(target=lambda: in_thread.append(attempt("thread", connect_raw)))
    thread.start()
    thread.join()
    results["thread"] = in_thread[0]
    results["loopback_allowed"] = attempt("loopback", lambda: socket.create_connection(("127.0.0.1", 9)).close())
    return results


def main() -> None:
    port = canary()
    during = asyncio.run(cycle())
    counts_after_cycle = guard.counts()
    results = strays(port)
    print(
        json.dumps(
            {
                "imported": imported,
                "cycle": during,
                "counts_after_cycle": counts_after_cycle,
                "strays": results,
                "counts": guard.counts(),
                "canary_hits": canary_hits,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
