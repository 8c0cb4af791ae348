"""Tests for :mod:`airgap_proxy.fallback`: deterministic OpenAI-shaped bodies and streams.

JSON Schema instance generation has its own files (``test_fallback_schema.py``,
``test_fallback_pattern.py``); here schemas appear only as tool parameters and
``response_format``.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import (
    EMPTY_CANNED,
    SYSTEM_FINGERPRINT,
    Canned,
    Kind,
    chat_completion,
    chat_completion_stream,
    completion,
    completion_stream,
    embeddings,
    kind_of,
    models_list,
    parse_canned,
)
from airgap_proxy.fallback.text import SENTENCES, count_tokens

MODEL = "llama3.1:8b"
VALIDATOR = jsonschema.Draft202012Validator
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def chat_request(content: Any = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": content}], **extra}


def chat(data: dict[str, Any], model: str = MODEL, canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(chat_completion(data, model, canned))
    return body


def events_of(raw: list[bytes]) -> list[dict[str, Any]]:
    """Parse SSE events, checking the framing and the compact JSON on the way."""
    assert raw[-1] == b"data: [DONE]\n\n"
    parsed = []
    for event in raw[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        payload = event[len(b"data: ") : -2].decode()
        assert "\n" not in payload
        value = json.loads(payload)
        assert json.dumps(value, separators=(",", ":"), ensure_ascii=False) == payload, "not compact JSON"
        parsed.append(value)
    return parsed


def reassemble(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Fold chat chunks into one message per choice index, as an SDK accumulator would."""
    messages: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            message = messages.setdefault(choice["index"], {"finish_reason": None})
            delta = choice["delta"]
            if "role" in delta:
                assert "content" in delta
                message["role"] = delta["role"]
                message["content"] = delta["content"]
            elif "content" in delta:
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls", []):
                calls = message.setdefault("tool_calls", [])
                if "id" in call:
                    assert call["function"]["arguments"] == ""
                    calls.append({"id": call["id"], "type": call["type"], "function": dict(call["function"])})
                else:
                    calls[call["index"]]["function"]["arguments"] += call["function"]["arguments"]
            if "function_call" in delta:
                fc = message.setdefault("function_call", {"name": None, "arguments": ""})
                fc["name"] = delta["function_call"].get("name", fc["name"])
                fc["arguments"] += delta["function_call"]["arguments"]
            if choice["finish_reason"] is not None:
                assert delta == {}
                message["finish_reason"] = choice["finish_reason"]
    return messages


def assert_stream_matches(data: dict[str, Any], canned: Canned = EMPTY_CANNED) -> list[dict[str, Any]]:
    """Streaming ``data`` gives the same messages, ids and usage as not streaming it."""
    body = chat(data, canned=canned)
    chunks = events_of(chat_completion_stream({**data, "stream": True}, MODEL, canned))
    include_usage = bool(data.get("stream_options", {}).get("include_usage"))
    for chunk in chunks:
        assert chunk["id"] == body["id"]
        assert chunk["created"] == body["created"]
        assert chunk["model"] == MODEL
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["system_fingerprint"] == SYSTEM_FINGERPRINT
        assert ("usage" in chunk) == include_usage
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == body["usage"]
        chunks = chunks[:-1]
    assert all(len(c["choices"]) == 1 for c in chunks)
    messages = reassemble(chunks)
    assert sorted(messages) == [c["index"] for c in body["choices"]]
    for choice in body["choices"]:
        got = messages[choice["index"]]
        want = choice["message"]
        assert got["role"] == "assistant"
        assert got["content"] == want["content"]
        assert got.get("tool_calls") == want.get("tool_calls")
        assert got.get("function_call") == want.get("function_call")
        assert got["finish_reason"] == choice["finish_reason"]
    return chunks


def assert_invalid(call: Any, param: str, match: str | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call()
    assert info.value.status == 400
    assert info.value.param == param, info.value.message
    if match is not None:
        assert re.search(match, info.value.message), info.value.message
    return info.value


# --------------------------------------------------------------------------- #
# Determinism
# --------------------------------------------------------------------------- #

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
            "required": ["query"],
        },
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}

CALLS = [
    pytest.param(lambda: chat_completion(chat_request(), MODEL, EMPTY_CANNED), id="chat"),
    pytest.param(lambda: chat_completion_stream(chat_request(stream=True), MODEL, EMPTY_CANNED), id="chat stream"),
    pytest.param(
        lambda: chat_completion(chat_request(tools=[TOOL], tool_choice="required", n=3), MODEL, EMPTY_CANNED),
        id="tool calls",
    ),
    pytest.param(
        lambda: chat_completion(
            chat_request(
                response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON_SCHEMA}}
            ),
            MODEL,
            EMPTY_CANNED,
        ),
        id="json schema",
    ),
    pytest.param(lambda: completion({"prompt": ["a", "b"], "n": 2}, MODEL, EMPTY_CANNED), id="completion"),
    pytest.param(
        lambda: completion_stream({"prompt": "a", "stream": True}, MODEL, EMPTY_CANNED), id="completion stream"
    ),
    pytest.param(lambda: embeddings({"input": ["a", "b"]}, MODEL), id="embeddings"),
    pytest.param(lambda: embeddings({"input": "a", "encoding_format": "base64"}, MODEL), id="embeddings base64"),
    pytest.param(lambda: models_list(["a", "b"]), id="models"),
]


@pytest.mark.parametrize("call", CALLS)
def test_same_request_gives_identical_bytes(call: Any) -> None:
    assert call() == call() == call()


def test_key_order_and_whitespace_of_the_request_do_not_matter() -> None:
    a = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    b = json.loads('{"messages": [{"content": "hi", "role": "user"}], "temperature": 0, "model": "m"}')
    assert chat_completion(a, MODEL, EMPTY_CANNED) == chat_completion(b, MODEL, EMPTY_CANNED)


SCRIPT = """
import hashlib, json, sys
from airgap_proxy.fallback import chat_completion, chat_completion_stream, embeddings, EMPTY_CANNED
data = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], "n": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads(sys.argv[1])}}}
h = hashlib.sha256(chat_completion(data, "m", EMPTY_CANNED))
for event in chat_completion_stream(data, "m", EMPTY_CANNED):
    h.update(event)
h.update(embeddings({"input": ["a", "b"], "dimensions": 64}, "m"))
h.update(embeddings({"input": [[1, 2]], "encoding_format": "base64"}, "m"))
print(h.hexdigest())
"""


def test_same_bytes_in_other_processes_whatever_the_hash_seed() -> None:
    """No ``hash()``, set iteration order or other per-process state leaks into the output."""
    root = Path(__file__).resolve().parent.parent
    outputs = set()
    for hash_seed in ("0", "1", "4242"):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(PERSON_SCHEMA)],
            capture_output=True,
            text=True,
            check=False,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1


def test_golden_response_pins_the_algorithm() -> None:
    """The same bytes on every machine and release: change this only on purpose."""
    body = chat({"model": "m", "messages": [{"role": "user", "content": "ping"}]}, model="m")
    assert (body["id"], body["created"]) == ("chatcmpl-2a57ad2f3c27bcf48da9cff6", 1742830212)
    assert body["choices"][0]["message"]["content"] == (
        "Nothing in this request left the network. The same request always receives exactly the same response. "
        "This is a deterministic reply from airgap-proxy."
    )


@given(st.text(max_size=40), st.text(max_size=40))
@settings(max_examples=60, deadline=None)
def test_different_requests_get_different_ids(a: str, b: str) -> None:
    body_a, body_b = chat(chat_request(a)), chat(chat_request(b))
    assert (body_a["id"] == body_b["id"]) == (a == b)


def test_ids_and_created_look_like_openai() -> None:
    body = chat(chat_request())
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", body["id"])
    assert 1_700_000_000 <= body["created"] < 1_800_000_000
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["system_fingerprint"] == SYSTEM_FINGERPRINT
    assert SYSTEM_FINGERPRINT == "fp_airgap_deterministic"


def test_the_model_argument_is_the_response_model_and_part_of_the_seed() -> None:
    a = chat(chat_request(), model="a")
    b = chat(chat_request(), model="b")
    assert (a["model"], b["model"]) == ("a", "b")
    assert a["id"] != b["id"]


def test_streaming_and_non_streaming_share_the_id() -> None:
    body = chat(chat_request())
    chunks = events_of(chat_completion_stream(chat_request(stream=True), MODEL, EMPTY_CANNED))
    assert {c["id"] for c in chunks} == {body["id"]}


# --------------------------------------------------------------------------- #
# Text, n, max_tokens, stop
# --------------------------------------------------------------------------- #


def test_text_reply_is_made_of_the_neutral_sentences() -> None:
    body = chat(chat_request())
    (choice,) = body["choices"]
    content = choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    picked = [s for s in SENTENCES if s in content]
    assert len(picked) == 3 and len(" ".join(picked)) == len(content)
    usage = body["usage"]
    assert usage["completion_tokens"] == count_tokens(content)
    assert usage["prompt_tokens"] == count_tokens("Hello there")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("n", range(1, 9))
def test_n_choices(n: int) -> None:
    body = chat(chat_request(n=n))
    assert [c["index"] for c in body["choices"]] == list(range(n))
    total = sum(count_tokens(c["message"]["content"]) for c in body["choices"])
    assert body["usage"]["completion_tokens"] == total


def test_choices_differ_from_each_other() -> None:
    body = chat(chat_request(n=8))
    assert len({c["message"]["content"] for c in body["choices"]}) > 1


@pytest.mark.parametrize("n", [0, 9, -1, "2", 2.0, True, [1]])
def test_bad_n_is_refused(n: Any) -> None:
    assert_invalid(lambda: chat(chat_request(n=n)), "n")


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [0, 1, 2, 5, 9, 17, 30])
def test_max_tokens_truncates_to_a_prefix(param: str, limit: int) -> None:
    full = chat(chat_request())["choices"][0]["message"]["content"]
    body = chat(chat_request(**{param: limit}))
    choice = body["choices"][0]
    content = choice["message"]["content"]
    assert full.startswith(content)
    assert body["usage"]["completion_tokens"] == count_tokens(content) <= limit
    if count_tokens(full) <= limit:
        assert (content, choice["finish_reason"]) == (full, "stop")
    else:
        assert choice["finish_reason"] == "length"
        assert content == "" or content == full[: len(content)]
        if limit >= 4:  # whole words: the cut falls before a space of the full text
            assert full[len(content)] == " "


@pytest.mark.parametrize("value", [-1, "10", 1.5, True])
@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_bad_max_tokens_is_refused(param: str, value: Any) -> None:
    assert_invalid(lambda: chat(chat_request(**{param: value})), param)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    body = chat(chat_request(max_tokens=100, max_completion_tokens=3))
    assert body["choices"][0]["finish_reason"] == "length"


def test_stop_cuts_before_the_earliest_sequence() -> None:
    full = chat(chat_request())["choices"][0]["message"]["content"]
    first_period = full.index(".")
    body = chat(chat_request(stop=["zzz", "."]))
    assert body["choices"][0]["message"]["content"] == full[:first_period]
    assert body["choices"][0]["finish_reason"] == "stop"
    word = full.split()[2]
    assert chat(chat_request(stop=word))["choices"][0]["message"]["content"] == full[: full.index(word)]
    assert chat(chat_request(stop=["not in the text"]))["choices"][0]["message"]["content"] == full


def test_stop_then_max_tokens() -> None:
    body = chat(chat_request(stop=".", max_tokens=2))
    assert body["choices"][0]["finish_reason"] == "length"
    body = chat(chat_request(stop=" ", max_tokens=50))
    assert body["choices"][0]["finish_reason"] == "stop"
    assert " " not in body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stop", [1, ["a", 2], ["a", "b", "c", "d", "e"], {"a": 1}])
def test_bad_stop_is_refused(stop: Any) -> None:
    assert_invalid(lambda: chat(chat_request(stop=stop)), "stop")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        pytest.param(None, "messages", id="missing"),
        pytest.param([], "messages", id="empty"),
        pytest.param("hi", "messages", id="a string"),
        pytest.param([1], "messages[0]", id="item not an object"),
        pytest.param([{"content": "hi"}], "messages[0].role", id="no role"),
        pytest.param([{"role": "robot", "content": "hi"}], "messages[0].role", id="unknown role"),
        pytest.param([{"role": "user", "content": 5}], "messages[0].content", id="content a number"),
        pytest.param([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content", id="part without type"),
        pytest.param([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content", id="text part no text"),
        pytest.param(
            [{"role": "user", "content": "a"}, {"role": "user", "content": {}}], "messages[1].content", id="second"
        ),
    ],
)
def test_bad_messages_are_refused(messages: Any, param: str) -> None:
    assert_invalid(lambda: chat({"model": "m", "messages": messages}), param)


def test_content_parts_and_other_roles_are_accepted() -> None:
    data = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Really."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {}}]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ]
    }
    body = chat(data)
    assert body["usage"]["prompt_tokens"] == count_tokens("Be brief.\nReally.\nHi\n42")


# --------------------------------------------------------------------------- #
# Canned replies
# --------------------------------------------------------------------------- #

CANNED_YAML_DATA = {
    "default": "Default canned text.",
    "replies": [
        {"model": "llama3*", "pattern": "(?i)weather", "text": "Llama says it is sunny."},
        {"pattern": "(?i)weather", "text": "It is sunny."},
        {"model": "mistral:7b", "text": "Mistral reply."},
        {"pattern": "^\\{", "text": '{"answer": 42}'},
    ],
}


@pytest.mark.parametrize(
    ("model", "content", "expected"),
    [
        pytest.param("llama3.1:8b", "What's the WEATHER?", "Llama says it is sunny.", id="model glob and pattern"),
        pytest.param("qwen2", "weather today", "It is sunny.", id="pattern only"),
        pytest.param("mistral:7b", "anything", "Mistral reply.", id="exact model"),
        pytest.param("mistral:7b-instruct", "anything", "Default canned text.", id="exact is not a prefix"),
        pytest.param("llama3", [{"type": "text", "text": "weather?"}], "Llama says it is sunny.", id="content parts"),
        pytest.param("qwen2", "no match", "Default canned text.", id="default"),
        pytest.param("mistral:7b", "weather", "It is sunny.", id="first match wins"),
    ],
)
def test_canned_reply_matching(model: str, content: Any, expected: str) -> None:
    canned = parse_canned(CANNED_YAML_DATA)
    body = chat(chat_request(content), model=model, canned=canned)
    assert body["choices"][0]["message"]["content"] == expected


def test_canned_pattern_looks_at_the_last_user_message() -> None:
    canned = parse_canned(CANNED_YAML_DATA)
    data = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "thanks"},
        ]
    }
    assert chat(data, model="qwen2", canned=canned)["choices"][0]["message"]["content"] == "Default canned text."


def test_canned_reply_honours_stop_max_tokens_n_and_streaming() -> None:
    canned = parse_canned({"replies": [{"text": "one two three four five six seven"}]})
    body = chat(chat_request(n=2, max_tokens=4), canned=canned)
    assert [c["message"]["content"] for c in body["choices"]] == ["one two three"] * 2
    assert chat(chat_request(stop="four"), canned=canned)["choices"][0]["message"]["content"] == "one two three "
    assert_stream_matches(chat_request(n=2), canned=canned)


def test_canned_json_object_reply_is_used_for_json_mode() -> None:
    canned = parse_canned(CANNED_YAML_DATA)
    body = chat(chat_request("{json please", response_format={"type": "json_object"}), model="x", canned=canned)
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": 42}
    body = chat(chat_request("weather", response_format={"type": "json_object"}), model="x", canned=canned)
    assert json.loads(body["choices"][0]["message"]["content"]) == {"response": "It is sunny."}


def test_no_canned_replies_without_a_file() -> None:
    assert parse_canned(None) == EMPTY_CANNED
    assert parse_canned({}) == EMPTY_CANNED
    assert parse_canned({"version": 1, "replies": []}) == EMPTY_CANNED
    assert EMPTY_CANNED.reply_for("m", "anything") is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param([], "<root>: expected a mapping", id="top level list"),
        pytest.param({"replys": []}, "replys: unknown key", id="unknown top key"),
        pytest.param({"version": 2}, "version: unsupported version 2", id="version"),
        pytest.param({"default": 3}, "default: expected a string, got a number", id="default not a string"),
        pytest.param({"replies": {"text": "x"}}, "replies: expected a list, got a mapping", id="replies a mapping"),
        pytest.param({"replies": ["x"]}, "replies[0]: expected a mapping", id="reply a string"),
        pytest.param({"replies": [{"model": "m"}]}, "replies[0].text: required", id="missing text"),
        pytest.param({"replies": [{"text": 1}]}, "replies[0].text: expected a string, got a number", id="text number"),
        pytest.param({"replies": [{"text": "a", "modle": "m"}]}, "replies[0].modle: unknown key", id="unknown key"),
        pytest.param({"replies": [{"text": "a", "model": ""}]}, "replies[0].model: expected a non-empty", id="model"),
        pytest.param(
            {"replies": [{"text": "a"}, {"text": "b"}, {"text": "c", "pattern": "(unclosed"}]},
            "replies[2].pattern: invalid regex '(unclosed'",
            id="bad regex names the index",
        ),
        pytest.param({"replies": [{"text": "a", "pattern": ["x"]}]}, "replies[0].pattern: expected", id="pattern list"),
    ],
)
def test_parse_canned_errors_name_the_path(raw: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_canned(raw)
    assert str(info.value).startswith(message), str(info.value)


def test_canned_is_frozen() -> None:
    canned = parse_canned(CANNED_YAML_DATA)
    with pytest.raises(AttributeError):
        canned.default = "x"  # type: ignore[misc]
    assert canned == parse_canned(CANNED_YAML_DATA)


# --------------------------------------------------------------------------- #
# Tools and legacy functions
# --------------------------------------------------------------------------- #


def tool_call_of(body: dict[str, Any], index: int = 0) -> dict[str, Any]:
    choice = body["choices"][index]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["type"] == "function"
    return dict(call["function"])


def test_tool_choice_required_calls_the_first_tool_with_valid_arguments() -> None:
    body = chat(chat_request(tools=[TOOL, SEARCH_TOOL], tool_choice="required"))
    function = tool_call_of(body)
    assert function["name"] == "get_weather"
    arguments = json.loads(function["arguments"])
    VALIDATOR(TOOL["function"]["parameters"]).validate(arguments)  # type: ignore[index]
    assert body["usage"]["completion_tokens"] == count_tokens(function["arguments"])
    assert kind_of(chat_request(tools=[TOOL], tool_choice="required")) is Kind.TOOL_CALLS


def test_named_tool_choice_calls_that_tool() -> None:
    choice = {"type": "function", "function": {"name": "search"}}
    function = tool_call_of(chat(chat_request(tools=[TOOL, SEARCH_TOOL], tool_choice=choice)))
    assert function["name"] == "search"
    VALIDATOR(SEARCH_TOOL["function"]["parameters"]).validate(json.loads(function["arguments"]))  # type: ignore[index]


@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
def test_auto_none_or_absent_tool_choice_answers_with_text(tool_choice: str | None) -> None:
    data = chat_request(tools=[TOOL])
    if tool_choice is not None:
        data["tool_choice"] = tool_choice
    message = chat(data)["choices"][0]["message"]
    assert isinstance(message["content"], str) and message["content"]
    assert "tool_calls" not in message
    assert kind_of(data) is Kind.TEXT


def test_each_choice_gets_its_own_tool_call() -> None:
    body = chat(chat_request(tools=[TOOL], tool_choice="required", n=3))
    calls = [body["choices"][i]["message"]["tool_calls"][0] for i in range(3)]
    assert len({c["id"] for c in calls}) == 3
    for call in calls:
        VALIDATOR(TOOL["function"]["parameters"]).validate(json.loads(call["function"]["arguments"]))  # type: ignore[index]


def test_a_tool_without_parameters_gets_an_empty_object() -> None:
    tool = {"type": "function", "function": {"name": "now"}}
    assert tool_call_of(chat(chat_request(tools=[tool], tool_choice="required")))["arguments"] == "{}"


@pytest.mark.parametrize(
    ("extra", "param", "match"),
    [
        pytest.param(
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "no tool named 'nope'",
            id="unknown named function",
        ),
        pytest.param({"tool_choice": "required"}, "tool_choice", "no 'tools'", id="required without tools"),
        pytest.param({"tools": [TOOL], "tool_choice": "always"}, "tool_choice", None, id="unknown mode"),
        pytest.param({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice", None, id="no function"),
        pytest.param({"tools": {"a": 1}}, "tools", None, id="tools not a list"),
        pytest.param({"tools": [{"type": "retrieval"}]}, "tools[0].type", None, id="not a function tool"),
        pytest.param({"tools": [{"type": "function"}]}, "tools[0].function", None, id="function missing"),
        pytest.param(
            {"tools": [TOOL, {"type": "function", "function": {"name": "has space"}}]},
            "tools[1].function.name",
            None,
            id="bad name",
        ),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
            None,
            id="parameters not an object",
        ),
        pytest.param(
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "integer", "minimum": 3, "maximum": 1}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
            r"^tools\[0\]\.function\.parameters: minimum 3 is greater than maximum 1",
            id="unsatisfiable parameters",
        ),
    ],
)
def test_bad_tools_are_refused(extra: dict[str, Any], param: str, match: str | None) -> None:
    assert_invalid(lambda: chat(chat_request(**extra)), param, match)


def test_unsatisfiable_parameters_of_an_uncalled_tool_are_not_an_error() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "integer", "minimum": 3, "maximum": 1}}}
    assert chat(chat_request(tools=[TOOL, bad], tool_choice="required"))["choices"][0]["finish_reason"] == "tool_calls"


def test_legacy_function_call_is_supported() -> None:
    functions = [TOOL["function"]]
    body = chat(chat_request(functions=functions, function_call={"name": "get_weather"}))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    call = choice["message"]["function_call"]
    assert call["name"] == "get_weather"
    VALIDATOR(TOOL["function"]["parameters"]).validate(json.loads(call["arguments"]))  # type: ignore[index]
    assert kind_of(chat_request(functions=functions, function_call={"name": "get_weather"})) is Kind.FUNCTION_CALL
    for mode in ("auto", "none"):
        assert chat(chat_request(functions=functions, function_call=mode))["choices"][0]["finish_reason"] == "stop"
    assert_invalid(lambda: chat(chat_request(functions=functions, function_call={"name": "x"})), "function_call")
    assert_invalid(lambda: chat(chat_request(functions=functions, function_call=3)), "function_call")
    assert_invalid(lambda: chat(chat_request(functions="f")), "functions")


# --------------------------------------------------------------------------- #
# response_format
# --------------------------------------------------------------------------- #


def test_json_object_content_is_a_json_object() -> None:
    data = chat_request(response_format={"type": "json_object"}, max_tokens=1, stop=["{", '"'])
    body = chat(data)
    choice = body["choices"][0]
    assert isinstance(json.loads(choice["message"]["content"]), dict)
    assert choice["finish_reason"] == "stop"
    assert kind_of(data) is Kind.JSON_OBJECT


def test_text_response_format_is_text() -> None:
    assert (
        chat(chat_request(response_format={"type": "text"}))["choices"][0]["message"]["content"]
        == chat(chat_request())["choices"][0]["message"]["content"]
    )


def test_json_schema_content_is_valid() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}
    body = chat(chat_request(response_format=fmt, n=4))
    for choice in body["choices"]:
        VALIDATOR(PERSON_SCHEMA, format_checker=FORMATS).validate(json.loads(choice["message"]["content"]))
        assert choice["finish_reason"] == "stop"
    assert len({c["message"]["content"] for c in body["choices"]}) > 1
    assert kind_of(chat_request(response_format=fmt)) is Kind.JSON_SCHEMA


def test_json_schema_without_schema_gives_an_object() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "anything"}}
    assert isinstance(json.loads(chat(chat_request(response_format=fmt))["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(
    "response_format",
    [
        pytest.param("json", id="a string"),
        pytest.param({"type": "xml"}, id="unknown type"),
        pytest.param({}, id="no type"),
        pytest.param({"type": "json_schema"}, id="no json_schema"),
        pytest.param({"type": "json_schema", "json_schema": {"schema": {}}}, id="no name"),
        pytest.param({"type": "json_schema", "json_schema": {"name": "a b"}}, id="bad name"),
        pytest.param({"type": "json_schema", "json_schema": {"name": "a", "schema": []}}, id="schema a list"),
        pytest.param({"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}, id="strict a string"),
    ],
)
def test_bad_response_format_is_refused(response_format: Any) -> None:
    assert_invalid(lambda: chat(chat_request(response_format=response_format)), "response_format")


def test_unsatisfiable_json_schema_is_a_400_naming_the_problem() -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 10, "maximum": 5}},
        "required": ["age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    error = assert_invalid(
        lambda: chat(chat_request(response_format=fmt)),
        "response_format",
        r"^response_format\.json_schema: minimum 10 is greater than maximum 5 \(at #/properties/age\)$",
    )
    assert error.envelope()["error"]["code"] == "invalid_request_error"
    assert_invalid(
        lambda: chat_completion_stream(chat_request(response_format=fmt), MODEL, EMPTY_CANNED), "response_format"
    )


# --------------------------------------------------------------------------- #
# Streaming
# --------------------------------------------------------------------------- #

STREAM_CASES = [
    pytest.param({}, id="text"),
    pytest.param({"n": 3}, id="n=3"),
    pytest.param({"max_tokens": 7}, id="max_tokens"),
    pytest.param({"stop": "."}, id="stop"),
    pytest.param({"tools": [TOOL], "tool_choice": "required"}, id="tool call"),
    pytest.param({"tools": [TOOL], "tool_choice": "required", "n": 2}, id="tool calls n=2"),
    pytest.param({"functions": [TOOL["function"]], "function_call": {"name": "get_weather"}}, id="function call"),
    pytest.param({"response_format": {"type": "json_object"}}, id="json object"),
    pytest.param(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON_SCHEMA}}},
        id="json schema",
    ),
    pytest.param({"max_tokens": 0}, id="empty content"),
]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("extra", STREAM_CASES)
def test_stream_reassembles_to_the_non_streaming_answer(extra: dict[str, Any], include_usage: bool) -> None:
    data = chat_request(**extra)
    if include_usage:
        data["stream_options"] = {"include_usage": True}
    chunks = assert_stream_matches(data)
    by_choice: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        by_choice.setdefault(chunk["choices"][0]["index"], []).append(chunk["choices"][0])
    for choices in by_choice.values():
        first, last = choices[0], choices[-1]
        assert first["delta"]["role"] == "assistant"
        assert last["delta"] == {} and last["finish_reason"] is not None
        assert all(c["finish_reason"] is None for c in choices[:-1])


def test_stream_content_chunks_are_a_few_words() -> None:
    chunks = events_of(chat_completion_stream(chat_request(stream=True), MODEL, EMPTY_CANNED))
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(pieces) > 3
    assert all(1 <= len(p.split()) <= 3 for p in pieces)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_tool_call_stream_starts_with_id_and_name() -> None:
    chunks = events_of(chat_completion_stream(chat_request(tools=[TOOL], tool_choice="required"), MODEL, EMPTY_CANNED))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    first = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert re.fullmatch(r"call_[0-9a-f]{24}", first["id"])
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[2:-1]]
    assert len(fragments) >= 2
    assert all(set(f) == {"index", "function"} for f in fragments)


def test_usage_chunk_only_when_asked() -> None:
    for options, expected in (
        (None, False),
        ({}, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
    ):
        data = chat_request(stream=True)
        if options is not None:
            data["stream_options"] = options
        chunks = events_of(chat_completion_stream(data, MODEL, EMPTY_CANNED))
        assert any(c["choices"] == [] for c in chunks) is expected
    assert_invalid(
        lambda: chat_completion_stream(chat_request(stream_options=1), MODEL, EMPTY_CANNED), "stream_options"
    )
    assert_invalid(
        lambda: chat_completion_stream(chat_request(stream_options={"include_usage": "yes"}), MODEL, EMPTY_CANNED),
        "stream_options.include_usage",
    )


@given(
    content=st.text(max_size=30),
    max_tokens=st.none() | st.integers(0, 40),
    stop=st.none() | st.sampled_from(["a", "e", ". ", "the", "x"]),
    n=st.integers(1, 3),
)
@settings(max_examples=80, deadline=None)
def test_stream_equals_non_stream_for_any_text_request(
    content: str, max_tokens: int | None, stop: str | None, n: int
) -> None:
    data = chat_request(content, n=n, stream_options={"include_usage": True})
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    if stop is not None:
        data["stop"] = stop
    assert_stream_matches(data)


# --------------------------------------------------------------------------- #
# Legacy completions
# --------------------------------------------------------------------------- #


def completion_body(data: dict[str, Any], canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(completion(data, MODEL, canned))
    return body


def test_completion_shape_and_default_max_tokens() -> None:
    body = completion_body({"prompt": "Once upon a time"})
    assert re.fullmatch(r"cmpl-[0-9a-f]{24}", body["id"])
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    (choice,) = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert count_tokens(choice["text"]) <= 16
    assert choice["finish_reason"] == "length"  # the API's default max_tokens is 16
    assert body["usage"]["prompt_tokens"] == count_tokens("Once upon a time")
    assert body["usage"]["completion_tokens"] == count_tokens(choice["text"])
    long = completion_body({"prompt": "Once upon a time", "max_tokens": 500})
    assert long["choices"][0]["finish_reason"] == "stop"
    assert long["choices"][0]["text"].startswith(choice["text"])


def test_one_choice_per_prompt_and_n() -> None:
    body = completion_body({"prompt": ["a", "b", "c"], "n": 2, "max_tokens": 100})
    assert [c["index"] for c in body["choices"]] == list(range(6))
    single = completion_body({"prompt": "b", "n": 2, "max_tokens": 100})
    assert [c["text"] for c in body["choices"][2:4]] == [c["text"] for c in single["choices"]]


def test_echo_prepends_the_prompt() -> None:
    plain = completion_body({"prompt": "Say: ", "max_tokens": 100})
    echoed = completion_body({"prompt": "Say: ", "max_tokens": 100, "echo": True})
    assert echoed["choices"][0]["text"] == "Say: " + plain["choices"][0]["text"]
    assert echoed["usage"] == plain["usage"]
    assert_invalid(lambda: completion_body({"prompt": "a", "echo": "yes"}), "echo")


def test_token_prompts() -> None:
    body = completion_body({"prompt": [1, 2, 3], "echo": True})
    assert body["usage"]["prompt_tokens"] == 3
    assert len(body["choices"]) == 1
    body = completion_body({"prompt": [[1, 2], [3]]})
    assert body["usage"]["prompt_tokens"] == 3
    assert len(body["choices"]) == 2


def test_completion_canned_matches_the_prompt_and_stop_applies() -> None:
    canned = parse_canned({"replies": [{"pattern": "^Q:", "text": "A: yes. More text."}]})
    body = completion_body({"prompt": ["Q: ok?", "other"], "stop": ".", "max_tokens": 100}, canned)
    assert body["choices"][0]["text"] == "A: yes"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][1]["text"] + "." in SENTENCES  # neutral text, cut at its first period


@pytest.mark.parametrize("prompt", [None, 3, [], [1, "a"], [[1], []], [["a"]], {"a": 1}, [True]])
def test_bad_prompt_is_refused(prompt: Any) -> None:
    assert_invalid(lambda: completion_body({"prompt": prompt}), "prompt")


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"prompt": "Hello", "max_tokens": 100}, id="text"),
        pytest.param({"prompt": ["a", "b"], "n": 2}, id="prompts x n"),
        pytest.param({"prompt": "Hello", "echo": True, "max_tokens": 100}, id="echo"),
        pytest.param({"prompt": "Hello", "max_tokens": 0}, id="empty"),
    ],
)
def test_completion_stream_reassembles(data: dict[str, Any], include_usage: bool) -> None:
    if include_usage:
        data = {**data, "stream_options": {"include_usage": True}}
    body = completion_body(data)
    chunks = events_of(completion_stream({**data, "stream": True}, MODEL, EMPTY_CANNED))
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == body["usage"]
        chunks = chunks[:-1]
    assert all(("usage" in c) == include_usage for c in chunks)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        assert chunk["id"] == body["id"] and chunk["object"] == "text_completion"
        (choice,) = chunk["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            assert choice["text"] == ""
            finish[choice["index"]] = choice["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in body["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in body["choices"]}


# --------------------------------------------------------------------------- #
# Embeddings
# --------------------------------------------------------------------------- #


def embed(data: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(embeddings(data, model))
    return body


def decode_base64(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def norm(vector: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


def test_embedding_shape_and_default_dimensions() -> None:
    body = embed({"input": "hello world"})
    assert body["object"] == "list"
    assert body["model"] == MODEL
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 1536
    assert abs(norm(item["embedding"]) - 1) < 1e-6
    assert body["usage"] == {"prompt_tokens": count_tokens("hello world"), "total_tokens": count_tokens("hello world")}


@pytest.mark.parametrize("dimensions", [1, 2, 3, 7, 8, 9, 256, 768, 1536, 3072, 4096])
def test_dimensions_and_unit_norm(dimensions: int) -> None:
    vector = embed({"input": "x", "dimensions": dimensions})["data"][0]["embedding"]
    assert len(vector) == dimensions
    assert abs(norm(vector) - 1) < 1e-6
    assert all(struct.unpack("<f", struct.pack("<f", x))[0] == x for x in vector), "float32 values"


@given(st.text(min_size=1, max_size=50), st.integers(1, 300))
@settings(max_examples=60, deadline=None)
def test_any_text_embeds_to_a_unit_vector(text: str, dimensions: int) -> None:
    vector = embed({"input": text, "dimensions": dimensions})["data"][0]["embedding"]
    assert len(vector) == dimensions
    assert abs(norm(vector) - 1) < 1e-6


def test_shorter_vectors_are_a_prefix_before_normalisation() -> None:
    long = embed({"input": "x", "dimensions": 64})["data"][0]["embedding"]
    short = embed({"input": "x", "dimensions": 16})["data"][0]["embedding"]
    scale = norm(long[:16])
    assert all(abs(a - b * scale) < 1e-6 for a, b in zip(long[:16], short, strict=True))


@pytest.mark.parametrize("dimensions", [1, 5, 1536])
def test_base64_decodes_to_the_float_vector(dimensions: int) -> None:
    floats = embed({"input": ["a", "b"], "dimensions": dimensions})
    encoded = embed({"input": ["a", "b"], "dimensions": dimensions, "encoding_format": "base64"})
    for f, e in zip(floats["data"], encoded["data"], strict=True):
        assert isinstance(e["embedding"], str)
        assert decode_base64(e["embedding"]) == f["embedding"]
    assert floats["usage"] == encoded["usage"]


def test_same_text_same_vector_wherever_it_is() -> None:
    body = embed({"input": ["a", "b", "a"]})
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert vectors[0] == vectors[2] != vectors[1]
    assert embed({"input": "a"})["data"][0]["embedding"] == vectors[0]
    assert embed({"input": "a"}, model="other")["data"][0]["embedding"] != vectors[0]


def test_token_inputs() -> None:
    body = embed({"input": [1, 2, 3]})
    assert len(body["data"]) == 1 and body["usage"]["prompt_tokens"] == 3
    body = embed({"input": [[1, 2], [3]]})
    assert len(body["data"]) == 2 and body["usage"]["prompt_tokens"] == 3
    assert body["data"][0]["embedding"] != embed({"input": "1,2"})["data"][0]["embedding"]


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param({}, "input", id="missing"),
        pytest.param({"input": ""}, "input", id="empty string"),
        pytest.param({"input": []}, "input", id="empty list"),
        pytest.param({"input": ["a", ""]}, "input", id="empty item"),
        pytest.param({"input": [1, "a"]}, "input", id="mixed"),
        pytest.param({"input": [[1], []]}, "input", id="empty token list"),
        pytest.param({"input": 5}, "input", id="a number"),
        pytest.param({"input": [True]}, "input", id="booleans"),
        pytest.param({"input": ["a"] * 2049}, "input", id="too many"),
        pytest.param({"input": "a", "dimensions": 0}, "dimensions", id="zero dimensions"),
        pytest.param({"input": "a", "dimensions": 4097}, "dimensions", id="too many dimensions"),
        pytest.param({"input": "a", "dimensions": "8"}, "dimensions", id="dimensions a string"),
        pytest.param({"input": "a", "dimensions": True}, "dimensions", id="dimensions a boolean"),
        pytest.param({"input": "a", "dimensions": 8.0}, "dimensions", id="dimensions a float"),
        pytest.param({"input": "a", "encoding_format": "hex"}, "encoding_format", id="encoding"),
    ],
)
def test_bad_embedding_requests_are_refused(data: dict[str, Any], param: str) -> None:
    assert_invalid(lambda: embed(data), param)


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def test_models_list() -> None:
    body = json.loads(models_list(["llama3", "mistral", "llama3"]))
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llama3", "mistral"]
    for model in body["data"]:
        assert model["object"] == "model"
        assert model["owned_by"] == "airgap-proxy"
        assert 1_700_000_000 <= model["created"] < 1_800_000_000
    again = json.loads(models_list(["mistral"]))
    assert again["data"][0] == body["data"][1]
    assert json.loads(models_list([])) == {"object": "list", "data": []}


# --------------------------------------------------------------------------- #
# The OpenAI SDK reads every body
# --------------------------------------------------------------------------- #


def test_bodies_parse_as_openai_sdk_types() -> None:
    from openai.types import Completion, CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    for extra in ({}, {"tools": [TOOL], "tool_choice": "required"}, {"response_format": {"type": "json_object"}}):
        ChatCompletion.model_validate_json(chat_completion(chat_request(**extra), MODEL, EMPTY_CANNED))
        for chunk in events_of(
            chat_completion_stream(chat_request(stream_options={"include_usage": True}, **extra), MODEL, EMPTY_CANNED)
        ):
            ChatCompletionChunk.model_validate(chunk)
    Completion.model_validate_json(completion({"prompt": "a"}, MODEL, EMPTY_CANNED))
    CreateEmbeddingResponse.model_validate_json(embeddings({"input": "a"}, MODEL))


# --------------------------------------------------------------------------- #
# The fallback is a pure module
# --------------------------------------------------------------------------- #

PACKAGE = Path(__file__).resolve().parent.parent / "airgap_proxy" / "fallback"
IMPURE = {
    "aiohttp", "asyncio", "socket", "ssl", "http", "urllib", "requests", "httpx", "time", "datetime", "random",
    "secrets", "uuid", "os", "subprocess", "logging", "structlog", "sqlite3", "pathlib", "threading", "jsonschema",
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_fallback_modules_are_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots = {node.module.split(".")[0]}
            if node.module.startswith("airgap_proxy."):
                assert node.module in {"airgap_proxy.errors"} or node.module.startswith("airgap_proxy.fallback"), (
                    node.module
                )
        else:
            roots = set()
        assert not roots & IMPURE, roots & IMPURE
        if isinstance(node, ast.Name):
            assert node.id not in {"open", "print", "input", "hash"}, f"{path.name} uses {node.id}"
