"""The OpenAI surface: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``GET /v1/models``, and every other ``/v1/...`` path passed through."""

from __future__ import annotations

import functools
import json

from airgap_proxy import fallback, payload
from airgap_proxy.errors import ProxyError
from airgap_proxy.payload import Payload
from airgap_proxy.surfaces.base import FallbackInputs, Maker, Surface

_ANSWERABLE = frozenset({("POST", "chat/completions"), ("POST", "completions"), ("POST", "embeddings")})
MODELS = ("GET", "models")
OWNER = "airgap-proxy"


def envelope(error: ProxyError) -> bytes:
    """``{"error": {"message", "type", "code", "param"}}``."""
    return json.dumps(error.envelope(), separators=(",", ":")).encode()


class OpenAISurface(Surface):
    name = "openai"

    def parse(self, endpoint: str, method: str, body: bytes, content_type: str) -> Payload:
        parsed = payload.parse_payload(endpoint, method, body)
        if parsed.data is None and body:
            payload.refuse_form_hints(body, content_type)
        return parsed

    def error_body(self, error: ProxyError) -> bytes:
        return envelope(error)

    def stream_error(self, error: ProxyError) -> bytes:
        return b"data: " + envelope(error) + b"\n\n"

    def body_to_send(self, endpoint: str, parsed: Payload, body: bytes, model: str | None) -> bytes:
        return payload.body_to_send(endpoint, parsed, body, model)

    def answers_locally(self, endpoint: str, method: str) -> bool:
        return (method, endpoint) == MODELS

    def local_answer(self, endpoint: str, method: str, model_ids: list[str]) -> bytes:
        data = [{"id": i, "object": "model", "created": 0, "owned_by": OWNER} for i in model_ids]
        return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()

    def can_answer(self, endpoint: str, method: str) -> bool:
        return (method, endpoint) in _ANSWERABLE or (method, endpoint) == MODELS

    def fallback(self, endpoint: str, parsed: Payload, model: str, inputs: FallbackInputs) -> Maker:
        assert parsed.data is not None
        data, canned, caps = parsed.data, inputs.canned, inputs.caps
        if endpoint == "embeddings":
            return lambda: [fallback.embeddings(data, model, caps)]
        chat = endpoint == "chat/completions"
        if parsed.stream:
            stream = fallback.chat_completion_stream if chat else fallback.completion_stream
            return functools.partial(stream, data, model, canned, caps)
        make = fallback.chat_completion if chat else fallback.completion
        return lambda: [make(data, model, canned, caps)]

    def streams(self, endpoint: str, parsed: Payload) -> bool:
        return parsed.stream and endpoint != "embeddings"


OPENAI = OpenAISurface()
