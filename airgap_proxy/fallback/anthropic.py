"""Deterministic Anthropic ``/v1/messages`` bodies, SSE streams and token counts (pure).

What the message's one content block is, decided in this order:

1. ``tool_choice`` ``{"type": "any"}`` (the first custom tool) or
   ``{"type": "tool", "name": ...}``: a ``tool_use`` block whose ``input`` is
   valid against that tool's ``input_schema``; ``stop_reason: "tool_use"``.
   Only custom tools (``type`` absent or ``"custom"``) can be called: server
   and Anthropic-defined tools (``web_search_20250305``, ``bash_20250124``...)
   carry no schema, so ``any`` skips them and naming one is refused. The input
   is never cut by ``max_tokens``: a valid call matters more than the budget.
2. Otherwise a ``text`` block: the canned reply for the model and the last
   user message's text blocks, or three neutral sentences; then
   ``stop_sequences`` (cut before the earliest, ``stop_reason:
   "stop_sequence"`` and ``stop_sequence`` naming it), then ``max_tokens``
   (a whole-word prefix, ``stop_reason: "max_tokens"``); else ``"end_turn"``.

``tool_choice`` ``auto``, ``none`` or absent answers with text.

Seeds: ``id`` comes from the whole request (``stream`` aside); the content
and the ``tool_use`` id come from ``system``, ``messages`` and the model only,
so the same conversation gets the same reply whatever the sampling options,
and a reply cut by ``max_tokens`` is a prefix of the uncut one.

``usage.input_tokens`` (the same figure :func:`count_tokens` returns) is
:func:`~airgap_proxy.fallback.text.count_tokens` of, joined by newlines: the
``system`` texts, every message's texts (text blocks, ``tool_result``
contents, ``tool_use`` inputs as JSON, thinking), and ``tools`` as JSON.
``output_tokens`` counts the text, or the input's JSON.

Streaming sends the events Anthropic does, each ``event: <type>`` plus one
``data:`` line: ``message_start`` (empty content, ``stop_reason`` null,
``output_tokens`` at most 1), ``ping``, ``content_block_start`` (text ``""``
or the ``tool_use`` with ``input: {}``), ``content_block_delta`` pieces
(``text_delta`` of a few words, ``input_json_delta`` fragments of the input's
JSON), ``content_block_stop``, ``message_delta`` (stop reason, sequence and
``output_tokens``), ``message_stop``. Joining the deltas gives exactly the
non-streaming content.
"""

from __future__ import annotations

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

MAX_TOOLS = 512
MAX_STOP_SEQUENCES = 1024
# Claude Code 2.1 sends ``system`` turns inside ``messages`` (its environment notes), as the API accepts.
ROLES = ("user", "assistant", "system")
CUSTOM_TOOL_TYPES = (None, "custom")
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")


@dataclass(frozen=True, slots=True)
class _Tool:
    """A tool the client offered; ``schema`` is ``None`` for server and Anthropic-defined tools."""

    name: str
    schema: dict[str, Any] | None
    param: str  # e.g. "tools[0].input_schema"


@dataclass(frozen=True, slots=True)
class _Plan:
    """The validated request."""

    messages: list[dict[str, Any]]
    system: object
    tools: list[dict[str, Any]]
    tool: _Tool | None  # the forced tool, if any
    stop_sequences: tuple[str, ...]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class _Answer:
    id: str
    model: str
    block: dict[str, Any]  # the one content block
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int

    def usage(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def message(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``message`` JSON body for ``data``, as bytes.

    ``caps`` is taken for a signature shared with the other surfaces: a message
    has one content block, so only the CPU budget bounds the work.
    """
    answer = _answer(data, model, canned)
    return wire.encode(
        {
            "id": answer.id,
            "type": "message",
            "role": "assistant",
            "model": answer.model,
            "content": [answer.block],
            "stop_reason": answer.stop_reason,
            "stop_sequence": answer.stop_sequence,
            "usage": answer.usage(),
        }
    )


def message_stream(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """The SSE events of the streamed ``message`` for ``data``, ending with ``message_stop``."""
    answer = _answer(data, model, canned)
    start: dict[str, Any] = {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": min(answer.output_tokens, 1)},
    }
    block = answer.block
    if block["type"] == "tool_use":
        opening: dict[str, Any] = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in text.fragments(wire.dumps(block["input"]))]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in text.word_pieces(block["text"])]
    events = [
        _event({"type": "message_start", "message": start}),
        _event({"type": "ping"}),
        _event({"type": "content_block_start", "index": 0, "content_block": opening}),
    ]
    events.extend(_event({"type": "content_block_delta", "index": 0, "delta": delta}) for delta in deltas)
    events.append(_event({"type": "content_block_stop", "index": 0}))
    events.append(
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
                "usage": {"output_tokens": answer.output_tokens},
            }
        )
    )
    events.append(_event({"type": "message_stop"}))
    return events


def count_tokens(data: dict[str, Any], caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``/v1/messages/count_tokens`` body ``{"input_tokens": N}`` (``max_tokens`` not required)."""
    plan = _plan(data, require_max_tokens=False)
    return wire.encode({"input_tokens": _input_tokens(plan)})


def _event(value: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: its ``event:`` line named after ``value["type"]``, then the JSON."""
    return b"event: " + str(value["type"]).encode("ascii") + b"\ndata: " + wire.encode(value) + b"\n\n"


# ---------------------------------------------------------------- answering


def _answer(data: dict[str, Any], model: str, canned: Canned) -> _Answer:
    plan = _plan(data, require_max_tokens=True)
    seed = request_seed(data, model)
    content_seed = Seed.of(
        b"anthropic", canonical_json(plan.system), canonical_json(plan.messages), model.encode("utf-8", "surrogatepass")
    )
    input_tokens = _input_tokens(plan)
    spend()
    tool = plan.tool
    if tool is not None and tool.schema is not None:  # _chosen_tool returns custom tools only
        try:
            value = instance_for(tool.schema, content_seed.child(f"input:{tool.name}"))
        except SchemaError as exc:
            raise InvalidRequest(f"{tool.param}: {exc}", param=tool.param) from None
        if not isinstance(value, dict):  # a schema of type "object" that a subschema contradicts
            raise InvalidRequest(f"{tool.param}: the schema admits no object", param=tool.param)
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": "toolu_" + content_seed.child(f"tool_use:{tool.name}").hex_id(),
            "name": tool.name,
            "input": value,
        }
        output_tokens = text.count_tokens(wire.dumps(value))
        return _Answer("msg_" + seed.hex_id(), model, block, "tool_use", None, input_tokens, output_tokens)
    reply = canned.reply_for(model, _last_user_text(plan.messages))
    full = reply if reply is not None else text.neutral_text(content_seed.child("text"))
    stopped = text.shape(full, plan.stop_sequences, None).text
    sequence = None
    if len(stopped) < len(full):
        sequence = next(s for s in plan.stop_sequences if s and full.startswith(s, len(stopped)))
    shaped = text.shape(stopped, (), plan.max_tokens)
    if shaped.finish_reason == "length":
        reason, sequence = "max_tokens", None
    else:
        reason = "end_turn" if sequence is None else "stop_sequence"
    block = {"type": "text", "text": shaped.text}
    return _Answer("msg_" + seed.hex_id(), model, block, reason, sequence, input_tokens, text.count_tokens(shaped.text))


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    """The text blocks of the last user message, joined by newlines (what canned patterns search)."""
    for m in reversed(messages):
        if m["role"] == "user":
            content = m["content"]
            if isinstance(content, str):
                return content
            return "\n".join(b["text"] for b in content if b["type"] == "text")
    return None


def _input_tokens(plan: _Plan) -> int:
    pieces: list[str] = []
    _texts(plan.system, pieces)
    for m in plan.messages:
        _texts(m["content"], pieces)
    if plan.tools:
        pieces.append(wire.dumps(plan.tools))
    return text.count_tokens("\n".join(p for p in pieces if p))


def _texts(content: object, into: list[str]) -> None:
    """Append the texts of a ``system`` or message ``content`` (validated) to ``into``."""
    if isinstance(content, str):
        into.append(content)
        return
    if not isinstance(content, list):
        return
    for block in content:
        spend()
        kind = block["type"]
        if kind == "text":
            into.append(block["text"])
        elif kind == "tool_result":
            _texts(block.get("content"), into)
        elif kind == "tool_use":
            into.append(wire.dumps(block["input"]))
        elif kind == "thinking":
            into.append(block["thinking"])


# ----------------------------------------------------------------- planning


def _plan(data: dict[str, Any], *, require_max_tokens: bool) -> _Plan:
    max_tokens = _read_max_tokens(data) if require_max_tokens else 1
    messages = _read_messages(data)
    system = _read_system(data)
    stop_sequences = _read_stop_sequences(data)
    raw_tools, tools = _read_tools(data)
    tool = _chosen_tool(data, tools)
    return _Plan(messages, system, raw_tools, tool, stop_sequences, max_tokens)


def _read_max_tokens(data: dict[str, Any]) -> int:
    value: Any = data.get("max_tokens")
    if not request.is_int(value) or value < 1:
        what = "Missing 'max_tokens'" if value is None else f"Invalid value for 'max_tokens': {value!r}"
        raise InvalidRequest(f"{what}: expected a positive integer", param="max_tokens")
    return int(value)


def _read_stop_sequences(data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("stop_sequences")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in value):
        raise InvalidRequest(
            f"Invalid value for 'stop_sequences': expected an array of at most {MAX_STOP_SEQUENCES} strings",
            param="stop_sequences",
        )
    return tuple(value)


def _read_system(data: dict[str, Any]) -> object:
    system = data.get("system")
    if system is None or isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) for b in system
    ):
        return system
    raise InvalidRequest(
        'Invalid value for \'system\': expected a string or an array of text blocks ({"type": "text", "text": ...})',
        param="system",
    )


def _read_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``messages``: a non-empty list of ``{role: user | assistant | system, content: string | blocks}``."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Invalid value for 'messages': expected a non-empty array of messages", param="messages")
    for i, m in enumerate(messages):
        spend()
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidRequest(f"Invalid value for '{where}': expected an object", param=where)
        if m.get("role") not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected 'user', 'assistant' or 'system', got {m.get('role')!r}",
                param=f"{where}.role",
            )
        content = m.get("content")
        if not isinstance(content, str):
            _check_blocks(content, f"{where}.content", nested=False)
    return messages


# Required fields of the content blocks the fallback knows; other typed blocks pass as they are.
_BLOCK_FIELDS: dict[str, tuple[tuple[str, type], ...]] = {
    "text": (("text", str),),
    "image": (("source", dict),),
    "document": (("source", dict),),
    "tool_use": (("id", str), ("name", str), ("input", dict)),
    "tool_result": (("tool_use_id", str),),
    "thinking": (("thinking", str),),
    "redacted_thinking": (("data", str),),
}


def _check_blocks(content: object, where: str, *, nested: bool) -> None:
    """``content`` is an array of typed blocks; ``nested`` for a ``tool_result``'s own content."""
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid value for '{where}': expected a string or an array of content blocks", param=where
        )
    for j, block in enumerate(content):
        spend()
        at = f"{where}[{j}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"Invalid value for '{at}': expected an object with a 'type'", param=at)
        kind = block["type"]
        if nested and kind in ("tool_use", "tool_result", "thinking", "redacted_thinking"):
            raise InvalidRequest(f"Invalid value for '{at}.type': {kind!r} cannot be inside a tool_result", param=at)
        for field, expected in _BLOCK_FIELDS.get(kind, ()):
            if not isinstance(block.get(field), expected):
                raise InvalidRequest(
                    f"Invalid value for '{at}.{field}': a {kind} block needs a "
                    f"{'string' if expected is str else 'object'} '{field}'",
                    param=f"{at}.{field}",
                )
        if kind == "tool_result":
            inner = block.get("content")
            if inner is not None and not isinstance(inner, str):
                _check_blocks(inner, f"{at}.content", nested=True)


def _read_tools(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[_Tool]]:
    tools = data.get("tools")
    if tools is None:
        return [], []
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise InvalidRequest(
            f"Invalid value for 'tools': expected an array of at most {MAX_TOOLS} tools", param="tools"
        )
    found: list[_Tool] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        spend()
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"Invalid value for '{where}': expected an object", param=where)
        kind = tool.get("type")
        if kind is not None and not isinstance(kind, str):
            raise InvalidRequest(f"Invalid value for '{where}.type': expected a string", param=f"{where}.type")
        name = tool.get("name")
        if not isinstance(name, str) or request.NAME.fullmatch(name) is None:
            raise InvalidRequest(
                f"Invalid value for '{where}.name': expected 1 to 64 letters, digits, underscores or dashes, "
                f"got {name!r}",
                param=f"{where}.name",
            )
        if name in names:
            raise InvalidRequest(f"Invalid value for '{where}.name': tool names must be unique", param=f"{where}.name")
        names.add(name)
        schema = None
        if kind in CUSTOM_TOOL_TYPES:
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise InvalidRequest(
                    f"Invalid value for '{where}.input_schema': expected a JSON Schema object with type 'object'",
                    param=f"{where}.input_schema",
                )
        found.append(_Tool(name, schema, f"{where}.input_schema"))
    return tools, found


def _chosen_tool(data: dict[str, Any], tools: Sequence[_Tool]) -> _Tool | None:
    choice = data.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICE_TYPES:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': expected an object with type 'auto', 'any', 'tool' or 'none'",
            param="tool_choice",
        )
    kind = choice["type"]
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "Invalid value for 'tool_choice.disable_parallel_tool_use': expected a boolean", param="tool_choice"
        )
    if kind in ("auto", "none"):
        return None
    if not tools:
        raise InvalidRequest(f"'tool_choice' is {kind!r} but no 'tools' were given", param="tool_choice")
    if kind == "any":
        for tool in tools:
            if tool.schema is not None:
                return tool
        raise InvalidRequest(
            "'tool_choice' is 'any' but every tool is a server tool, which the deterministic fallback cannot call",
            param="tool_choice",
        )
    name = choice.get("name")
    if not isinstance(name, str):
        raise InvalidRequest("Invalid value for 'tool_choice.name': expected a string", param="tool_choice")
    for tool in tools:
        if tool.name == name:
            if tool.schema is None:
                raise InvalidRequest(
                    f"Invalid value for 'tool_choice': {name!r} is a server tool, which the deterministic "
                    "fallback cannot call",
                    param="tool_choice",
                )
            return tool
    raise InvalidRequest(f"Invalid value for 'tool_choice': no tool named {name!r} in 'tools'", param="tool_choice")
