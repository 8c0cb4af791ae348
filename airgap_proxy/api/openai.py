"""The OpenAI-compatible routes: every ``/v1/...`` request, served by the shared pipeline.

See :mod:`airgap_proxy.pipeline` for what happens to a request, and
:mod:`airgap_proxy.surfaces.openai` for what is OpenAI's own.
"""

from __future__ import annotations

from aiohttp import web

from airgap_proxy.pipeline import endpoint_of, handle
from airgap_proxy.surfaces import OPENAI

ROOT = "/v1/"


async def proxy_v1(request: web.Request) -> web.StreamResponse:
    return await handle(request, OPENAI, endpoint_of(request.rel_url.raw_path, ROOT))
