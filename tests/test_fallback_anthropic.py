"""Tests for :mod:`airgap_proxy.fallback.anthropic`: deterministic Anthropic Messages bodies and streams.

Bodies and events are checked three ways: as plain JSON here, parsed by the
``anthropic`` SDK's own types (``Message``, ``RawMessageStreamEvent``), and
streams decoded with the SDK's SSE decoder and folded by its accumulator, which
must give exactly the non-streaming message.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import EMPTY_CANNED, Canned, parse_canned
from airgap_proxy.fallback.anthropic import count_tokens, message, message_stream
from airgap_proxy.fallback.text import SENTENCES
from airgap_proxy.fallback.text import count_tokens as estimate

MODEL = "claude-sonnet-4-5"
VALIDATOR = jsonschema.Draft202012Validator
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
SEARCH = {
    "type": "custom",
    "name": "search",
    "input_schema": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "pattern": "^[a-z]{3,8}$"},
            "filters": {
                "type": "array",
                "minItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "since": {"type": "string", "format": "date"}},
                    "required": ["field", "since"],
                },
            },
            "email": {"type": "string", "format": "email"},
        },
        "required": ["query", "filters", "email"],
    },
}
EMPTY_TOOL = {"name": "now", "input_schema": {"type": "object"}}
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
BASH = {"type": "bash_20250124", "name": "bash"}


def request(content: Any = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 1024, "messages": [{"role": "user", "content": content}], **extra}


def answer(data: dict[str, Any], model: str = MODEL, canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    raw = message(data, model, canned)
    body: dict[str, Any] = json.loads(raw)
    assert json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() == raw, "not compact JSON"
    return body


def events_of(raw: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Parse the SSE events, checking the framing: ``event:`` names the data's ``type``; compact JSON."""
    parsed = []
    for event in raw:
        head, sep, rest = event.partition(b"\ndata: ")
        assert sep and head.startswith(b"event: ") and rest.endswith(b"\n\n"), event
        name, payload = head[len(b"event: ") :].decode(), rest[:-2].decode()
        assert "\n" not in payload
        value = json.loads(payload)
        assert json.dumps(value, separators=(",", ":"), ensure_ascii=False) == payload, "not compact JSON"
        assert value["type"] == name
        parsed.append((name, value))
    return parsed


def reassemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Fold the events into one message, checking their order on the way."""
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"]["output_tokens"] in (0, 1)
    body = {**start, "usage": dict(start["usage"])}
    block = dict(events[2][1]["content_block"])
    assert events[2][1]["index"] == 0
    buffer = ""
    for _, event in events[3:-3]:
        assert event["index"] == 0
        delta = event["delta"]
        if block["type"] == "text":
            assert delta["type"] == "text_delta" and delta["text"]
            block["text"] += delta["text"]
        else:
            assert delta["type"] == "input_json_delta"
            buffer += delta["partial_json"]
    if block["type"] == "tool_use":
        assert block["input"] == {}
        block["input"] = json.loads(buffer)
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    delta = events[-2][1]
    assert set(delta) == {"type", "delta", "usage"} and set(delta["usage"]) == {"output_tokens"}
    body.update(delta["delta"])
    body["usage"]["output_tokens"] = delta["usage"]["output_tokens"]
    body["content"] = [block]
    assert events[-1][1] == {"type": "message_stop"}
    return body


def sdk_message(body: dict[str, Any]) -> Any:
    anthropic = pytest.importorskip("anthropic")
    return anthropic.types.Message.model_validate(body)


def sdk_stream(raw: list[bytes]) -> Any:
    """Decode and fold ``raw`` as the SDK's ``messages.stream()`` does; returns the final ``Message``."""
    pytest.importorskip("anthropic")
    import pydantic
    from anthropic._streaming import SSEDecoder
    from anthropic.lib.streaming._messages import accumulate_event
    from anthropic.types import RawMessageStreamEvent

    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    buffers: dict[int, bytes] = {}
    kinds = []
    for sse in SSEDecoder().iter_bytes(iter(raw)):
        if sse.event == "ping":
            continue
        event = adapter.validate_python(sse.json())
        assert event.type == sse.event
        kinds.append(event.type)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    return snapshot


def assert_stream_matches(data: dict[str, Any], canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    """Streaming ``data`` gives exactly the non-streaming message, by our fold and the SDK's."""
    body = answer(data, canned=canned)
    raw = message_stream({**data, "stream": True}, MODEL, canned)
    assert reassemble(events_of(raw)) == body
    folded = sdk_stream(raw)
    assert folded.model_dump(exclude_none=True) == sdk_message(body).model_dump(exclude_none=True)
    return body


def assert_invalid(call: Any, param: str, match: str | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call()
    assert info.value.status == 400
    assert info.value.param == param, info.value.message
    if match is not None:
        assert re.search(match, info.value.message), info.value.message
    return info.value


def tool_use_of(body: dict[str, Any]) -> dict[str, Any]:
    assert body["stop_reason"] == "tool_use" and body["stop_sequence"] is None
    (block,) = body["content"]
    assert block["type"] == "tool_use"
    assert re.fullmatch(r"toolu_[0-9a-f]{24}", block["id"])
    assert body["usage"]["output_tokens"] == estimate(json.dumps(block["input"], separators=(",", ":")))
    return dict(block)


def text_of(body: dict[str, Any]) -> str:
    (block,) = body["content"]
    assert set(block) == {"type", "text"} and block["type"] == "text"
    assert body["usage"]["output_tokens"] == estimate(block["text"])
    text: str = block["text"]
    return text


# --------------------------------------------------------------------------- #
# Shape and determinism
# --------------------------------------------------------------------------- #


def test_a_text_message_has_the_anthropic_shape() -> None:
    body = answer(request())
    assert list(body) == ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"]
    assert re.fullmatch(r"msg_[0-9a-f]{24}", body["id"])
    assert (body["type"], body["role"], body["model"]) == ("message", "assistant", MODEL)
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)
    assert body["usage"] == {"input_tokens": estimate("Hello there"), "output_tokens": estimate(text_of(body))}
    parsed = sdk_message(body)
    assert parsed.content[0].text == text_of(body)
    assert parsed.stop_reason == "end_turn"


def test_the_text_is_made_of_the_neutral_sentences() -> None:
    text = text_of(answer(request()))
    picked = [s for s in SENTENCES if s in text]
    assert len(picked) == 3
    assert len(text) == sum(map(len, picked)) + 2


CALLS = [
    pytest.param(lambda: message(request(), MODEL, EMPTY_CANNED), id="text"),
    pytest.param(lambda: message_stream(request(stream=True), MODEL, EMPTY_CANNED), id="stream"),
    pytest.param(
        lambda: message(request(tools=[SEARCH], tool_choice={"type": "any"}), MODEL, EMPTY_CANNED), id="tool use"
    ),
    pytest.param(
        lambda: message_stream(request(tools=[SEARCH], tool_choice={"type": "any"}), MODEL, EMPTY_CANNED),
        id="tool use stream",
    ),
    pytest.param(lambda: count_tokens(request(tools=[SEARCH])), id="count tokens"),
]


@pytest.mark.parametrize("call", CALLS)
def test_same_request_gives_identical_bytes(call: Any) -> None:
    assert call() == call()


def test_key_order_of_the_request_does_not_matter() -> None:
    data = request(system="Be brief.", tools=[WEATHER], tool_choice={"type": "any"})
    shuffled = json.loads(json.dumps(dict(reversed(list(data.items())))))
    shuffled["tools"][0] = dict(reversed(list(WEATHER.items())))
    assert message(data, MODEL, EMPTY_CANNED) == message(shuffled, MODEL, EMPTY_CANNED)


def test_golden_response_pins_the_algorithm() -> None:
    """The same bytes on every machine and release: change this only on purpose."""
    body = answer({"max_tokens": 64, "messages": [{"role": "user", "content": "ping"}]}, model="m")
    assert body["id"] == "msg_37c11f9d2a746237f1ee253e"
    assert text_of(body) == (
        "This is a deterministic reply from airgap-proxy. Replies like this one can be replaced with canned "
        "texts per model or per prompt. Configure a healthy local upstream to get answers from a real model."
    )


@given(st.text(max_size=40), st.text(max_size=40))
@settings(max_examples=60, deadline=None)
def test_different_requests_get_different_ids(a: str, b: str) -> None:
    body_a, body_b = answer(request(a)), answer(request(b))
    assert (body_a["id"] == body_b["id"]) == (a == b)


def test_the_model_is_echoed_and_part_of_the_seed() -> None:
    a, b = answer(request(), model="a"), answer(request(), model="b")
    assert (a["model"], b["model"]) == ("a", "b")
    assert a["id"] != b["id"]


def test_sampling_options_change_the_id_but_not_the_reply() -> None:
    plain = answer(request())
    sampled = answer(request(temperature=0.2, top_k=5, metadata={"user_id": "u1"}))
    assert plain["id"] != sampled["id"]
    assert plain["content"] == sampled["content"]


def test_the_system_prompt_is_part_of_the_reply_seed() -> None:
    replies = {text_of(answer(request(system=f"You are assistant number {i}."))) for i in range(8)}
    assert len(replies) > 1


def test_streaming_and_non_streaming_share_the_id() -> None:
    body = answer(request())
    start = events_of(message_stream(request(stream=True), MODEL, EMPTY_CANNED))[0][1]
    assert start["message"]["id"] == body["id"]


# --------------------------------------------------------------------------- #
# max_tokens and stop_sequences
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("limit", [1, 2, 5, 9, 17, 30])
def test_max_tokens_truncates_to_a_prefix(limit: int) -> None:
    full = text_of(answer(request()))
    body = answer(request(max_tokens=limit))
    text = text_of(body)
    assert full.startswith(text) and text != full
    assert body["usage"]["output_tokens"] <= limit
    assert (body["stop_reason"], body["stop_sequence"]) == ("max_tokens", None)
    assert_stream_matches(request(max_tokens=limit))


def test_a_budget_that_fits_ends_the_turn() -> None:
    full = answer(request())
    body = answer(request(max_tokens=full["usage"]["output_tokens"]))
    assert body["content"] == full["content"]
    assert body["stop_reason"] == "end_turn"


@pytest.mark.parametrize("value", [None, 0, -1, "10", 1.5, True, [1]])
def test_max_tokens_is_required_and_positive(value: Any) -> None:
    data = request()
    if value is None:
        del data["max_tokens"]
    else:
        data["max_tokens"] = value
    assert_invalid(lambda: message(data, MODEL, EMPTY_CANNED), "max_tokens")
    assert_invalid(lambda: message_stream(data, MODEL, EMPTY_CANNED), "max_tokens")


def test_a_stop_sequence_cuts_the_text_and_is_named() -> None:
    full = text_of(answer(request()))
    word = full.split()[4]
    body = answer(request(stop_sequences=["never-there", word]))
    text = text_of(body)
    assert full.startswith(text) and full[len(text) :].startswith(word)
    assert word not in text
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", word)
    assert_stream_matches(request(stop_sequences=["never-there", word]))


def test_the_earliest_stop_sequence_wins_and_ties_go_to_the_first_listed() -> None:
    full = text_of(answer(request()))
    first, second = full.split()[1], full.split()[5]
    assert answer(request(stop_sequences=[second, first]))["stop_sequence"] == first
    longer = first + " " + full.split()[2]
    assert answer(request(stop_sequences=[longer, first]))["stop_sequence"] == longer
    assert answer(request(stop_sequences=[first, longer]))["stop_sequence"] == first


def test_max_tokens_before_the_stop_sequence_reports_max_tokens() -> None:
    full = text_of(answer(request()))
    last = full.split()[-1]
    body = answer(request(stop_sequences=[last], max_tokens=3))
    assert (body["stop_reason"], body["stop_sequence"]) == ("max_tokens", None)
    assert body["usage"]["output_tokens"] <= 3


def test_stop_sequences_that_never_occur_end_the_turn() -> None:
    body = answer(request(stop_sequences=["\n\nHuman:", "", "zzz"]))
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)


def test_a_stop_sequence_at_the_start_gives_an_empty_text() -> None:
    full = text_of(answer(request()))
    data = request(stop_sequences=[full[:5]])
    body = answer(data)
    assert text_of(body) == ""
    assert body["stop_reason"] == "stop_sequence"
    assert_stream_matches(data)


@pytest.mark.parametrize("value", ["stop", [1], ["a", None], {"a": 1}, ["x"] * 1025])
def test_bad_stop_sequences_are_refused(value: Any) -> None:
    assert_invalid(lambda: message(request(stop_sequences=value), MODEL, EMPTY_CANNED), "stop_sequences")


# --------------------------------------------------------------------------- #
# Canned replies
# --------------------------------------------------------------------------- #

CANNED = parse_canned(
    {
        "replies": [
            {"model": "claude-*", "pattern": "(?i)weather", "text": "It is sunny in the fallback."},
            {"model": "other", "text": "Other model."},
        ],
    }
)


def test_canned_reply_for_the_model_and_last_user_text() -> None:
    body = answer(request("What is the weather?"), canned=CANNED)
    assert text_of(body) == "It is sunny in the fallback."
    assert text_of(answer(request("What is the weather?"), model="other", canned=CANNED)) == "Other model."
    assert text_of(answer(request("Hi"), canned=CANNED)) != "It is sunny in the fallback."


def test_canned_pattern_reads_only_the_text_blocks_of_the_last_user_message() -> None:
    blocks = [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "weather report"},
        {"type": "text", "text": "thanks"},
    ]
    assert text_of(answer(request(blocks), canned=CANNED)) != "It is sunny in the fallback."
    weather = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]
    weather.append({"type": "text", "text": "Weather here?"})
    assert text_of(answer(request(weather), canned=CANNED)) == "It is sunny in the fallback."
    earlier = {
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "Sunny."},
            {"role": "user", "content": "and tomorrow?"},
        ],
    }
    assert text_of(answer(earlier, canned=CANNED)) != "It is sunny in the fallback."


def test_canned_reply_honours_max_tokens_and_streaming() -> None:
    body = answer(request("weather", max_tokens=2), canned=CANNED)
    assert (text_of(body), body["stop_reason"]) == ("It is", "max_tokens")
    assert_stream_matches(request("weather"), canned=CANNED)


# --------------------------------------------------------------------------- #
# Tools
# --------------------------------------------------------------------------- #


def test_tool_choice_any_calls_the_first_custom_tool_with_valid_input() -> None:
    body = answer(request(tools=[WEB_SEARCH, WEATHER, SEARCH], tool_choice={"type": "any"}))
    block = tool_use_of(body)
    assert block["name"] == "get_weather"
    VALIDATOR(WEATHER["input_schema"], format_checker=FORMATS).validate(block["input"])
    assert sdk_message(body).content[0].input == block["input"]


@pytest.mark.parametrize("tool", [WEATHER, SEARCH, EMPTY_TOOL], ids=["weather", "search", "empty"])
def test_named_tool_choice_calls_that_tool(tool: dict[str, Any]) -> None:
    data = request(tools=[WEATHER, SEARCH, EMPTY_TOOL, BASH], tool_choice={"type": "tool", "name": tool["name"]})
    block = tool_use_of(answer(data))
    assert block["name"] == tool["name"]
    VALIDATOR(tool["input_schema"], format_checker=FORMATS).validate(block["input"])
    assert_stream_matches(data)


def test_tool_input_depends_on_the_conversation() -> None:
    inputs = [
        tool_use_of(answer(request(f"question {i}", tools=[SEARCH], tool_choice={"type": "any"})))["input"]
        for i in range(6)
    ]
    for value in inputs:
        VALIDATOR(SEARCH["input_schema"], format_checker=FORMATS).validate(value)
    assert len({json.dumps(v, sort_keys=True) for v in inputs}) > 1


def test_tool_input_is_not_cut_by_max_tokens() -> None:
    block = tool_use_of(answer(request(max_tokens=1, tools=[SEARCH], tool_choice={"type": "any"})))
    VALIDATOR(SEARCH["input_schema"], format_checker=FORMATS).validate(block["input"])


@pytest.mark.parametrize(
    "tool_choice",
    [None, {"type": "auto"}, {"type": "none"}, {"type": "auto", "disable_parallel_tool_use": True}],
)
def test_auto_none_or_absent_tool_choice_answers_with_text(tool_choice: dict[str, Any] | None) -> None:
    data = request(tools=[WEATHER, WEB_SEARCH])
    if tool_choice is not None:
        data["tool_choice"] = tool_choice
    body = answer(data)
    assert text_of(body) and body["stop_reason"] == "end_turn"


def test_the_tool_stream_sends_input_json_fragments() -> None:
    data = request(tools=[SEARCH], tool_choice={"type": "tool", "name": "search"})
    events = events_of(message_stream(data, MODEL, EMPTY_CANNED))
    opening = events[2][1]["content_block"]
    assert opening["type"] == "tool_use" and opening["input"] == {} and opening["name"] == "search"
    fragments = [e["delta"]["partial_json"] for n, e in events if n == "content_block_delta"]
    assert len(fragments) > 1
    assert_stream_matches(data)


@pytest.mark.parametrize(
    ("extra", "param", "match"),
    [
        pytest.param({"tool_choice": {"type": "any"}}, "tool_choice", "no 'tools'", id="any without tools"),
        pytest.param(
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
            "tool_choice",
            "no tool named 'nope'",
            id="unknown tool",
        ),
        pytest.param(
            {"tools": [WEATHER, WEB_SEARCH], "tool_choice": {"type": "tool", "name": "web_search"}},
            "tool_choice",
            "server tool",
            id="server tool named",
        ),
        pytest.param(
            {"tools": [WEB_SEARCH, BASH], "tool_choice": {"type": "any"}},
            "tool_choice",
            "server tool",
            id="any with only server tools",
        ),
        pytest.param({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice", "name", id="no name"),
        pytest.param({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice", None, id="string choice"),
        pytest.param({"tools": [WEATHER], "tool_choice": {"type": "required"}}, "tool_choice", None, id="bad type"),
        pytest.param(
            {"tools": [WEATHER], "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
            "tool_choice",
            None,
            id="bad parallel flag",
        ),
        pytest.param({"tools": {"a": 1}}, "tools", None, id="tools not a list"),
        pytest.param({"tools": [EMPTY_TOOL] * 513}, "tools", None, id="too many tools"),
        pytest.param({"tools": ["x"]}, "tools[0]", None, id="tool not an object"),
        pytest.param({"tools": [{"name": "has space", "input_schema": {}}]}, "tools[0].name", None, id="bad name"),
        pytest.param({"tools": [{"input_schema": {"type": "object"}}]}, "tools[0].name", None, id="no name"),
        pytest.param({"tools": [WEATHER, WEATHER]}, "tools[1].name", "unique", id="duplicate names"),
        pytest.param({"tools": [{"name": "a"}]}, "tools[0].input_schema", None, id="no input_schema"),
        pytest.param(
            {"tools": [{"name": "a", "input_schema": {"type": "array"}}]},
            "tools[0].input_schema",
            "'object'",
            id="schema not an object type",
        ),
        pytest.param(
            {"tools": [{"name": "a", "type": "custom", "input_schema": "x"}]},
            "tools[0].input_schema",
            None,
            id="schema not a mapping",
        ),
        pytest.param({"tools": [{"name": "a", "type": 3}]}, "tools[0].type", None, id="type not a string"),
        pytest.param(
            {
                "tools": [
                    {"name": "a", "input_schema": {"type": "object", "required": ["x"], "properties": {"x": False}}}
                ],
                "tool_choice": {"type": "any"},
            },
            "tools[0].input_schema",
            "no value satisfies",
            id="unsatisfiable schema",
        ),
    ],
)
def test_bad_tools_are_refused(extra: dict[str, Any], param: str, match: str | None) -> None:
    assert_invalid(lambda: message(request(**extra), MODEL, EMPTY_CANNED), param, match)


# --------------------------------------------------------------------------- #
# Messages and system
# --------------------------------------------------------------------------- #

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}


def test_a_system_turn_inside_messages_is_accepted() -> None:
    """Claude Code 2.1 sends its environment notes as a ``system`` message after the user's."""
    notes = {"role": "system", "content": [{"type": "text", "text": "# Environment\nPrimary working directory: /w"}]}
    plain, with_notes = request(), request()
    with_notes["messages"] = [*with_notes["messages"], notes]
    assert text_of(answer(with_notes))
    assert json.loads(count_tokens(with_notes))["input_tokens"] > json.loads(count_tokens(plain))["input_tokens"]


def test_every_kind_of_content_block_is_accepted() -> None:
    data = {
        "max_tokens": 200,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look"}, IMAGE, DOCUMENT]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me check.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 degrees"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "windy"}, IMAGE],
                        "is_error": False,
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2"},
                    {"type": "search_result", "source": "s", "title": "t", "content": []},
                    {"type": "text", "text": "And now?"},
                ],
            },
        ],
        "tools": [WEATHER, WEB_SEARCH],
    }
    body = assert_stream_matches(data)
    assert text_of(body)
    expected = estimate(
        "\n".join(
            [
                "Be brief.",
                "Look",
                "Let me check.",
                "Checking.",
                '{"city":"Oslo"}',
                "12 degrees",
                "windy",
                "And now?",
                json.dumps([WEATHER, WEB_SEARCH], separators=(",", ":")),
            ]
        )
    )
    assert body["usage"]["input_tokens"] == expected
    assert json.loads(count_tokens(data)) == {"input_tokens": expected}


def test_a_final_assistant_turn_is_accepted() -> None:
    data = {
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Pick a letter"}, {"role": "assistant", "content": "The answer is ("}],
    }
    assert text_of(assert_stream_matches(data))


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param({"max_tokens": 5}, "messages", id="missing"),
        pytest.param({"max_tokens": 5, "messages": []}, "messages", id="empty"),
        pytest.param({"max_tokens": 5, "messages": "hi"}, "messages", id="not a list"),
        pytest.param({"max_tokens": 5, "messages": ["hi"]}, "messages[0]", id="not an object"),
        pytest.param(request() | {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", id="tool role"),
        pytest.param(request() | {"messages": [{"content": "x"}]}, "messages[0].role", id="no role"),
        pytest.param(request() | {"messages": [{"role": "user"}]}, "messages[0].content", id="no content"),
        pytest.param(request(7), "messages[0].content", id="content a number"),
        pytest.param(request(["x"]), "messages[0].content[0]", id="block not an object"),
        pytest.param(request([{"text": "x"}]), "messages[0].content[0]", id="block without type"),
        pytest.param(request([{"type": "text"}]), "messages[0].content[0].text", id="text without text"),
        pytest.param(request([{"type": "image"}]), "messages[0].content[0].source", id="image without source"),
        pytest.param(
            request([{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}]),
            "messages[0].content[0].input",
            id="tool_use input a string",
        ),
        pytest.param(
            request([{"type": "tool_result", "content": "x"}]),
            "messages[0].content[0].tool_use_id",
            id="tool_result without id",
        ),
        pytest.param(
            request([{"type": "tool_result", "tool_use_id": "t", "content": 5}]),
            "messages[0].content[0].content",
            id="tool_result content a number",
        ),
        pytest.param(
            request([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": 1}]}]),
            "messages[0].content[0].content[0].text",
            id="tool_result text not a string",
        ),
        pytest.param(
            request([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_result"}]}]),
            "messages[0].content[0].content[0]",
            id="tool_result inside tool_result",
        ),
        pytest.param(request([{"type": "thinking"}]), "messages[0].content[0].thinking", id="thinking without text"),
        pytest.param(request(system=5), "system", id="system a number"),
        pytest.param(request(system=[{"type": "image"}]), "system", id="system not text blocks"),
        pytest.param(request(system=["x"]), "system", id="system list of strings"),
    ],
)
def test_bad_messages_and_system_are_refused(data: dict[str, Any], param: str) -> None:
    assert_invalid(lambda: message(data, MODEL, EMPTY_CANNED), param)
    if "max_tokens" in data:
        assert_invalid(lambda: count_tokens({k: v for k, v in data.items() if k != "max_tokens"}), param)


# --------------------------------------------------------------------------- #
# count_tokens
# --------------------------------------------------------------------------- #


def test_count_tokens_matches_usage_and_needs_no_max_tokens() -> None:
    for data in (request(), request(system="Be brief.", tools=[WEATHER]), request([{"type": "text", "text": "x"}])):
        body = answer(data)
        del data["max_tokens"]
        raw = count_tokens(data)
        assert json.loads(raw) == {"input_tokens": body["usage"]["input_tokens"]}
        assert raw == count_tokens(data)
    anthropic = pytest.importorskip("anthropic")
    counted = anthropic.types.MessageTokensCount.model_validate_json(count_tokens(request()))
    assert counted.input_tokens == estimate("Hello there")


def test_count_tokens_grows_with_system_and_tools() -> None:
    base = json.loads(count_tokens(request()))["input_tokens"]
    with_system = json.loads(count_tokens(request(system="A long system prompt " * 10)))["input_tokens"]
    with_tools = json.loads(count_tokens(request(tools=[WEATHER, SEARCH])))["input_tokens"]
    assert base < with_system and base < with_tools


# --------------------------------------------------------------------------- #
# Streaming, as a property
# --------------------------------------------------------------------------- #

words = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@given(
    prompt=words,
    system=st.one_of(st.none(), words),
    max_tokens=st.integers(min_value=1, max_value=40),
    stop=st.lists(st.sampled_from(["proxy", "e", "The", "network.", " ", "zz", "."]), max_size=3),
    forced=st.sampled_from([None, "get_weather", "search", "now"]),
)
@settings(max_examples=80, deadline=None)
def test_streams_join_to_the_message(
    prompt: str, system: str | None, max_tokens: int, stop: list[str], forced: str | None
) -> None:
    data = request(prompt, max_tokens=max_tokens, stop_sequences=stop, tools=[WEATHER, SEARCH, EMPTY_TOOL, BASH])
    if system is not None:
        data["system"] = system
    if forced is not None:
        data["tool_choice"] = {"type": "tool", "name": forced}
    body = assert_stream_matches(data)
    if forced is None:
        text = text_of(body)
        assert body["usage"]["output_tokens"] <= max_tokens
        assert not any(s in text for s in stop)
        if body["stop_reason"] == "stop_sequence":
            assert body["stop_sequence"] in stop
    else:
        tool = {t["name"]: t for t in (WEATHER, SEARCH, EMPTY_TOOL)}[forced]
        VALIDATOR(tool["input_schema"], format_checker=FORMATS).validate(tool_use_of(body)["input"])
