"""The deterministic fallback through the proxy, seen by the official openai SDK."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageFunctionToolCall

from tests.conftest import ThreadedServers, make_config

MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the incident"}]

WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}

SCHEMAS: list[Any] = [
    pytest.param(
        {
            "type": "object",
            "properties": {
                "severity": {"enum": ["low", "medium", "high"]},
                "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 10, "multipleOf": 0.5},
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z]{3,8}$"},
                    "minItems": 2,
                    "uniqueItems": True,
                },
                "when": {"type": "string", "format": "date-time"},
                "owner": {"type": ["string", "null"], "format": "email"},
                "id": {"type": "string", "format": "uuid"},
            },
            "required": ["severity", "score", "tags", "when", "owner", "id"],
            "additionalProperties": False,
        },
        id="incident record",
    ),
    pytest.param(
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    },
                    "required": ["name"],
                }
            },
            "$ref": "#/$defs/node",
        },
        id="recursive ref",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {"v": {"oneOf": [{"type": "integer", "minimum": 5}, {"type": "string", "const": "x"}]}},
            "required": ["v"],
        },
        id="oneOf",
    ),
]


@pytest.fixture
def sdk(threaded: ThreadedServers) -> openai.OpenAI:
    base = threaded.start_proxy(make_config(None, {"LLM_MODEL": "llama3.2:3b-instruct-q4_K_M"}))
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def test_chat_text_is_marked_and_deterministic(sdk: openai.OpenAI) -> None:
    raw_1 = sdk.chat.completions.with_raw_response.create(model="default", messages=MESSAGES)
    raw_2 = sdk.chat.completions.with_raw_response.create(model="default", messages=MESSAGES)
    assert raw_1.headers["X-Airgap-Upstream"] == "deterministic"
    assert raw_1.http_response.content == raw_2.http_response.content
    chat = raw_1.parse()
    assert chat.model == "llama3.2:3b-instruct-q4_K_M"
    assert chat.system_fingerprint == "fp_airgap_deterministic"
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.total_tokens > 0
    other = sdk.chat.completions.create(model="default", messages=[{"role": "user", "content": "different"}])
    assert other.id != chat.id


def test_identical_bytes_across_a_restart(threaded: ThreadedServers) -> None:
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES, "response_format": {"type": "json_object"}}
    contents = []
    for _ in range(2):  # two separate proxy instances stand for a restart
        base = threaded.start_proxy(make_config())
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(**body)
        contents.append(raw.http_response.content)
    assert contents[0] == contents[1]
    assert isinstance(json.loads(json.loads(contents[0])["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_output_validates(sdk: openai.OpenAI, schema: dict[str, Any]) -> None:
    chat = sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}},
    )
    content = chat.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), schema, format_checker=jsonschema.FormatChecker())


def test_unsatisfiable_schema_is_a_clear_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="m",
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}},
            },
        )
    assert info.value.status_code == 400
    assert "response_format" in info.value.message


@pytest.mark.parametrize(
    "tool_choice",
    [
        pytest.param("required", id="required"),
        pytest.param({"type": "function", "function": {"name": "get_weather"}}, id="named"),
    ],
)
def test_tool_calls_validate_against_the_tool_schema(sdk: openai.OpenAI, tool_choice: Any) -> None:
    chat = sdk.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=tool_choice)
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])  # type: ignore[union-attr]


def test_tool_choice_auto_answers_text(sdk: openai.OpenAI) -> None:
    chat = sdk.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="auto")
    assert chat.choices[0].message.tool_calls in (None, [])
    assert chat.choices[0].message.content


def test_streaming_reassembles_to_the_plain_answer(sdk: openai.OpenAI) -> None:
    plain = sdk.chat.completions.create(model="m", messages=MESSAGES)
    chunks = list(
        sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]
    assert {c.id for c in chunks} == {plain.id}


def test_streaming_tool_call_reassembles(sdk: openai.OpenAI) -> None:
    plain = sdk.chat.completions.create(model="m", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="required")
    arguments = ""
    for chunk in sdk.chat.completions.create(
        model="m", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="required", stream=True
    ):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += (call.function.arguments or "") if call.function else ""
    assert arguments == plain.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index,union-attr]


@pytest.mark.parametrize("dimensions", [None, 256, 3])
def test_embeddings_decode_to_unit_vectors_with_the_sdk_default_base64(
    sdk: openai.OpenAI, dimensions: int | None
) -> None:
    kwargs: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
    result = sdk.embeddings.create(model="nomic-embed-text", input=["alpha", "beta"], **kwargs)  # base64 on the wire
    assert len(result.data) == 2
    for item in result.data:
        vector = item.embedding
        if dimensions is not None:
            assert len(vector) == dimensions
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-5)
    as_float = sdk.embeddings.create(
        model="nomic-embed-text", input=["alpha", "beta"], encoding_format="float", **kwargs
    )
    assert [round(v, 5) for v in as_float.data[0].embedding] == [round(v, 5) for v in result.data[0].embedding]
    assert result.data[0].embedding != result.data[1].embedding


def test_legacy_completion_and_models(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model="m", prompt="Once upon a time")
    assert completion.choices[0].text
    assert [m.id for m in sdk.models.list()] == ["llama3.2:3b-instruct-q4_K_M"]


_simple: st.SearchStrategy[dict[str, Any]] = st.deferred(
    lambda: st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])}),
        st.fixed_dictionaries(
            {"type": st.just("integer"), "minimum": st.integers(-50, 0), "maximum": st.integers(1, 50)}
        ),
        st.fixed_dictionaries(
            {"type": st.just("string"), "minLength": st.integers(0, 5), "maxLength": st.integers(5, 12)}
        ),
        st.fixed_dictionaries(
            {"enum": st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=4, unique=True)}
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": _simple, "minItems": st.integers(0, 3)}),
        st.builds(
            lambda props, req: {
                "type": "object",
                "properties": props,
                "required": sorted(props)[:req],
                "additionalProperties": False,
            },
            st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), _simple, min_size=1, max_size=4),
            st.integers(0, 4),
        ),
        st.builds(lambda a, b: {"anyOf": [a, b]}, _simple, _simple),
    )
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_simple)
def test_generated_schemas_validate_through_the_sdk(sdk: openai.OpenAI, schema: dict[str, Any]) -> None:
    root = {"type": "object", "properties": {"value": schema}, "required": ["value"], "additionalProperties": False}
    chat = sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "g", "schema": root}},
    )
    jsonschema.validate(json.loads(chat.choices[0].message.content or ""), root)


def test_many_distinct_values_through_the_sdk(sdk: openai.OpenAI) -> None:
    """uniqueItems over an enum of exactly minItems values, and closed patternProperties with minProperties.

    Both were refused with 400 from 50 values on, after seconds of work for 1,000.
    """
    values = [f"v{i}" for i in range(1_000)]
    schema = {
        "type": "object",
        "properties": {"picked": {"type": "array", "uniqueItems": True, "minItems": 1_000, "items": {"enum": values}}},
        "required": ["picked"],
        "additionalProperties": False,
    }
    chat = sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "all", "schema": schema}},
        extra_headers={"X-Airgap-Mode": "deterministic"},
    )
    jsonschema.validate(json.loads(chat.choices[0].message.content or ""), schema)
    parameters = {
        "type": "object",
        "patternProperties": {"^x[0-9]+$": {"type": "integer"}},
        "propertyNames": {"maxLength": 12},
        "additionalProperties": False,
        "minProperties": 200,
    }
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "tally", "parameters": parameters},
    }
    called = sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "tally"}},
        extra_headers={"X-Airgap-Mode": "deterministic"},
    )
    calls = called.choices[0].message.tool_calls
    assert calls is not None
    call = calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    jsonschema.validate(json.loads(call.function.arguments), parameters)
