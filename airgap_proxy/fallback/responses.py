"""Deterministic OpenAI Responses API bodies, SSE streams and input token counts (pure).

What ``output`` contains, decided in this order:

1. ``tool_choice`` ``"required"`` (the first function tool), ``{"type":
   "function", "name": ...}``, or ``allowed_tools`` with ``mode: "required"``
   (the first allowed function tool): one ``function_call`` item whose
   ``arguments`` are valid against that tool's ``parameters``.
2. ``text.format`` ``json_schema``: a ``message`` whose ``output_text`` is an
   instance of the schema; ``json_object``: a JSON object (the canned text if
   it is one, else ``{"response": <text>}``). Structured output is never cut
   by ``max_output_tokens``: a valid document matters more than the budget.
3. Otherwise a ``message``: the canned reply for the model and the last user
   text, or three neutral sentences, cut to ``max_output_tokens``
   (``status: "incomplete"``, ``incomplete_details.reason:
   "max_output_tokens"``).

``tool_choice`` ``"auto"``, ``"none"`` or a hosted tool type answer with a
message. Non-function ``tools`` are echoed and never called.

``input`` is a string (one user message) or a list of items: messages (with
or without ``"type": "message"``; roles user, assistant, system, developer),
``function_call``, ``function_call_output``, and any other typed item
(reasoning, item references...), accepted and ignored. ``previous_response_id``
is hashed with the rest: no state is looked up.

Seeds: ``id``, ``created_at`` and item ids come from the whole request; the
text comes from the input, ``instructions``, ``previous_response_id`` and the
model only, so the same conversation gets the same reply whatever the sampling
options, and a reply cut by ``max_output_tokens`` is a prefix of the uncut one.

``usage.input_tokens`` is :func:`~airgap_proxy.fallback.text.count_tokens` of
the instructions and the input texts (message texts, call arguments, call
outputs) joined by newlines; :func:`input_tokens` answers the same figure.
``output_tokens`` counts the output text or the call arguments.

Streaming sends ``response.created`` and ``response.in_progress`` (the response
``in_progress`` with an empty ``output``), then for a message
``output_item.added``, ``content_part.added``, ``output_text.delta`` pieces of
a few words (fixed-size fragments of JSON), ``output_text.done``,
``content_part.done``, ``output_item.done``; for a call ``output_item.added``
(empty ``arguments``), ``function_call_arguments.delta`` fragments,
``function_call_arguments.done``, ``output_item.done``; and last
``response.completed`` (``response.incomplete`` when cut, as the API does)
with the very response :func:`response` returns. Every event carries ``type``
and a ``sequence_number`` from 0; deltas join to exactly the final output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import request, text, wire
from airgap_proxy.fallback.canned import Canned
from airgap_proxy.fallback.chat import MAX_TOOLS, Kind
from airgap_proxy.fallback.jsonschema.instance import instance_for
from airgap_proxy.fallback.jsonschema.schema import SchemaError
from airgap_proxy.fallback.limits import DEFAULT_LIMITS, Limits, spend
from airgap_proxy.fallback.seed import Seed, canonical_json, request_seed

ROLES = frozenset({"user", "assistant", "system", "developer"})
VERBOSITIES = ("low", "medium", "high")
TRUNCATIONS = ("auto", "disabled")
DEFAULT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_ECHOED_STRINGS = ("prompt_cache_key", "safety_identifier", "user")


@dataclass(frozen=True, slots=True)
class _Function:
    """A function tool the client offered: name, parameters schema, where it was declared."""

    name: str
    parameters: object
    param: str  # e.g. "tools[0].parameters"


@dataclass(frozen=True, slots=True)
class _Plan:
    """The validated request: what to answer, from which conversation, and what to echo."""

    kind: Kind
    max_output_tokens: int | None
    function: _Function | None  # for TOOL_CALLS
    schema: object  # for JSON_SCHEMA
    items: list[dict[str, Any]]  # the input as items (a string input is one user message)
    instructions: str | None
    echo: dict[str, Any]  # the request fields the response repeats

    @property
    def input_tokens(self) -> int:
        texts = [self.instructions, *(_item_text(item) for item in self.items)]
        return text.count_tokens("\n".join(t for t in texts if t))


@dataclass(frozen=True, slots=True)
class _Answer:
    """The finished response and what the stream needs to replay it."""

    body: dict[str, Any]
    item: dict[str, Any]  # the one output item
    structured: bool  # JSON text: streamed in fragments, not words


def response(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``response`` JSON body for ``data``, as bytes."""
    return wire.encode(_answer(data, model, canned, caps).body)


def response_stream(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """The Responses SSE events for ``data``, ending with ``response.completed`` or ``.incomplete``."""
    answer = _answer(data, model, canned, caps)
    body, item = answer.body, answer.item
    events: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(events), **fields}
        events.append(b"event: " + kind.encode("ascii") + b"\n" + wire.event(payload))

    started = {**body, "status": "in_progress", "completed_at": None, "incomplete_details": None}
    started.update(output=[], usage=None)
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    at: dict[str, Any] = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        arguments = item["arguments"]
        emit("response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"})
        for fragment in text.fragments(arguments):
            spend()
            emit("response.function_call_arguments.delta", **at, delta=fragment)
        emit("response.function_call_arguments.done", **at, arguments=arguments)
    else:
        part = item["content"][0]
        content = part["text"]
        emit("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
        emit("response.content_part.added", **at, content_index=0, part={**part, "text": ""})
        pieces = text.fragments(content) if answer.structured else text.word_pieces(content)
        for piece in pieces:
            spend()
            emit("response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[])
        emit("response.output_text.done", **at, content_index=0, text=content, logprobs=[])
        emit("response.content_part.done", **at, content_index=0, part=part)
    emit("response.output_item.done", output_index=0, item=item)
    final = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
    emit(final, response=body)
    return events


def input_tokens(data: dict[str, Any], caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``response.input_tokens`` body: ``usage.input_tokens`` of the same request (``input`` optional)."""
    plan = _plan(data, require_input=False)
    return wire.encode({"object": "response.input_tokens", "input_tokens": plan.input_tokens})


# ---------------------------------------------------------------- answering


def _answer(data: dict[str, Any], model: str, canned: Canned, caps: Limits) -> _Answer:
    plan = _plan(data, require_input=True)
    seed = request_seed(data, model)
    conversation = {
        "input": plan.items,
        "instructions": plan.instructions,
        "previous_response_id": plan.echo["previous_response_id"],
    }
    content_seed = Seed.of(b"responses", canonical_json(conversation), model.encode("utf-8", "surrogatepass"))
    spend()
    incomplete = False
    item: dict[str, Any]
    if plan.function is not None:
        function = plan.function
        try:
            arguments = wire.dumps(instance_for(function.parameters, content_seed.child("arguments")))
        except SchemaError as exc:
            raise InvalidRequest(f"{function.param}: {exc}", param=function.param) from None
        item = {
            "type": "function_call",
            "id": "fc_" + seed.child("item").hex_id(),
            "call_id": "call_" + seed.child("call").hex_id(),
            "name": function.name,
            "arguments": arguments,
            "status": "completed",
        }
        output_tokens = text.count_tokens(arguments)
    else:
        content, incomplete = _content(plan, content_seed, model, canned)
        part = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
        item = {
            "type": "message",
            "id": "msg_" + seed.child("item").hex_id(),
            "status": "incomplete" if incomplete else "completed",
            "role": "assistant",
            "content": [part],
        }
        output_tokens = text.count_tokens(content)
    created = seed.created()
    prompt_tokens = plan.input_tokens
    body = {
        "id": "resp_" + seed.hex_id(),
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "background": False,
        "completed_at": created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": plan.instructions,
        "max_output_tokens": plan.max_output_tokens,
        "model": model,
        "output": [item],
        **plan.echo,
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens,
        },
    }
    return _Answer(body, item, structured=plan.kind is not Kind.TEXT)


def _content(plan: _Plan, seed: Seed, model: str, canned: Canned) -> tuple[str, bool]:
    """The message text and whether ``max_output_tokens`` cut it."""
    if plan.kind is Kind.JSON_SCHEMA:
        try:
            return wire.dumps(instance_for(plan.schema, seed.child("content"))), False
        except SchemaError as exc:
            raise InvalidRequest(f"text.format.schema: {exc}", param="text.format.schema") from None
    reply = canned.reply_for(model, request.last_user_text(plan.items))
    if plan.kind is Kind.JSON_OBJECT:
        return text.json_object(reply, seed), False
    shaped = text.shape(reply if reply is not None else text.neutral_text(seed), (), plan.max_output_tokens)
    return shaped.text, shaped.finish_reason == "length"


def _item_text(item: dict[str, Any]) -> str | None:
    kind = item.get("type", "message")
    if kind == "message":
        return request.message_text(item.get("content"))
    if kind == "function_call":
        return str(item["arguments"])
    if kind == "function_call_output":
        return request.message_text(item["output"])
    return None


# ----------------------------------------------------------------- planning


def _plan(data: dict[str, Any], *, require_input: bool) -> _Plan:
    items = _read_input(data, require_input)
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("Invalid value for 'instructions': expected a string", param="instructions")
    max_output_tokens = data.get("max_output_tokens")
    if max_output_tokens is not None and (not request.is_int(max_output_tokens) or max_output_tokens < 1):
        raise InvalidRequest(
            f"Invalid value for 'max_output_tokens': expected a positive integer, got {max_output_tokens!r}",
            param="max_output_tokens",
        )
    tools, functions = _read_tools(data)
    function = _chosen_function(data, functions)
    kind, schema, text_config = _read_text(data)
    if function is not None:
        kind = Kind.TOOL_CALLS
    echo = {
        "parallel_tool_calls": _read_flag(data, "parallel_tool_calls", default=True),
        "previous_response_id": _read_string(data, "previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "temperature": _read_number(data, "temperature", 2.0),
        "text": text_config,
        "tool_choice": "auto" if data.get("tool_choice") is None else data["tool_choice"],
        "tools": tools,
        "top_p": _read_number(data, "top_p", 1.0),
        "truncation": _read_truncation(data),
        "metadata": _read_metadata(data),
        **{key: _read_string(data, key) for key in _ECHOED_STRINGS},
    }
    return _Plan(kind, max_output_tokens, function, schema, items, instructions, echo)


def _read_input(data: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    raw = data.get("input")
    if raw is None and not required:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise InvalidRequest("Missing or invalid 'input': expected a string or an array of input items", param="input")
    items = []
    for i, item in enumerate(raw):
        spend()
        items.append(_read_item(item, f"input[{i}]"))
    return items


def _read_item(item: object, where: str) -> dict[str, Any]:
    """One input item, checked; a message without ``type`` gets ``"type": "message"``."""
    if not isinstance(item, dict) or not isinstance(item.get("type", "message"), str):
        raise InvalidRequest(f"Invalid value for '{where}': expected an object with a 'type'", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        _check_message(item, where)
        return {**item, "type": "message"}
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise InvalidRequest(f"Invalid value for '{where}.{key}': expected a string", param=f"{where}.{key}")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest(f"Invalid value for '{where}.call_id': expected a string", param=f"{where}.call_id")
        if not isinstance(item.get("output"), str) and not _valid_parts(item.get("output")):
            raise InvalidRequest(
                f"Invalid value for '{where}.output': expected a string or an array of content parts",
                param=f"{where}.output",
            )
    return item


def _check_message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': expected one of {', '.join(sorted(ROLES))}, got {role!r}",
            param=f"{where}.role",
        )
    content = item.get("content")
    if not isinstance(content, str) and not _valid_parts(content):
        raise InvalidRequest(
            f"Invalid value for '{where}.content': expected a string or an array of content parts",
            param=f"{where}.content",
        )


def _valid_parts(content: object) -> bool:
    if not isinstance(content, list):
        return False
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return False
        if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            return False
    return True


def _read_tools(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[_Function]]:
    """The tools to echo (function tools with their defaults filled in) and the function tools."""
    raw = data.get("tools")
    if raw is None:
        return [], []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise InvalidRequest(
            f"Invalid value for 'tools': expected an array of at most {MAX_TOOLS} tools", param="tools"
        )
    echoed: list[dict[str, Any]] = []
    functions: list[_Function] = []
    for i, tool in enumerate(raw):
        spend()
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise InvalidRequest(
                f"Invalid value for '{where}': expected an object with a 'type'", param=f"{where}.type"
            )
        if tool["type"] != "function":
            echoed.append(tool)
            continue
        function = _read_function(tool, where)
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest(
                f"Invalid value for '{where}.description': expected a string", param=f"{where}.description"
            )
        strict = tool.get("strict", True)
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequest(f"Invalid value for '{where}.strict': expected a boolean", param=f"{where}.strict")
        functions.append(function)
        echoed.append(
            {
                **tool,
                "description": description,
                "name": function.name,
                "parameters": function.parameters,
                "strict": strict,
            }
        )
    return echoed, functions


def _read_function(tool: dict[str, Any], where: str) -> _Function:
    name = tool.get("name")
    if not isinstance(name, str) or request.NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"Invalid value for '{where}.name': expected 1 to 64 letters, digits, underscores or dashes, got {name!r}",
            param=f"{where}.name",
        )
    parameters = tool.get("parameters")
    if parameters is None:
        parameters = DEFAULT_PARAMETERS
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"Invalid value for '{where}.parameters': expected a JSON Schema object", param=f"{where}.parameters"
        )
    return _Function(name, parameters, f"{where}.parameters")


def _chosen_function(data: dict[str, Any], functions: Sequence[_Function]) -> _Function | None:
    choice = data.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        if not functions:
            raise InvalidRequest("'tool_choice' is 'required' but no function 'tools' were given", param="tool_choice")
        return functions[0]
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequest(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
            '{"type": "function", "name": ...}',
            param="tool_choice",
        )
    if kind == "function":
        return _named(choice.get("name"), functions, "tool_choice")
    if kind == "allowed_tools" and choice.get("mode") == "required":
        allowed = choice.get("tools")
        if not isinstance(allowed, list):
            raise InvalidRequest("Invalid value for 'tool_choice.tools': expected an array", param="tool_choice.tools")
        for tool in allowed:
            if isinstance(tool, dict) and tool.get("type") == "function":
                return _named(tool.get("name"), functions, "tool_choice.tools")
        raise InvalidRequest(
            "'tool_choice' requires one of its allowed tools but none is a function", param="tool_choice.tools"
        )
    return None  # a hosted tool type, or allowed_tools in auto mode: the fallback answers with text


def _named(name: object, functions: Sequence[_Function], param: str) -> _Function:
    if not isinstance(name, str):
        raise InvalidRequest(f"Invalid value for '{param}': expected a function 'name'", param=param)
    for function in functions:
        if function.name == name:
            return function
    raise InvalidRequest(f"Invalid value for '{param}': no function tool named {name!r} in 'tools'", param=param)


def _read_text(data: dict[str, Any]) -> tuple[Kind, object, dict[str, Any]]:
    """``text``: the kind of output, the schema for ``json_schema``, and the config to echo."""
    config = data.get("text")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidRequest("Invalid value for 'text': expected an object", param="text")
    verbosity = config.get("verbosity", "medium")
    if verbosity is None:
        verbosity = "medium"
    if verbosity not in VERBOSITIES:
        raise InvalidRequest(
            f"Invalid value for 'text.verbosity': expected one of {', '.join(VERBOSITIES)}", param="text.verbosity"
        )
    fmt = config.get("format")
    if fmt is None:
        fmt = {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    schema: object = None
    if kind == "text":
        result = Kind.TEXT
    elif kind == "json_object":
        result = Kind.JSON_OBJECT
    elif kind == "json_schema":
        result, schema = Kind.JSON_SCHEMA, _read_json_schema(fmt)
        fmt = {"description": None, "strict": False, **fmt, "schema": schema}
    else:
        raise InvalidRequest(
            "Invalid value for 'text.format.type': expected 'text', 'json_object' or 'json_schema'",
            param="text.format",
        )
    return result, schema, {"format": fmt, "verbosity": verbosity}


def _read_json_schema(fmt: dict[str, Any]) -> object:
    name = fmt.get("name")
    if not isinstance(name, str) or request.NAME.fullmatch(name) is None:
        raise InvalidRequest(
            "Invalid value for 'text.format.name': expected 1 to 64 letters, digits, underscores or dashes",
            param="text.format.name",
        )
    strict = fmt.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest("Invalid value for 'text.format.strict': expected a boolean", param="text.format.strict")
    schema = fmt.get("schema", {"type": "object"})
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest(
            "Invalid value for 'text.format.schema': expected a JSON Schema object", param="text.format.schema"
        )
    return schema


def _read_flag(data: dict[str, Any], param: str, *, default: bool) -> bool:
    value = data.get(param)
    return default if value is None else request.read_bool(data, param)


def _read_string(data: dict[str, Any], param: str) -> str | None:
    value = data.get(param)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"Invalid value for '{param}': expected a string", param=param)
    return value


def _read_number(data: dict[str, Any], param: str, high: float) -> float:
    """``temperature`` / ``top_p``: a number from 0 to ``high``, echoed (default 1)."""
    value = data.get(param)
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise InvalidRequest(
            f"Invalid value for '{param}': expected a number from 0 to {high:g}, got {value!r}", param=param
        )
    return float(value)


def _read_truncation(data: dict[str, Any]) -> str:
    value = data.get("truncation")
    if value is None:
        return "disabled"
    if value not in TRUNCATIONS:
        raise InvalidRequest("Invalid value for 'truncation': expected 'auto' or 'disabled'", param="truncation")
    return str(value)


def _read_metadata(data: dict[str, Any]) -> dict[str, str]:
    value = data.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest("Invalid value for 'metadata': expected an object of string values", param="metadata")
    return value
