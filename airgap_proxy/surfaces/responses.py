"""The OpenAI Responses surface: ``POST /v1/responses``, ``POST /v1/responses/input_tokens``,
``GET``/``DELETE /v1/responses/{id}`` (DESIGN §7).

A stored response lives on the upstream that made it: ``GET`` and ``DELETE``
by id are not routed by model but asked of the upstreams that speak the
surface in turn, a 404 passing the request on to the next (up to two, as
every attempt plan), so no replica needs to remember who served what.

Codex CLI, the Agents SDK and the Vercel AI SDK 5 speak it; Ollama 0.13.3+,
vLLM, llama.cpp's ``llama-server`` and LiteLLM serve it. Routing, refusals
and errors are the OpenAI surface's (same envelope); the fallback answers
with Response objects and their typed event stream, and a stream that fails
midway ends with an ``error`` event, never a ``response.completed``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from airgap_proxy import payload, usage
from airgap_proxy.errors import ProxyError
from airgap_proxy.fallback import responses as synth
from airgap_proxy.fallback import wire
from airgap_proxy.payload import Payload
from airgap_proxy.surfaces.base import FallbackInputs, Maker, Surface
from airgap_proxy.surfaces.openai import envelope

ENDPOINT = "responses"
INPUT_TOKENS = "responses/input_tokens"
_TAKES_MODEL = (ENDPOINT, INPUT_TOKENS)


def claims(endpoint: str, method: str, headers: Mapping[str, str]) -> bool:
    """Is this ``/v1/...`` request one of the Responses surface's?"""
    return endpoint == ENDPOINT or endpoint.startswith("responses/")


class ResponsesSurface(Surface):
    name = "responses"

    def parse(self, endpoint: str, method: str, body: bytes, content_type: str) -> Payload:
        if method != "POST" or endpoint not in _TAKES_MODEL:
            return payload.optional_payload(body)
        data = payload.json_object(body)
        if endpoint == INPUT_TOKENS:
            return Payload(model=payload.model_of(data), stream=False, data=data)
        return payload.model_and_stream(data)

    def routes_by_model(self, endpoint: str, method: str) -> bool:
        return endpoint in _TAKES_MODEL

    def passes_on(self, endpoint: str, method: str, status: int) -> bool:
        # A stored response lives on the upstream that made it: the others answer 404.
        return status == 404 and method in ("GET", "DELETE") and endpoint not in _TAKES_MODEL

    def error_body(self, error: ProxyError) -> bytes:
        return envelope(error)

    def stream_error(self, error: ProxyError) -> bytes:
        event = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return b"event: error\ndata: " + wire.encode(event) + b"\n\n"

    def body_to_send(self, endpoint: str, parsed: Payload, body: bytes, model: str | None) -> bytes:
        return payload.with_model(parsed, body, model, takes_model=endpoint in _TAKES_MODEL)

    def can_answer(self, endpoint: str, method: str) -> bool:
        return method == "POST" and endpoint in _TAKES_MODEL

    def fallback(self, endpoint: str, parsed: Payload, model: str, inputs: FallbackInputs) -> Maker:
        assert parsed.data is not None
        data, canned, caps = parsed.data, inputs.canned, inputs.caps
        if endpoint == INPUT_TOKENS:
            return lambda: [synth.input_tokens(data, caps)]
        if parsed.stream:
            return functools.partial(synth.response_stream, data, model, canned, caps)
        return lambda: [synth.response(data, model, canned, caps)]

    def streams(self, endpoint: str, parsed: Payload) -> bool:
        return parsed.stream and endpoint == ENDPOINT

    def tokens(self, tail: bytes) -> tuple[int | None, int | None]:
        return usage.io_tokens(tail)


RESPONSES = ResponsesSurface()
