"""One request on its way through the pipeline: what every stage reads and adds to."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from airgap_proxy.audit import Audit
from airgap_proxy.payload import Payload
from airgap_proxy.state import Generation
from airgap_proxy.surfaces import Surface


@dataclass(slots=True)
class Exchange:
    """The request, its pinned generation and audit record, its surface and what was parsed.

    ``model`` is the one asked for (the default applied); ``sent_model`` the
    one the chosen upstream received, when routing rewrote it; ``sent_at``
    when the request went upstream (perf_counter seconds).
    """

    request: web.Request
    gen: Generation
    audit: Audit
    surface: Surface
    endpoint: str
    payload: Payload
    body: bytes
    model: str | None
    sent_model: str | None = None
    sent_at: float | None = None
