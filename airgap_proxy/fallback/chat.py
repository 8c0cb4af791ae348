"""Deterministic ``/v1/chat/completions`` bodies and SSE streams (pure).

What a choice contains, decided in this order:

1. ``tool_choice`` ``"required"`` (the first tool) or naming a function: one
   tool call whose ``arguments`` are valid against that tool's
   ``parameters``; content ``null``; ``finish_reason: "tool_calls"``.
2. Legacy ``function_call: {"name": ...}`` with ``functions``: a
   ``function_call`` the same way; ``finish_reason: "function_call"``.
3. ``response_format`` ``json_schema``: content is an instance of the schema;
   ``json_object``: a JSON object (the canned text if it is one, else
   ``{"response": <text>}``). Structured content is never cut by ``stop`` or
   ``max_tokens``: a valid document matters more than the budget.
4. Otherwise text: the canned reply for the model and last user message, or
   three neutral sentences, then ``stop`` and ``max_tokens``
   (:func:`~airgap_proxy.fallback.text.shape`).

``tool_choice`` ``"auto"``, ``"none"`` or absent, and ``function_call``
``"auto"``/``"none"``, answer with text.

Seeds: ``id`` and ``created`` come from the whole request; the content of
choice ``i`` comes from the messages, the model and ``i`` only, so choices
differ from each other (canned texts excepted) while the same conversation
gets the same reply whatever the sampling options, and a reply cut by
``max_tokens`` or ``stop`` is a prefix of the uncut one.

``usage`` uses :func:`~airgap_proxy.fallback.text.count_tokens`: prompt
tokens of the message texts joined by newlines, completion tokens of each
choice's content or call arguments, the same streamed or not.

Streaming sends, per choice: a role chunk (``content: ""``, or ``null`` for a
call), content chunks of a few words (or
fixed-size fragments of JSON), tool-call chunks (the first with id, type and
name and empty arguments, then argument fragments), a finish chunk with an
empty delta; then a usage chunk (``choices: []``) only if
``stream_options.include_usage``; then ``[DONE]``. Joining the deltas gives
exactly the non-streaming message.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import request, text, wire
from airgap_proxy.fallback.canned import Canned
from airgap_proxy.fallback.jsonschema.instance import instance_for
from airgap_proxy.fallback.jsonschema.schema import SchemaError
from airgap_proxy.fallback.limits import DEFAULT_LIMITS, Limits, spend
from airgap_proxy.fallback.seed import Seed, canonical_json, request_seed

MAX_TOOLS = 128


class Kind(enum.Enum):
    """What the fallback answers a chat request with."""

    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"
    TOOL_CALLS = "tool_calls"
    FUNCTION_CALL = "function_call"


@dataclass(frozen=True, slots=True)
class _Function:
    """A callable the client offered: name, parameters schema, where it was declared."""

    name: str
    parameters: object
    param: str  # e.g. "tools[0].function.parameters"


@dataclass(frozen=True, slots=True)
class _Plan:
    """The validated request: what to answer and within which limits."""

    kind: Kind
    n: int
    stop: tuple[str, ...]
    max_tokens: int | None
    function: _Function | None  # for TOOL_CALLS / FUNCTION_CALL
    schema: object  # for JSON_SCHEMA
    include_usage: bool
    messages: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Call:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class _Choice:
    index: int
    content: str | None
    call: _Call | None
    kind: Kind
    finish_reason: str


@dataclass(frozen=True, slots=True)
class _Answer:
    id: str
    created: int
    model: str
    choices: tuple[_Choice, ...]
    usage: dict[str, int]
    include_usage: bool


def kind_of(data: dict[str, Any], caps: Limits = DEFAULT_LIMITS) -> Kind:
    """What a chat request will be answered with (validates the request)."""
    return _plan(data, caps).kind


def chat_completion(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``chat.completion`` JSON body for ``data``, as bytes."""
    answer = _answer(data, model, canned, caps)
    choices = []
    for choice in answer.choices:
        message: dict[str, Any] = {"role": "assistant", "content": choice.content}
        if choice.call is not None and choice.kind is Kind.TOOL_CALLS:
            message["tool_calls"] = [
                {
                    "id": choice.call.id,
                    "type": "function",
                    "function": {"name": choice.call.name, "arguments": choice.call.arguments},
                }
            ]
        elif choice.call is not None:
            message["function_call"] = {"name": choice.call.name, "arguments": choice.call.arguments}
        message["refusal"] = None
        choices.append(
            {"index": choice.index, "message": message, "logprobs": None, "finish_reason": choice.finish_reason}
        )
    return wire.encode(
        {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": choices,
            "usage": answer.usage,
            "system_fingerprint": wire.SYSTEM_FINGERPRINT,
        }
    )


def chat_completion_stream(
    data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS
) -> list[bytes]:
    """The ``chat.completion.chunk`` SSE events for ``data``, ending with ``[DONE]``."""
    answer = _answer(data, model, canned, caps)
    head = {
        "id": answer.id,
        "object": "chat.completion.chunk",
        "created": answer.created,
        "model": answer.model,
        "system_fingerprint": wire.SYSTEM_FINGERPRINT,
    }

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        body: dict[str, Any] = {
            **head,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if answer.include_usage:
            body["usage"] = None
        return wire.event(body)

    events: list[bytes] = []
    for choice in answer.choices:
        i = choice.index
        call = choice.call
        events.append(chunk(i, {"role": "assistant", "content": "" if call is None else None}))
        if call is not None and choice.kind is Kind.TOOL_CALLS:
            first = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            events.append(chunk(i, {"tool_calls": [first]}))
            for fragment in text.fragments(call.arguments):
                events.append(chunk(i, {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
        elif call is not None:
            events.append(chunk(i, {"function_call": {"name": call.name, "arguments": ""}}))
            for fragment in text.fragments(call.arguments):
                events.append(chunk(i, {"function_call": {"arguments": fragment}}))
        elif choice.content:
            structured = choice.kind in (Kind.JSON_OBJECT, Kind.JSON_SCHEMA)
            pieces = text.fragments(choice.content) if structured else text.word_pieces(choice.content)
            events.extend(chunk(i, {"content": piece}) for piece in pieces)
        events.append(chunk(i, {}, choice.finish_reason))
    if answer.include_usage:
        events.append(wire.event({**head, "choices": [], "usage": answer.usage}))
    events.append(wire.DONE_EVENT)
    return events


# ---------------------------------------------------------------- answering


def _answer(data: dict[str, Any], model: str, canned: Canned, caps: Limits) -> _Answer:
    plan = _plan(data, caps)
    seed = request_seed(data, model)
    content_seed = Seed.of(b"chat", canonical_json(plan.messages), model.encode("utf-8", "surrogatepass"))
    prompt = request.last_user_text(plan.messages)
    choices = tuple(
        _choice(plan, i, content_seed.child(f"choice{i}"), model, prompt=prompt, canned=canned) for i in range(plan.n)
    )
    prompt_tokens = text.count_tokens(
        "\n".join(t for m in plan.messages if (t := request.message_text(m.get("content"))))
    )
    completion_tokens = sum(
        text.count_tokens(c.call.arguments if c.call is not None else c.content or "") for c in choices
    )
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return _Answer(
        id="chatcmpl-" + seed.hex_id(),
        created=seed.created(),
        model=model,
        choices=choices,
        usage=usage,
        include_usage=plan.include_usage,
    )


def _choice(plan: _Plan, index: int, seed: Seed, model: str, *, prompt: str | None, canned: Canned) -> _Choice:
    spend()
    if plan.function is not None:
        function = plan.function
        try:
            arguments = instance_for(function.parameters, seed.child("arguments"))
        except SchemaError as exc:
            raise InvalidRequest(f"{function.param}: {exc}", param=function.param) from None
        call = _Call(id="call_" + seed.child("call").hex_id(), name=function.name, arguments=wire.dumps(arguments))
        reason = "tool_calls" if plan.kind is Kind.TOOL_CALLS else "function_call"
        return _Choice(index, None, call, plan.kind, reason)
    if plan.kind is Kind.JSON_SCHEMA:
        try:
            value = instance_for(plan.schema, seed.child("content"))
        except SchemaError as exc:
            raise InvalidRequest(f"response_format.json_schema: {exc}", param="response_format") from None
        return _Choice(index, wire.dumps(value), None, plan.kind, "stop")
    reply = canned.reply_for(model, prompt)
    if plan.kind is Kind.JSON_OBJECT:
        return _Choice(index, text.json_object(reply, seed), None, plan.kind, "stop")
    shaped = text.shape(reply if reply is not None else text.neutral_text(seed), plan.stop, plan.max_tokens)
    return _Choice(index, shaped.text, None, plan.kind, shaped.finish_reason)


# ----------------------------------------------------------------- planning


def _plan(data: dict[str, Any], caps: Limits) -> _Plan:
    messages = request.read_messages(data)
    n = request.read_n(data, caps)
    max_tokens = request.read_max_tokens(data)
    stop = request.read_stop(data)
    include_usage = request.read_include_usage(data)
    functions = _read_tools(data)
    function = _chosen_tool(data, functions)
    kind = Kind.TOOL_CALLS
    if function is None:
        legacy = _read_functions(data)
        function = _chosen_function(data, legacy)
        kind = Kind.FUNCTION_CALL
    schema: object = None
    if function is None:
        kind, schema = _read_response_format(data)
    return _Plan(kind, n, stop, max_tokens, function, schema, include_usage, messages)


def _read_tools(data: dict[str, Any]) -> list[_Function]:
    tools = data.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise InvalidRequest(
            f"Invalid value for 'tools': expected an array of at most {MAX_TOOLS} tools", param="tools"
        )
    found = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(
                f"Invalid value for '{where}': expected an object with type 'function'", param=f"{where}.type"
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(
                f"Missing or invalid '{where}.function': expected an object", param=f"{where}.function"
            )
        found.append(_read_function(function, f"{where}.function"))
    return found


def _read_function(function: dict[str, Any], where: str) -> _Function:
    name = function.get("name")
    if not isinstance(name, str) or request.NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"Invalid value for '{where}.name': expected 1 to 64 letters, digits, underscores or dashes, got {name!r}",
            param=f"{where}.name",
        )
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"Invalid value for '{where}.parameters': expected a JSON Schema object", param=f"{where}.parameters"
        )
    return _Function(name, parameters, f"{where}.parameters")


def _chosen_tool(data: dict[str, Any], tools: Sequence[_Function]) -> _Function | None:
    choice = data.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        if not tools:
            raise InvalidRequest("'tool_choice' is 'required' but no 'tools' were given", param="tool_choice")
        return tools[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        wanted = choice.get("function")
        name = wanted.get("name") if isinstance(wanted, dict) else None
        if not isinstance(name, str):
            raise InvalidRequest(
                "Invalid value for 'tool_choice.function.name': expected a string", param="tool_choice"
            )
        for tool in tools:
            if tool.name == name:
                return tool
        raise InvalidRequest(f"Invalid value for 'tool_choice': no tool named {name!r} in 'tools'", param="tool_choice")
    raise InvalidRequest(
        "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def _read_functions(data: dict[str, Any]) -> list[_Function]:
    functions = data.get("functions")
    if functions is None:
        return []
    if not isinstance(functions, list) or len(functions) > MAX_TOOLS:
        raise InvalidRequest("Invalid value for 'functions': expected an array of functions", param="functions")
    found = []
    for i, function in enumerate(functions):
        if not isinstance(function, dict):
            raise InvalidRequest(f"Invalid value for 'functions[{i}]': expected an object", param=f"functions[{i}]")
        found.append(_read_function(function, f"functions[{i}]"))
    return found


def _chosen_function(data: dict[str, Any], functions: Sequence[_Function]) -> _Function | None:
    choice = data.get("function_call")
    if choice is None or choice in ("auto", "none"):
        return None
    name = choice.get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest(
            "Invalid value for 'function_call': expected 'none', 'auto' or {\"name\": ...}", param="function_call"
        )
    for function in functions:
        if function.name == name:
            return function
    raise InvalidRequest(f"Invalid value for 'function_call': no function named {name!r}", param="function_call")


def _read_response_format(data: dict[str, Any]) -> tuple[Kind, object]:
    fmt = data.get("response_format")
    if fmt is None:
        return Kind.TEXT, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return Kind.TEXT, None
    if kind == "json_object":
        return Kind.JSON_OBJECT, None
    if kind != "json_schema":
        raise InvalidRequest(
            "Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'",
            param="response_format",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(
            "Missing or invalid 'response_format.json_schema': expected an object with 'name' and 'schema'",
            param="response_format",
        )
    name = spec.get("name")
    if not isinstance(name, str) or request.NAME.fullmatch(name) is None:
        raise InvalidRequest(
            "Invalid value for 'response_format.json_schema.name': expected 1 to 64 letters, digits, "
            "underscores or dashes",
            param="response_format",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(
            "Invalid value for 'response_format.json_schema.strict': expected a boolean", param="response_format"
        )
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest(
            "Invalid value for 'response_format.json_schema.schema': expected a JSON Schema object",
            param="response_format",
        )
    return Kind.JSON_SCHEMA, schema
