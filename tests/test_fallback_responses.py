"""Tests for :mod:`airgap_proxy.fallback.responses`: deterministic Responses API bodies and streams.

Bodies and events are parsed with the official openai SDK's own types, the
strongest check of their shape; arguments and JSON output are checked with
the ``jsonschema`` library.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import InputTokenCountResponse, Response, ResponseStreamEvent

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import EMPTY_CANNED, Canned, parse_canned
from airgap_proxy.fallback.responses import input_tokens, response, response_stream
from airgap_proxy.fallback.text import SENTENCES, count_tokens

MODEL = "qwen2.5-coder:7b"
VALIDATOR = jsonschema.Draft202012Validator
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
EVENT: pydantic.TypeAdapter[ResponseStreamEvent] = pydantic.TypeAdapter(ResponseStreamEvent)

WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2},
            "unit": {"enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    },
}
SHELL: dict[str, Any] = {
    "type": "function",
    "name": "shell",
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
        "required": ["command"],
    },
}
WEB_SEARCH: dict[str, Any] = {"type": "web_search"}

SCHEMAS: list[Any] = [
    pytest.param(
        {
            "type": "object",
            "properties": {
                "severity": {"enum": ["low", "medium", "high"]},
                "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
                "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{3,8}$"}, "minItems": 2},
                "when": {"type": "string", "format": "date-time"},
                "owner": {"type": ["string", "null"], "format": "email"},
            },
            "required": ["severity", "score", "tags", "when", "owner"],
            "additionalProperties": False,
        },
        id="incident record",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {
                "steps": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/step"},
                    "minItems": 1,
                    "maxItems": 3,
                }
            },
            "required": ["steps"],
            "$defs": {
                "step": {
                    "type": "object",
                    "properties": {"n": {"type": "integer", "minimum": 1}, "say": {"type": "string"}},
                    "required": ["n", "say"],
                }
            },
        },
        id="refs",
    ),
    pytest.param({"type": "object", "properties": {}}, id="empty object"),
]


def body(data: dict[str, Any], model: str = MODEL, canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    """The response for ``data``, parsed and checked by the SDK's ``Response`` on the way."""
    raw = response(data, model, canned)
    Response.model_validate_json(raw)
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def events(data: dict[str, Any], model: str = MODEL, canned: Canned = EMPTY_CANNED) -> list[dict[str, Any]]:
    """The stream for ``data``, checking the SSE framing and each event with the SDK's union."""
    parsed = []
    for raw in response_stream(data, model, canned):
        head, sep, rest = raw.partition(b"\ndata: ")
        assert sep and head.startswith(b"event: ") and rest.endswith(b"\n\n")
        payload = json.loads(rest)
        assert head == b"event: " + payload["type"].encode()
        assert rest[:-2] == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        EVENT.validate_python(payload)
        parsed.append(payload)
    return parsed


def output_text(data: dict[str, Any], canned: Canned = EMPTY_CANNED) -> str:
    return Response.model_validate_json(response(data, MODEL, canned)).output_text


def refused(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        response(data, MODEL, EMPTY_CANNED)
    return info.value


# ------------------------------------------------------------- determinism


REQUESTS: list[Any] = [
    pytest.param({"input": "Hello"}, id="text"),
    pytest.param({"input": "Hello", "max_output_tokens": 5}, id="cut"),
    pytest.param({"input": "Hi", "tools": [WEATHER], "tool_choice": "required"}, id="call"),
    pytest.param({"input": "Hi", "text": {"format": {"type": "json_object"}}}, id="json object"),
    pytest.param(
        {"input": "Hi", "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}}},
        id="json schema",
    ),
]


@pytest.mark.parametrize("data", REQUESTS)
def test_same_request_gives_identical_bytes(data: dict[str, Any]) -> None:
    assert response(data, MODEL, EMPTY_CANNED) == response(json.loads(json.dumps(data)), MODEL, EMPTY_CANNED)
    assert response_stream(data, MODEL, EMPTY_CANNED) == response_stream(dict(data), MODEL, EMPTY_CANNED)
    assert input_tokens(data) == input_tokens(dict(data))


def test_key_order_of_the_request_does_not_matter() -> None:
    a = {"input": [{"role": "user", "content": "x"}], "temperature": 0.5, "instructions": "Be brief."}
    b = {"instructions": "Be brief.", "temperature": 0.5, "input": [{"content": "x", "role": "user"}]}
    assert response(a, MODEL, EMPTY_CANNED) == response(b, MODEL, EMPTY_CANNED)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"input": "Hello!"}, id="input"),
        pytest.param({"input": "Hello", "instructions": "Be terse."}, id="instructions"),
        pytest.param({"input": "Hello", "previous_response_id": "resp_abc"}, id="previous_response_id"),
        pytest.param({"input": "Hello", "temperature": 0.2}, id="temperature"),
        pytest.param({"input": "Hello", "metadata": {"k": "v"}}, id="metadata"),
    ],
)
def test_different_requests_get_different_ids(other: dict[str, Any]) -> None:
    base = body({"input": "Hello"})
    changed = body(other)
    assert changed["id"] != base["id"]
    assert changed["output"][0]["id"] != base["output"][0]["id"]


def test_ids_and_created_at_look_like_openai() -> None:
    got = body({"input": "Hello"})
    assert got["id"].startswith("resp_") and len(got["id"]) > 20
    assert got["output"][0]["id"].startswith("msg_")
    assert isinstance(got["created_at"], int) and 1_700_000_000 <= got["created_at"] < 1_800_000_000
    call = body({"input": "Hi", "tools": [WEATHER], "tool_choice": "required"})["output"][0]
    assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")


def test_the_model_is_echoed_and_part_of_the_seed() -> None:
    a, b = body({"input": "Hello"}, "a"), body({"input": "Hello"}, "b")
    assert (a["model"], b["model"]) == ("a", "b")
    assert a["id"] != b["id"]


def test_the_reply_depends_on_the_conversation_not_the_sampling_options() -> None:
    plain = output_text({"input": "Hello"})
    assert output_text({"input": "Hello", "temperature": 0.1, "top_p": 0.5}) == plain
    assert output_text({"input": [{"role": "user", "content": "Hello"}]}) == plain
    assert output_text({"input": [{"type": "message", "role": "user", "content": "Hello"}]}) == plain
    texts = {output_text({"input": f"Question {i}"}) for i in range(12)}
    assert len(texts) > 1
    after = {output_text({"input": "Hello", "previous_response_id": f"resp_{i}"}) for i in range(12)}
    assert len(after) > 1


# ----------------------------------------------------------------- the body


@pytest.mark.parametrize("data", REQUESTS)
def test_every_body_is_a_valid_sdk_response(data: dict[str, Any]) -> None:
    got = Response.model_validate_json(response(data, MODEL, EMPTY_CANNED))
    assert got.object == "response"
    assert got.model == MODEL
    assert got.error is None
    assert got.usage is not None
    assert got.usage.total_tokens == got.usage.input_tokens + got.usage.output_tokens
    assert got.usage.input_tokens_details.cached_tokens == 0
    assert got.usage.output_tokens_details.reasoning_tokens == 0
    assert len(got.output) == 1


def test_defaults_and_echoed_fields() -> None:
    got = body({"input": "Hello"})
    assert got["status"] == "completed"
    assert got["incomplete_details"] is None and got["error"] is None
    assert got["instructions"] is None and got["previous_response_id"] is None
    assert got["max_output_tokens"] is None
    assert (got["temperature"], got["top_p"]) == (1.0, 1.0)
    assert got["tool_choice"] == "auto" and got["tools"] == []
    assert got["parallel_tool_calls"] is True
    assert got["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert got["metadata"] == {}
    echoed = body(
        {
            "input": "Hello",
            "instructions": "Be brief.",
            "previous_response_id": "resp_prev",
            "max_output_tokens": 500,
            "temperature": 0.3,
            "top_p": 0.9,
            "parallel_tool_calls": False,
            "metadata": {"run": "7"},
            "user": "u-1",
            "text": {"verbosity": "low"},
        }
    )
    assert echoed["instructions"] == "Be brief."
    assert echoed["previous_response_id"] == "resp_prev"
    assert echoed["max_output_tokens"] == 500
    assert (echoed["temperature"], echoed["top_p"]) == (0.3, 0.9)
    assert echoed["parallel_tool_calls"] is False
    assert echoed["metadata"] == {"run": "7"} and echoed["user"] == "u-1"
    assert echoed["text"]["verbosity"] == "low"


def test_text_reply_is_made_of_the_neutral_sentences() -> None:
    got = body({"input": "Hello"})
    message = got["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    [part] = message["content"]
    assert part["type"] == "output_text" and part["annotations"] == []
    text = part["text"]
    used = [s for s in SENTENCES if s in text]
    assert len(used) == 3 and len(" ".join(used)) == len(text)
    assert output_text({"input": "Hello"}) == text
    assert got["usage"]["output_tokens"] == count_tokens(text)


CANNED = parse_canned(
    {
        "default": "Default canned text.",
        "replies": [
            {"model": "qwen*", "pattern": "(?i)weather", "text": "It is sunny."},
            {"pattern": "deploy", "text": "Deploy reply."},
        ],
    }
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"input": "What's the WEATHER?"}, "It is sunny.", id="string input"),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "weather please"}]}]},
            "It is sunny.",
            id="input_text parts",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "deploy"},
                    {"role": "assistant", "content": [{"type": "output_text", "text": "weather", "annotations": []}]},
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "weather"},
                ]
            },
            "Deploy reply.",
            id="last user text, not assistant or tool output",
        ),
        pytest.param({"input": "hello", "instructions": "weather"}, "Default canned text.", id="default"),
    ],
)
def test_canned_reply_for_the_model_and_last_user_text(data: dict[str, Any], expected: str) -> None:
    assert output_text(data, CANNED) == expected


def test_canned_reply_respects_the_model_glob() -> None:
    got = Response.model_validate_json(response({"input": "weather"}, "llama3", CANNED))
    assert got.output_text == "Default canned text."


# ------------------------------------------------------- max_output_tokens


@pytest.mark.parametrize("limit", [1, 3, 8, 20])
def test_max_output_tokens_cuts_to_a_prefix_and_marks_it_incomplete(limit: int) -> None:
    full = output_text({"input": "Hello"})
    got = body({"input": "Hello", "max_output_tokens": limit})
    text = got["output"][0]["content"][0]["text"]
    assert text and full.startswith(text) and text != full
    assert got["usage"]["output_tokens"] == count_tokens(text) <= limit
    assert got["status"] == "incomplete"
    assert got["incomplete_details"] == {"reason": "max_output_tokens"}
    assert got["output"][0]["status"] == "incomplete"


def test_max_output_tokens_that_fits_changes_nothing_but_the_echo() -> None:
    got = body({"input": "Hello", "max_output_tokens": 1000})
    assert got["status"] == "completed" and got["incomplete_details"] is None
    assert got["output"][0]["content"][0]["text"] == output_text({"input": "Hello"})


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"tools": [SHELL], "tool_choice": "required"}, id="call"),
        pytest.param({"text": {"format": {"type": "json_object"}}}, id="json object"),
        pytest.param(
            {"text": {"format": {"type": "json_schema", "name": "s", "schema": SCHEMAS[0].values[0]}}},
            id="json schema",
        ),
    ],
)
def test_structured_output_is_never_cut(extra: dict[str, Any]) -> None:
    got = body({"input": "Hello", "max_output_tokens": 1, **extra})
    assert got["status"] == "completed" and got["incomplete_details"] is None
    item = got["output"][0]
    json.loads(item["arguments"] if item["type"] == "function_call" else item["content"][0]["text"])


# ---------------------------------------------------------- function calls


@pytest.mark.parametrize("schema", SCHEMAS)
def test_required_tool_choice_calls_the_first_function_with_valid_arguments(schema: dict[str, Any]) -> None:
    tool = {"type": "function", "name": "record", "parameters": schema}
    got = body({"input": "Hi", "tools": [WEB_SEARCH, tool, WEATHER], "tool_choice": "required"})
    [call] = got["output"]
    assert call["type"] == "function_call" and call["status"] == "completed"
    assert call["name"] == "record"
    VALIDATOR(schema, format_checker=FORMATS).validate(json.loads(call["arguments"]))
    assert got["usage"]["output_tokens"] == count_tokens(call["arguments"])
    assert Response.model_validate(got).output_text == ""


@pytest.mark.parametrize(
    "choice",
    [
        pytest.param({"type": "function", "name": "get_weather"}, id="named"),
        pytest.param(
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]},
            id="allowed tools, required",
        ),
    ],
)
def test_a_named_function_is_called(choice: dict[str, Any]) -> None:
    got = body({"input": "Hi", "tools": [SHELL, WEATHER], "tool_choice": choice})
    [call] = got["output"]
    assert call["name"] == "get_weather"
    VALIDATOR(WEATHER["parameters"]).validate(json.loads(call["arguments"]))
    assert got["tool_choice"] == choice


@pytest.mark.parametrize(
    "choice",
    [
        pytest.param(None, id="absent"),
        pytest.param("auto", id="auto"),
        pytest.param("none", id="none"),
        pytest.param({"type": "web_search_preview"}, id="hosted tool"),
        pytest.param({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "shell"}]}),
    ],
)
def test_other_tool_choices_answer_with_a_message(choice: Any) -> None:
    data: dict[str, Any] = {"input": "Hi", "tools": [SHELL]}
    if choice is not None:
        data["tool_choice"] = choice
    assert body(data)["output"][0]["type"] == "message"


def test_function_tools_are_echoed_with_their_defaults_and_others_as_given() -> None:
    got = body({"input": "Hi", "tools": [{"type": "function", "name": "noop"}, WEB_SEARCH, WEATHER]})
    noop, search, weather = got["tools"]
    assert noop == {
        "type": "function",
        "name": "noop",
        "description": None,
        "parameters": {"type": "object", "properties": {}},
        "strict": True,
    }
    assert search == WEB_SEARCH
    assert weather == {**WEATHER, "strict": True}


def test_a_function_without_parameters_gets_an_object() -> None:
    got = body({"input": "Hi", "tools": [{"type": "function", "name": "noop"}], "tool_choice": "required"})
    arguments = json.loads(got["output"][0]["arguments"])
    assert isinstance(arguments, dict)
    VALIDATOR(got["tools"][0]["parameters"]).validate(arguments)


def test_call_arguments_depend_on_the_conversation() -> None:
    def arguments(text: str) -> str:
        return str(body({"input": text, "tools": [WEATHER], "tool_choice": "required"})["output"][0]["arguments"])

    assert len({arguments(f"q{i}") for i in range(10)}) > 1


# --------------------------------------------------------- structured text


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_output_is_valid_against_the_schema(schema: dict[str, Any]) -> None:
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    got = body({"input": "Hi", "text": {"format": fmt}})
    VALIDATOR(schema, format_checker=FORMATS).validate(
        json.loads(output_text({"input": "Hi", "text": {"format": fmt}}))
    )
    assert got["text"]["format"] == {**fmt, "description": None}


def test_json_object_output() -> None:
    data = {"input": "Hi", "text": {"format": {"type": "json_object"}}}
    value = json.loads(output_text(data))
    assert isinstance(value, dict) and set(value) == {"response"}
    canned = parse_canned({"default": '{"ok": true}'})
    assert json.loads(output_text(data, canned)) == {"ok": True}
    assert json.loads(output_text(data, parse_canned({"default": "plain"}))) == {"response": "plain"}


# --------------------------------------------------------------- the input


def test_every_kind_of_input_item_is_accepted() -> None:
    data = {
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "developer", "content": "Use tools."},
            {"role": "system", "content": [{"type": "input_text", "text": "Be safe."}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look at this"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
                    {"type": "input_file", "file_id": "file_1"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Running it.", "annotations": []}],
            },
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "done"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "ok"}]},
            {"type": "item_reference", "id": "msg_0"},
        ],
    }
    got = body(data)
    assert got["output"][0]["type"] == "message"
    texts = [
        "You are a coding agent.",
        "Use tools.",
        "Be safe.",
        "Look at this",
        "Running it.",
        '{"a":1}',
        "done",
        "ok",
    ]
    assert got["usage"]["input_tokens"] == count_tokens("\n".join(texts))


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param({}, "input", id="input missing"),
        pytest.param({"input": 5}, "input", id="input a number"),
        pytest.param({"input": {"role": "user"}}, "input", id="input an object"),
        pytest.param({"input": [1]}, "input[0]", id="item not an object"),
        pytest.param({"input": [{"type": 3}]}, "input[0]", id="item type not a string"),
        pytest.param({"input": [{"content": "hi"}]}, "input[0].role", id="message without role"),
        pytest.param({"input": [{"role": "tool", "content": "hi"}]}, "input[0].role", id="unknown role"),
        pytest.param({"input": [{"role": "user", "content": 5}]}, "input[0].content", id="content a number"),
        pytest.param({"input": [{"role": "user"}]}, "input[0].content", id="content missing"),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content", id="part no text"
        ),
        pytest.param(
            {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
            "input[0].arguments",
            id="call without arguments",
        ),
        pytest.param(
            {"input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].call_id",
            id="output without call_id",
        ),
        pytest.param(
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
            "input[0].output",
            id="output a number",
        ),
        pytest.param({"input": "x", "instructions": ["x"]}, "instructions", id="instructions a list"),
        pytest.param({"input": "x", "tools": {"type": "function"}}, "tools", id="tools an object"),
        pytest.param({"input": "x", "tools": [{"name": "f"}]}, "tools[0].type", id="tool without type"),
        pytest.param({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", id="function without name"),
        pytest.param(
            {"input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name", id="bad name"
        ),
        pytest.param(
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": []}]},
            "tools[0].parameters",
            id="parameters a list",
        ),
        pytest.param(
            {"input": "x", "tools": [{"type": "function", "name": "f", "strict": "yes"}]},
            "tools[0].strict",
            id="strict a string",
        ),
        pytest.param(
            {"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
            "tool_choice",
            id="unknown function",
        ),
        pytest.param(
            {"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice", id="no name"
        ),
        pytest.param({"input": "x", "tools": [WEB_SEARCH], "tool_choice": "required"}, "tool_choice", id="no fn"),
        pytest.param({"input": "x", "tool_choice": "always"}, "tool_choice", id="unknown tool_choice"),
        pytest.param(
            {
                "input": "x",
                "tools": [WEATHER],
                "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function"}]},
            },
            "tool_choice.tools",
            id="allowed tool without name",
        ),
        pytest.param({"input": "x", "text": "json"}, "text", id="text a string"),
        pytest.param({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format", id="unknown format"),
        pytest.param({"input": "x", "text": {"format": "json"}}, "text.format", id="format a string"),
        pytest.param(
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
            id="json_schema without name",
        ),
        pytest.param(
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": []}}},
            "text.format.schema",
            id="schema a list",
        ),
        pytest.param(
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "strict": 1}}},
            "text.format.strict",
            id="strict a number",
        ),
        pytest.param({"input": "x", "text": {"verbosity": "loud"}}, "text.verbosity", id="unknown verbosity"),
        pytest.param({"input": "x", "max_output_tokens": 0}, "max_output_tokens", id="max_output_tokens zero"),
        pytest.param({"input": "x", "max_output_tokens": -5}, "max_output_tokens", id="negative"),
        pytest.param({"input": "x", "max_output_tokens": 2.5}, "max_output_tokens", id="a float"),
        pytest.param({"input": "x", "max_output_tokens": True}, "max_output_tokens", id="a boolean"),
        pytest.param({"input": "x", "temperature": 3}, "temperature", id="temperature too high"),
        pytest.param({"input": "x", "top_p": "1"}, "top_p", id="top_p a string"),
        pytest.param({"input": "x", "previous_response_id": 7}, "previous_response_id", id="previous id a number"),
        pytest.param({"input": "x", "parallel_tool_calls": "yes"}, "parallel_tool_calls", id="flag a string"),
        pytest.param({"input": "x", "metadata": {"k": 1}}, "metadata", id="metadata value a number"),
        pytest.param({"input": "x", "truncation": "middle"}, "truncation", id="unknown truncation"),
    ],
)
def test_bad_requests_are_refused_naming_the_param(data: dict[str, Any], param: str) -> None:
    error = refused(data)
    assert error.param == param
    assert str(error)
    with pytest.raises(InvalidRequest):
        response_stream(data, MODEL, EMPTY_CANNED)


def test_an_invalid_schema_is_refused_naming_where_it_is() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "minProperties": 3, "maxProperties": 1}}
    assert refused({"input": "x", "tools": [tool], "tool_choice": "required"}).param == "tools[0].parameters"
    fmt = {"type": "json_schema", "name": "s", "schema": {"type": "string", "minLength": 5, "maxLength": 1}}
    assert refused({"input": "x", "text": {"format": fmt}}).param == "text.format.schema"


# ------------------------------------------------------------ input tokens


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"input": "Hello there, how are you?"}, id="string"),
        pytest.param({"input": "Hi", "instructions": "A long system instruction for the agent."}, id="instructions"),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "a" * 41},
                    {"type": "function_call_output", "call_id": "c", "output": "result text"},
                ],
                "tools": [WEATHER],
                "tool_choice": "required",
            },
            id="items and a call",
        ),
    ],
)
def test_input_tokens_agrees_with_usage(data: dict[str, Any]) -> None:
    counted = InputTokenCountResponse.model_validate_json(input_tokens(data))
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == body(data)["usage"]["input_tokens"] > 0


def test_input_tokens_needs_no_input_but_validates_the_rest() -> None:
    assert json.loads(input_tokens({"instructions": "abcdefgh"})) == {
        "object": "response.input_tokens",
        "input_tokens": 2,
    }
    assert json.loads(input_tokens({"model": "m"}))["input_tokens"] == 0
    with pytest.raises(InvalidRequest) as info:
        input_tokens({"input": 3})
    assert info.value.param == "input"
    with pytest.raises(InvalidRequest) as info:
        input_tokens({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "zzz"}})
    assert info.value.param == "tool_choice"


# --------------------------------------------------------------- streaming


def test_text_stream_event_sequence() -> None:
    data = {"input": "Hello", "stream": True}
    got = events(data)
    kinds = [e["type"] for e in got]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))


def test_the_stream_starts_in_progress_and_ends_with_the_response() -> None:
    data = {"input": "Hello"}
    final = body(data)
    got = events({**data, "stream": True})
    for started in (got[0]["response"], got[1]["response"]):
        assert started["status"] == "in_progress" and started["output"] == []
        assert started["id"] == final["id"] and started["created_at"] == final["created_at"]
    assert got[-1]["response"] == final
    item_id = final["output"][0]["id"]
    assert got[2]["item"]["id"] == item_id and got[2]["item"]["content"] == []
    assert got[3]["part"]["text"] == ""
    assert all(e["item_id"] == item_id for e in got[3:-2])
    assert all(e["output_index"] == 0 for e in got[2:-1])


def response_of_stream(got: list[dict[str, Any]]) -> dict[str, Any]:
    """The response rebuilt from the deltas, the way a client accumulates it."""
    final: dict[str, Any] = got[-1]["response"]
    item = dict(got[2]["item"])
    if item["type"] == "function_call":
        item["arguments"] = "".join(e["delta"] for e in got if e["type"] == "response.function_call_arguments.delta")
        assert item["arguments"] == got[-3]["arguments"]
    else:
        text = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
        assert text == next(e["text"] for e in got if e["type"] == "response.output_text.done")
        item["content"] = [{**got[3]["part"], "text": text}]
    item["status"] = got[-2]["item"]["status"]
    assert item == got[-2]["item"]
    return {**final, "output": [item]}


@pytest.mark.parametrize("data", REQUESTS)
def test_stream_deltas_join_to_exactly_the_non_stream_body(data: dict[str, Any]) -> None:
    raw = response(data, MODEL, EMPTY_CANNED)
    got = events({**data, "stream": True})
    rebuilt = response_of_stream(got)
    assert rebuilt == json.loads(raw)
    assert json.dumps(got[-1]["response"], ensure_ascii=False, separators=(",", ":")).encode() == raw


def test_function_call_stream_event_sequence() -> None:
    got = events({"input": "Hi", "tools": [WEATHER], "tool_choice": "required", "stream": True})
    kinds = [e["type"] for e in got]
    deltas = kinds.count("response.function_call_arguments.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = got[2]["item"]
    assert added["arguments"] == "" and added["status"] == "in_progress" and added["name"] == "get_weather"
    VALIDATOR(WEATHER["parameters"]).validate(json.loads(got[-3]["arguments"]))


def test_a_cut_stream_ends_with_response_incomplete() -> None:
    got = events({"input": "Hello", "max_output_tokens": 4, "stream": True})
    assert got[-1]["type"] == "response.incomplete"
    assert got[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert got[-1]["response"] == body({"input": "Hello", "max_output_tokens": 4})


def test_json_output_streams_in_fragments() -> None:
    got = events({"input": "Hi", "text": {"format": {"type": "json_object"}}, "stream": True})
    deltas = [e["delta"] for e in got if e["type"] == "response.output_text.delta"]
    assert all(len(d) <= 16 for d in deltas)
    json.loads("".join(deltas))


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(max_size=40),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=80)),
    instructions=st.one_of(st.none(), st.text(max_size=20)),
)
def test_any_prompt_gives_a_valid_response_and_a_matching_stream(
    prompt: str, limit: int | None, instructions: str | None
) -> None:
    data: dict[str, Any] = {"input": [{"role": "user", "content": [{"type": "input_text", "text": prompt}]}]}
    if limit is not None:
        data["max_output_tokens"] = limit
    if instructions is not None:
        data["instructions"] = instructions
    got = body(data)
    assert got["usage"]["output_tokens"] <= (limit or 10**9)
    assert response_of_stream(events(data)) == got
    assert json.loads(input_tokens(data))["input_tokens"] == got["usage"]["input_tokens"]
