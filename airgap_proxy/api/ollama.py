"""Ollama's native routes (``/api/...`` and ``/``), served by the shared pipeline on the Ollama surface.

Model management is not a model call: ``/api/pull`` and ``/api/push`` make
the model server reach a public registry, so while air-gapped they are
refused (422 ``airgap_violation``) before anything is sent; ``/api/create``,
``/api/copy``, ``/api/delete`` and ``/api/blobs/...`` are 403 unless
``ollama.allow_management`` is on.
"""

from __future__ import annotations

from aiohttp import web

from airgap_proxy.api.admin import ExpectHandler
from airgap_proxy.audit import Action
from airgap_proxy.errors import AirgapViolation, Forbidden
from airgap_proxy.pipeline import endpoint_of, handle
from airgap_proxy.state import AUDIT_KEY, GENERATION_KEY
from airgap_proxy.surfaces import OLLAMA, SURFACE_KEY
from airgap_proxy.surfaces.ollama import REGISTRY

RUNNING = "Ollama is running"
REASON_REGISTRY = "{path} makes the model server reach a public model registry, which air-gapped mode forbids"
ROUTES = (
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
)
MANAGEMENT_ROUTES = (
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("*", "/api/blobs/{digest}"),
)


async def native(request: web.Request) -> web.StreamResponse:
    return await handle(request, OLLAMA, endpoint_of(request.rel_url.raw_path, "/"))


async def management(request: web.Request) -> web.StreamResponse:
    """Model management: refused (registry paths while air-gapped; the rest unless allowed), else proxied."""
    endpoint = endpoint_of(request.rel_url.raw_path, "/")
    request[SURFACE_KEY] = OLLAMA
    audit = request[AUDIT_KEY]
    audit.api = OLLAMA.name
    config = request[GENERATION_KEY].config
    if endpoint in REGISTRY:
        if config.airgapped:
            audit.decision = Action.BLOCK
            audit.verdict, audit.reason = "external", REASON_REGISTRY.format(path=request.path)
            raise AirgapViolation(REASON_REGISTRY.format(path=request.path))
    elif not config.ollama.allow_management:
        raise Forbidden(f"{request.path} manages the upstream's models; set ollama.allow_management to allow it")
    return await handle(request, OLLAMA, endpoint)


async def root(request: web.Request) -> web.Response:
    """What Ollama answers on ``/``: clients probe it to see the server is up."""
    return web.Response(text=RUNNING)


def add_routes(app: web.Application, expect_handler: ExpectHandler) -> None:
    for method, path in ROUTES:
        app.router.add_route(method, path, native, expect_handler=expect_handler)
    for method, path in MANAGEMENT_ROUTES:
        app.router.add_route(method, path, management, expect_handler=expect_handler)
    app.router.add_get("/", root, expect_handler=expect_handler)
