"""The Ollama native surface: ``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``, ``/api/show``, ``/api/tags``, ``/api/ps``, ``/api/version`` (DESIGN §7).

Ollama clients (``OLLAMA_HOST=http://airgap-proxy:8080``) and Open WebUI
speak it; only upstreams that speak ``ollama`` (``local-ollama`` by default)
receive it, at the upstream's ``base_url`` without its trailing ``/v1``.
Answers stream as NDJSON, by default when ``stream`` is absent. Errors are
``{"error": "<message>"}``, a refusal's text starting with
``airgap_violation``; a stream that fails midway ends with such a line.
"""

from __future__ import annotations

import functools

from airgap_proxy import payload, usage
from airgap_proxy.errors import ProxyError
from airgap_proxy.fallback import ollama as synth
from airgap_proxy.fallback import wire
from airgap_proxy.payload import Payload
from airgap_proxy.surfaces.base import FallbackInputs, Maker, Surface

NDJSON = "application/x-ndjson"
# Endpoints whose body names a model, and those the fallback answers.
_TAKES_MODEL = frozenset({"api/chat", "api/generate", "api/embed", "api/embeddings", "api/show"})
_LISTS = frozenset({"api/tags", "api/ps", "api/version"})
_ANSWERABLE = frozenset({("POST", e) for e in _TAKES_MODEL} | {("GET", e) for e in _LISTS})
# Model management: refused unless ``ollama.allow_management``; pull and push while air-gapped always.
MANAGEMENT = frozenset({"api/create", "api/copy", "api/delete"})
REGISTRY = frozenset({"api/pull", "api/push"})


def native_root(base_url: str) -> str:
    """Where Ollama's native API lives for an upstream with this ``base_url``: without its ``/v1``."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def envelope(error: ProxyError) -> bytes:
    message = f"{error.code}: {error.message}" if error.code == "airgap_violation" else error.message
    return wire.encode({"error": message})


class OllamaSurface(Surface):
    name = "ollama"
    stream_type = NDJSON

    def parse(self, endpoint: str, method: str, body: bytes, content_type: str) -> Payload:
        if method != "POST" or endpoint not in _TAKES_MODEL:
            return payload.optional_payload(body)
        data = payload.json_object(body)
        model = payload.model_of(data)
        if model is None and isinstance(data.get("name"), str):
            model = data["name"]  # /api/show and the older clients name it so
        return Payload(model=model, stream=synth.streams(endpoint, data), data=data)

    def error_body(self, error: ProxyError) -> bytes:
        return envelope(error)

    def stream_error(self, error: ProxyError) -> bytes:
        return envelope(error) + b"\n"

    def upstream_url(self, base_url: str, endpoint: str, query: str) -> str:
        return super().upstream_url(native_root(base_url), endpoint, query)

    def body_to_send(self, endpoint: str, parsed: Payload, body: bytes, model: str | None) -> bytes:
        return payload.with_model(parsed, body, model, takes_model=endpoint in _TAKES_MODEL)

    def routes_by_model(self, endpoint: str, method: str) -> bool:
        return endpoint in _TAKES_MODEL

    def can_answer(self, endpoint: str, method: str) -> bool:
        return (method, endpoint) in _ANSWERABLE

    def fallback(self, endpoint: str, parsed: Payload, model: str, inputs: FallbackInputs) -> Maker:
        ids = list(inputs.model_ids)
        if endpoint == "api/tags":
            return lambda: [synth.tags(ids)]
        if endpoint == "api/ps":
            return lambda: [synth.ps(ids)]
        if endpoint == "api/version":
            return lambda: [synth.version()]
        assert parsed.data is not None
        data, canned, caps = parsed.data, inputs.canned, inputs.caps
        if endpoint == "api/show":
            return lambda: [synth.show(data, ids)]
        if endpoint == "api/embed":
            return lambda: [synth.embed(data, model, caps)]
        if endpoint == "api/embeddings":
            return lambda: [synth.embeddings(data, model, caps)]
        chat = endpoint == "api/chat"
        if parsed.stream:
            stream = synth.chat_stream if chat else synth.generate_stream
            return functools.partial(stream, data, model, canned, caps)
        whole = synth.chat if chat else synth.generate
        return lambda: [whole(data, model, canned, caps)]

    def streams(self, endpoint: str, parsed: Payload) -> bool:
        return parsed.stream

    def tokens(self, tail: bytes) -> tuple[int | None, int | None]:
        return usage.eval_counts(tail)


OLLAMA = OllamaSurface()
