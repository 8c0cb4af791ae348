"""The catch-all route: unknown paths and methods in the OpenAI envelope.

Registered last, so that every request, even one for a path we do not serve,
goes through our ``Expect`` handler and our middleware (request id, audit).
"""

from __future__ import annotations

from aiohttp import web

from airgap_proxy.errors import MethodNotAllowed, NotFound
from airgap_proxy.metrics import CATCH_ALL, CATCH_ALL_CANONICAL

__all__ = ["CATCH_ALL", "unknown_route"]


async def unknown_route(request: web.Request) -> web.StreamResponse:
    """404 for a path no route serves; 405 when it exists for other methods."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical == CATCH_ALL_CANONICAL:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise MethodNotAllowed(
            f"Method {request.method} is not allowed here", headers={"Allow": ", ".join(sorted(allowed))}
        )
    raise NotFound(f"Unknown path: {request.path}")
