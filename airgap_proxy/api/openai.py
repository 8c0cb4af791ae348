"""The ``/v1/...`` routes: each request goes to the surface that claims it, served by the shared pipeline.

``/v1/messages...`` (and ``GET /v1/models`` with ``anthropic-version``) is the
Anthropic surface, ``/v1/responses...`` the Responses surface, everything else
OpenAI's. See :mod:`airgap_proxy.pipeline` for what happens to a request and
:mod:`airgap_proxy.surfaces` for what is each protocol's own.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from airgap_proxy.pipeline import endpoint_of, handle
from airgap_proxy.surfaces import ANTHROPIC, OPENAI, RESPONSES, Surface, anthropic, responses

ROOT = "/v1/"


def surface_for(endpoint: str, method: str, headers: Mapping[str, str]) -> Surface:
    """The surface whose protocol this ``/v1/`` request speaks."""
    if responses.claims(endpoint, method, headers):
        return RESPONSES
    if anthropic.claims(endpoint, method, headers):
        return ANTHROPIC
    return OPENAI


async def proxy_v1(request: web.Request) -> web.StreamResponse:
    endpoint = endpoint_of(request.rel_url.raw_path, ROOT)
    return await handle(request, surface_for(endpoint, request.method, request.headers), endpoint)
