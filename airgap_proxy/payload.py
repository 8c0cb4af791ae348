"""What the proxy needs to know about an OpenAI request body (pure).

The body is forwarded as the original bytes; it is only re-serialised when the
model name must change (default model on an endpoint that takes one, alias)
or a routing hint must go.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from airgap_proxy.errors import InvalidRequest

# Endpoint (path after /v1/) -> field that must be present.
REQUIRED_FIELDS = {
    "chat/completions": "messages",
    "completions": "prompt",
    "embeddings": "input",
}

# Deepest nesting of arrays and objects accepted in a JSON body; deeper bodies
# are refused (re-serialising and hashing them would exhaust the stack).
MAX_JSON_DEPTH = 128

# Body fields with which a client could steer a gateway upstream (LiteLLM and
# friends) to another endpoint or credentials. Routing is the proxy's job: they
# are removed before forwarding.
ROUTING_HINTS = frozenset(
    {
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_region_name",
        "vertex_credentials",
        "model_list",
        "user_config",
        "mock_response",
    }
)


@dataclass(frozen=True, slots=True)
class Payload:
    """The parsed facts of a request: model, whether it streams, the JSON object."""

    model: str | None
    stream: bool
    data: dict[str, Any] | None


def parse_payload(endpoint: str, method: str, body: bytes) -> Payload:
    """Validate an OpenAI request body enough to route it.

    The three core endpoints require a JSON object with their main field; any
    other ``/v1`` path is passed through, and its model is read if it has one.
    Whatever its ``Content-Type``: gateways such as LiteLLM parse a
    ``text/plain`` body as JSON too, so a body that parses is treated as JSON.
    """
    required = REQUIRED_FIELDS.get(endpoint) if method == "POST" else None
    if required is None:
        return optional_payload(body)
    data = json_object(body)
    require(data, required)
    if required == "messages":
        require_messages(data)
    return model_and_stream(data)


def require_messages(data: dict[str, Any]) -> None:
    """``InvalidRequest`` unless ``messages`` is a non-empty array."""
    if not isinstance(data.get("messages"), list) or not data["messages"]:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``InvalidRequest`` saying why it is not one."""
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object")
    try:
        data = loads(body)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    if nests_deeper(body, data):
        raise _too_deep()
    return data


def require(data: dict[str, Any], field: str) -> None:
    """``InvalidRequest`` unless ``field`` is present and not null."""
    if data.get(field) is None:
        raise InvalidRequest(f"Missing required parameter: '{field}'", param=field)


def model_and_stream(data: dict[str, Any]) -> Payload:
    """The payload of a JSON object body whose ``model`` and ``stream`` must be well typed."""
    return Payload(model=model_of(data), stream=_stream(data), data=data)


def loads(body: bytes) -> Any:
    """JSON from bytes: orjson, and the standard library for what orjson refuses.

    orjson is several times faster; the standard library also accepts ``NaN``,
    integers past 64 bits and lone surrogates, which a client may legitimately
    send, so those few bodies keep being accepted as before.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def nests_deeper(body: bytes, data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in ``data`` (parsed from ``body``) nest deeper than ``limit``.

    Walks level by level, without recursion; a body with too few brackets to
    reach the limit is not walked at all.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    level: list[Any] = [data]
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            below.extend(c for c in (node.values() if isinstance(node, dict) else node) if isinstance(c, (dict, list)))
        if not below:
            return False
        level = below
    return True


def _too_deep() -> InvalidRequest:
    return InvalidRequest(f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")


def optional_payload(body: bytes) -> Payload:
    """The payload of a body passed through: its model and stream flag if it is a JSON object."""
    if not body:
        return Payload(model=None, stream=False, data=None)
    try:
        data = loads(body)
    except RecursionError:
        raise _too_deep() from None  # JSON all the same: its hints could not be removed
    except ValueError:
        return Payload(model=None, stream=False, data=None)
    if not isinstance(data, dict):
        return Payload(model=None, stream=False, data=None)
    if nests_deeper(body, data):
        raise _too_deep()
    model = data.get("model")
    stream = data.get("stream")
    return Payload(model=model if isinstance(model, str) else None, stream=stream is True, data=data)


def model_of(data: dict[str, Any]) -> str | None:
    """The body's ``model``: a string, or None when absent."""
    model = data.get("model")
    if model is None:
        return None
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    return model


def _stream(data: dict[str, Any]) -> bool:
    stream = data.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return stream


def hints_in(payload: Payload) -> list[str]:
    """Routing-hint fields present in the body (usually none)."""
    if payload.data is None:
        return []
    return [key for key in payload.data if key in ROUTING_HINTS]


def body_to_send(endpoint: str, payload: Payload, body: bytes, model: str | None) -> bytes:
    """The bytes to forward: ``body`` itself unless the model or a hint must change.

    ``model`` is the one routing chose. It replaces the client's (an alias), or
    fills in a missing one only on an endpoint that takes a model: any other
    body is passed byte for byte, routing hints aside.
    """
    return with_model(payload, body, model, takes_model=endpoint in REQUIRED_FIELDS)


def with_model(payload: Payload, body: bytes, model: str | None, *, takes_model: bool) -> bytes:
    """``body`` itself, or re-serialised with ``model`` (a body that names one, or ``takes_model``) and no hints."""
    if payload.data is None:
        return body
    takes_model = takes_model or payload.model is not None
    new_model = model if takes_model and model is not None and model != payload.model else None
    if new_model is None and not any(key in ROUTING_HINTS for key in payload.data):
        return body
    return rewritten(payload, new_model)


def rewritten(payload: Payload, model: str | None) -> bytes:
    """The body re-serialised with ``model`` set (if given) and routing hints removed."""
    assert payload.data is not None
    data = {k: v for k, v in payload.data.items() if k not in ROUTING_HINTS}
    if model is not None:
        data["model"] = model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^\s;]{1,200}))', re.IGNORECASE)
_PART_NAME = re.compile(rb'(?im)^content-disposition:[^\r\n]*?[;\s]name="([^"\r\n]*)"')


def refuse_form_hints(body: bytes, content_type: str) -> None:
    """400 for a form body (an audio upload, say) that carries a routing hint.

    A gateway reads form fields as parameters, and a form cannot be rewritten
    without re-encoding the upload, so such a request is refused, not edited.
    """
    lowered = content_type.lower()
    if lowered.startswith("multipart/form-data"):
        names = _multipart_names(body, content_type)
    elif lowered.startswith("application/x-www-form-urlencoded"):
        names = [_form_unquote(pair.split(b"=", 1)[0]) for pair in body.split(b"&")]
    else:
        return
    for name in names:
        if name in ROUTING_HINTS:
            raise InvalidRequest(
                f"The form field '{name}' is a routing hint: the proxy decides where requests go", param=name
            )


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _form_unquote(name: bytes) -> str:
    """A form field name as a server reads it (``+`` is a space, ``%XX`` a byte)."""
    raw = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), name.replace(b"+", b" "))
    return raw.decode("utf-8", "replace")


def _multipart_names(body: bytes, content_type: str) -> list[str]:
    match = _BOUNDARY.search(content_type)
    if match is None:
        return []
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    names = []
    for part in body.split(delimiter)[1:]:
        head = part.split(b"\r\n\r\n", 1)[0]
        found = _PART_NAME.search(head)
        if found is not None:
            names.append(found.group(1).decode("latin-1"))
    return names
