"""The reference: a minimal aiohttp + uvloop pass-through, with nothing else on its path.

Not product code. It is the floor the issue measures airgap-proxy against:
one shared keep-alive ``ClientSession``, the body read whole and forwarded,
the response relayed chunk by chunk. No policy, no routing, no header
hygiene, no log, no metrics.

    python benchmarks/passthrough.py PORT UPSTREAM_BASE_URL
"""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    url = request.app["base"] + request.path_qs
    async with session.request(request.method, url, data=body, headers=headers) as upstream:
        response = web.StreamResponse(
            status=upstream.status, headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def on_startup(app: web.Application) -> None:
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False, skip_auto_headers=("User-Agent",)
    )


async def on_cleanup(app: web.Application) -> None:
    await app[SESSION].close()


def main() -> None:
    port, base = int(sys.argv[1]), sys.argv[2].rstrip("/")
    app = web.Application()
    app["base"] = base.removesuffix("/v1")
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", relay)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
