"""The API surfaces: one adapter per protocol an agent speaks (DESIGN §7).

Each adapter (:class:`Surface`) supplies to the shared pipeline what its
protocol does differently: parsing, error envelopes, upstream addressing and
authentication, and its fallback synthesizer. :mod:`.openai` (chat
completions, completions, embeddings, models), :mod:`.responses` (the OpenAI
Responses API), :mod:`.anthropic` (Anthropic Messages), :mod:`.ollama`
(Ollama's native API).
"""

from __future__ import annotations

from aiohttp import web

from airgap_proxy.surfaces import anthropic, ollama, responses
from airgap_proxy.surfaces.anthropic import ANTHROPIC
from airgap_proxy.surfaces.base import JSON, SSE, FallbackInputs, Maker, Surface
from airgap_proxy.surfaces.ollama import OLLAMA
from airgap_proxy.surfaces.openai import OPENAI, OpenAISurface
from airgap_proxy.surfaces.responses import RESPONSES

# The surface a request is served on, once known: its errors use that surface's envelope.
SURFACE_KEY = web.RequestKey("surface", Surface)

__all__ = [
    "ANTHROPIC",
    "JSON",
    "OLLAMA",
    "OPENAI",
    "RESPONSES",
    "SSE",
    "SURFACE_KEY",
    "FallbackInputs",
    "Maker",
    "OpenAISurface",
    "Surface",
    "anthropic",
    "ollama",
    "responses",
]
