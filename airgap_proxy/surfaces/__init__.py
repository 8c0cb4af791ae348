"""The API surfaces: one adapter per protocol an agent speaks (DESIGN §7).

Each adapter (:class:`Surface`) supplies to the shared pipeline what its
protocol does differently: parsing, error envelopes, upstream addressing and
authentication, and its fallback synthesizer.
"""

from __future__ import annotations

from aiohttp import web

from airgap_proxy.surfaces.base import JSON, SSE, FallbackInputs, Maker, Surface
from airgap_proxy.surfaces.openai import OPENAI, OpenAISurface

# The surface a request is served on, once known: its errors use that surface's envelope.
SURFACE_KEY = web.RequestKey("surface", Surface)

__all__ = ["JSON", "OPENAI", "SSE", "SURFACE_KEY", "FallbackInputs", "Maker", "OpenAISurface", "Surface"]
