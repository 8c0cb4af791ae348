"""The Anthropic Messages surface: ``POST /v1/messages``, ``POST /v1/messages/count_tokens``,
and ``GET /v1/models`` when the request carries ``anthropic-version`` (DESIGN §7).

Upstreams that speak it (Ollama 0.14+, vLLM, llama.cpp's ``llama-server``,
LiteLLM) receive the client's bytes unchanged but for the model an alias
chose; they get their own key both as ``x-api-key`` and as a Bearer token.
Errors use Anthropic's envelope, ``{"type": "error", "error": {"type",
"message"}}``, with Anthropic's error types where one fits and
``airgap_violation`` for a refusal; a stream that fails midway ends with an
``event: error``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from airgap_proxy import payload, usage
from airgap_proxy.errors import InvalidRequest, ProxyError
from airgap_proxy.fallback import anthropic as synth
from airgap_proxy.fallback import wire
from airgap_proxy.payload import Payload
from airgap_proxy.surfaces.base import FallbackInputs, Maker, Surface

MESSAGES = "messages"
COUNT_TOKENS = "messages/count_tokens"
MODELS = "models"
VERSION_HEADER = "anthropic-version"
# Anthropic's error types by our codes, then by status; what is in neither keeps our code.
_TYPES_BY_CODE = {"overloaded": "overloaded_error", "upstream_timeout": "timeout_error"}
_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    417: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}
# What the model list says of when a model was made: the fallback's answers never carry a clock.
EPOCH = "1970-01-01T00:00:00Z"


def error_type(error: ProxyError) -> str:
    """The ``error.type`` Anthropic clients expect for ``error``."""
    if error.code == "airgap_violation":
        return error.code
    return _TYPES_BY_CODE.get(error.code) or _TYPES_BY_STATUS.get(error.status, "api_error")


def envelope(error: ProxyError) -> bytes:
    return wire.encode({"type": "error", "error": {"type": error_type(error), "message": error.message}})


def claims(endpoint: str, method: str, headers: Mapping[str, str]) -> bool:
    """Is this ``/v1/...`` request one of the Anthropic surface's?"""
    if endpoint == MESSAGES or endpoint.startswith("messages/"):
        return True
    return endpoint == MODELS and method == "GET" and VERSION_HEADER in headers


class AnthropicSurface(Surface):
    name = "anthropic"

    def parse(self, endpoint: str, method: str, body: bytes, content_type: str) -> Payload:
        if method != "POST" or endpoint not in (MESSAGES, COUNT_TOKENS):
            return payload.optional_payload(body)
        data = payload.json_object(body)
        payload.require_messages(data)
        if endpoint == MESSAGES:
            payload.require(data, "max_tokens")
            max_tokens = data["max_tokens"]
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise InvalidRequest("'max_tokens' must be a positive integer", param="max_tokens")
            return payload.model_and_stream(data)
        return Payload(model=payload.model_of(data), stream=False, data=data)

    def error_body(self, error: ProxyError) -> bytes:
        return envelope(error)

    def stream_error(self, error: ProxyError) -> bytes:
        return b"event: error\ndata: " + envelope(error) + b"\n\n"

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None, request_id: str
    ) -> list[tuple[str, str]]:
        headers = super().upstream_headers(client_headers, api_key, request_id)
        if api_key:
            headers.append(("x-api-key", api_key))
        return headers

    def body_to_send(self, endpoint: str, parsed: Payload, body: bytes, model: str | None) -> bytes:
        return payload.with_model(parsed, body, model, takes_model=endpoint in (MESSAGES, COUNT_TOKENS))

    def answers_locally(self, endpoint: str, method: str) -> bool:
        return endpoint == MODELS and method == "GET"

    def local_answer(self, endpoint: str, method: str, model_ids: list[str]) -> bytes:
        data = [{"type": "model", "id": i, "display_name": i, "created_at": EPOCH} for i in model_ids]
        return wire.encode(
            {
                "data": data,
                "has_more": False,
                "first_id": model_ids[0] if model_ids else None,
                "last_id": model_ids[-1] if model_ids else None,
            }
        )

    def can_answer(self, endpoint: str, method: str) -> bool:
        return (method == "POST" and endpoint in (MESSAGES, COUNT_TOKENS)) or self.answers_locally(endpoint, method)

    def fallback(self, endpoint: str, parsed: Payload, model: str, inputs: FallbackInputs) -> Maker:
        assert parsed.data is not None
        data, canned, caps = parsed.data, inputs.canned, inputs.caps
        if endpoint == COUNT_TOKENS:
            return lambda: [synth.count_tokens(data, caps)]
        if parsed.stream:
            return functools.partial(synth.message_stream, data, model, canned, caps)
        return lambda: [synth.message(data, model, canned, caps)]

    def streams(self, endpoint: str, parsed: Payload) -> bool:
        return parsed.stream and endpoint == MESSAGES

    def tokens(self, tail: bytes) -> tuple[int | None, int | None]:
        return usage.io_tokens(tail)


ANTHROPIC = AnthropicSurface()
