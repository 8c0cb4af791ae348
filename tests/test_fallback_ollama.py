"""Tests for :mod:`airgap_proxy.fallback.ollama`: Ollama-native bodies and NDJSON streams.

Every body is parsed with the official ``ollama`` SDK's own response types, the
strongest check that a real client accepts it; JSON output is checked with
``jsonschema``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from typing import Any

import jsonschema
import ollama
import pytest
from hypothesis import given
from hypothesis import strategies as st

from airgap_proxy.errors import InvalidRequest, ModelNotFound
from airgap_proxy.fallback import EMPTY_CANNED, Canned, embeddings, models_list, parse_canned
from airgap_proxy.fallback import ollama as synth
from airgap_proxy.fallback.limits import Limits
from airgap_proxy.fallback.seed import Seed
from airgap_proxy.fallback.text import SENTENCES, count_tokens

MODEL = "llama3.2:latest"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
VALIDATOR = jsonschema.Draft202012Validator
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)

SCHEMAS: list[Any] = [
    pytest.param(
        {
            "type": "object",
            "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
            "required": ["age", "available"],
        },
        id="ollama docs example",
    ),
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
                "id": {"type": "string", "format": "uuid"},
            },
            "required": ["severity", "score", "tags", "when", "id"],
            "additionalProperties": False,
        },
        id="incident record",
    ),
    pytest.param(
        {
            "type": "object",
            "properties": {
                "friends": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/friend"},
                    "minItems": 3,
                }
            },
            "required": ["friends"],
            "$defs": {
                "friend": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                }
            },
        },
        id="pydantic model_json_schema with $defs",
    ),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def chat_request(content: str = "Why is the sky blue?", **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], **extra}


def chat(data: dict[str, Any], model: str = MODEL, canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    raw = synth.chat(data, model, canned)
    ollama.ChatResponse.model_validate_json(raw)
    body: dict[str, Any] = json.loads(raw)
    return body


def generate(data: dict[str, Any], model: str = MODEL, canned: Canned = EMPTY_CANNED) -> dict[str, Any]:
    raw = synth.generate(data, model, canned)
    ollama.GenerateResponse.model_validate_json(raw)
    body: dict[str, Any] = json.loads(raw)
    return body


def lines_of(raw: list[bytes], kind: type[ollama.ChatResponse] | type[ollama.GenerateResponse]) -> list[dict[str, Any]]:
    """Parse NDJSON lines, checking the framing, the SDK type and ``done`` on the way."""
    parsed = []
    for line in raw:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        kind.model_validate_json(line)
        parsed.append(json.loads(line))
    assert [p["done"] for p in parsed] == [False] * (len(parsed) - 1) + [True]
    return parsed


# ------------------------------------------------------------------ chat


def test_chat_is_an_ollama_chat_response_with_counts_and_durations() -> None:
    body = chat(chat_request())
    assert list(body) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert body["model"] == MODEL
    assert RFC3339.fullmatch(body["created_at"])
    assert body["message"]["role"] == "assistant"
    assert body["done"] is True and body["done_reason"] == "stop"
    sentences = [s for s in SENTENCES if s in body["message"]["content"]]
    assert len(sentences) == 3
    assert body["prompt_eval_count"] == count_tokens("Why is the sky blue?")
    assert body["eval_count"] == count_tokens(body["message"]["content"])
    for key in METRICS:
        assert isinstance(body[key], int) and body[key] >= 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert body[key] > 0  # clients divide eval_count by eval_duration
    parts = ("load_duration", "prompt_eval_duration", "eval_duration")
    assert body["total_duration"] == sum(body[k] for k in parts)


def test_chat_is_byte_identical_for_the_same_request() -> None:
    data = chat_request(options={"temperature": 0.2})
    assert synth.chat(data, MODEL, EMPTY_CANNED) == synth.chat(json.loads(json.dumps(data)), MODEL, EMPTY_CANNED)


def test_a_different_request_gets_a_different_timestamp_and_reply() -> None:
    a, b = chat(chat_request("one")), chat(chat_request("two"))
    assert a["created_at"] != b["created_at"]
    assert a["message"]["content"] != b["message"]["content"] or a == b  # three of eight sentences may repeat
    assert chat(chat_request(), model="other")["created_at"] != chat(chat_request())["created_at"]


def test_sampling_options_change_the_timestamp_not_the_reply() -> None:
    plain, warm = chat(chat_request()), chat(chat_request(options={"temperature": 1.5, "seed": 7}))
    assert plain["created_at"] != warm["created_at"]
    assert plain["message"] == warm["message"]


def test_stream_false_or_true_do_not_change_the_answer() -> None:
    assert chat(chat_request()) == chat(chat_request(stream=False)) == chat(chat_request(stream=True))


def test_chat_uses_the_canned_reply_for_the_model_and_last_user_message() -> None:
    canned = parse_canned(
        {"replies": [{"model": "llama3*", "pattern": "(?i)weather", "text": "It is sunny."}], "default": "Default."}
    )
    data: dict[str, Any] = {
        "model": "x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": "Where?"},
            {"role": "user", "content": "Tokyo weather please"},
        ],
    }
    assert chat(data, canned=canned)["message"]["content"] == "It is sunny."
    assert chat(data, model="mistral", canned=canned)["message"]["content"] == "Default."
    data["messages"][-1]["content"] = "Tokyo"
    assert chat(data, canned=canned)["message"]["content"] == "Default."


def test_num_predict_cuts_the_reply_to_a_prefix_with_done_reason_length() -> None:
    full = chat(chat_request())["message"]["content"]
    for limit in (0, 1, 3, 7):
        body = chat(chat_request(options={"num_predict": limit}))
        content = body["message"]["content"]
        assert body["done_reason"] == "length"
        assert full.startswith(content)
        assert body["eval_count"] == count_tokens(content) <= limit


@pytest.mark.parametrize("limit", [-1, -2, 10_000])
def test_num_predict_negative_or_large_does_not_cut(limit: int) -> None:
    body = chat(chat_request(options={"num_predict": limit}))
    assert body["message"] == chat(chat_request())["message"]
    assert body["done_reason"] == "stop"


def test_stop_sequences_are_honoured() -> None:
    canned = Canned(default="alpha beta. gamma delta")
    assert chat(chat_request(options={"stop": ["."]}), canned=canned)["message"]["content"] == "alpha beta"
    assert chat(chat_request(options={"stop": ["gam", "bet"]}), canned=canned)["message"]["content"] == "alpha "
    assert chat(chat_request(options={"stop": "delta"}), canned=canned)["message"]["content"] == "alpha beta. gamma "


def test_format_json_answers_a_json_object() -> None:
    content = chat(chat_request(format="json"))["message"]["content"]
    value = json.loads(content)
    assert isinstance(value, dict) and set(value) == {"response"}
    canned = Canned(default='{"color": "blue"}')
    assert json.loads(chat(chat_request(format="json"), canned=canned)["message"]["content"]) == {"color": "blue"}


@pytest.mark.parametrize("schema", SCHEMAS)
def test_format_schema_content_is_valid_and_never_cut(schema: dict[str, Any]) -> None:
    body = chat(chat_request(format=schema, options={"num_predict": 1, "stop": ['"']}))
    VALIDATOR(schema, format_checker=FORMATS).validate(json.loads(body["message"]["content"]))
    assert body["done_reason"] == "stop"
    lines = lines_of(synth.chat_stream(chat_request(format=schema), MODEL, EMPTY_CANNED), ollama.ChatResponse)
    joined = "".join(line["message"]["content"] for line in lines)
    VALIDATOR(schema, format_checker=FORMATS).validate(json.loads(joined))


def test_an_unusable_schema_is_a_format_error() -> None:
    with pytest.raises(InvalidRequest) as caught:
        synth.chat(chat_request(format={"type": "integer", "minimum": 5, "maximum": 1}), MODEL, EMPTY_CANNED)
    assert caught.value.param == "format"


def test_tools_are_answered_with_text_never_an_invented_call() -> None:
    body = chat(chat_request("what is the weather in tokyo?", tools=[WEATHER_TOOL]))
    assert "tool_calls" not in body["message"]
    assert body["message"]["content"] == chat(chat_request("what is the weather in tokyo?"))["message"]["content"]


def test_a_conversation_with_tool_calls_and_results_is_accepted() -> None:
    data = {
        "model": "llama3.2",
        "messages": [
            {"role": "user", "content": "what is the weather in Toronto?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_temperature", "arguments": {"city": "Toronto"}}}],
            },
            {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_temperature"},
            {"role": "user", "content": "thanks", "images": ["aGVsbG8="]},
        ],
        "tools": [WEATHER_TOOL],
        "think": False,
    }
    assert chat(data)["done_reason"] == "stop"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(chat_request(), id="text"),
        pytest.param(chat_request(options={"num_predict": 5}), id="cut"),
        pytest.param(chat_request(format="json"), id="json"),
        pytest.param(chat_request(format=SCHEMAS[1].values[0]), id="schema"),
        pytest.param({"model": "m", "messages": []}, id="load"),
        pytest.param(chat_request(options={"num_predict": 0}), id="empty"),
    ],
)
def test_chat_stream_joins_to_exactly_the_chat_body(data: dict[str, Any]) -> None:
    whole = chat(data)
    lines = lines_of(synth.chat_stream(data, MODEL, EMPTY_CANNED), ollama.ChatResponse)
    final = lines[-1]
    assert "".join(line["message"]["content"] for line in lines) == whole["message"]["content"]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final == {**whole, "message": final["message"]}
    for line in lines[:-1]:
        assert list(line) == ["model", "created_at", "message", "done"]
        assert line["message"]["content"] and line["created_at"] == whole["created_at"]
    assert synth.chat_stream(data, MODEL, EMPTY_CANNED) == synth.chat_stream(data, MODEL, EMPTY_CANNED)


def test_text_streams_in_word_pieces() -> None:
    lines = lines_of(synth.chat_stream(chat_request(), MODEL, EMPTY_CANNED), ollama.ChatResponse)
    assert len(lines) > 3
    assert all(len(line["message"]["content"].split()) <= 3 for line in lines)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        pytest.param({}, "load", id="no messages"),
        pytest.param({"messages": []}, "load", id="empty messages"),
        pytest.param({"messages": [], "keep_alive": "5m"}, "load", id="keep alive"),
        pytest.param({"messages": [], "keep_alive": 0}, "unload", id="keep_alive 0"),
        pytest.param({"messages": [], "keep_alive": "0s"}, "unload", id="keep_alive 0s"),
        pytest.param({"messages": [], "keep_alive": "0"}, "unload", id="keep_alive '0'"),
    ],
)
def test_chat_without_messages_loads_or_unloads_the_model(extra: dict[str, Any], reason: str) -> None:
    data = {"model": "llama3.2", **extra}
    body = chat(data)
    assert body == {
        "model": MODEL,
        "created_at": body["created_at"],
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
    }
    assert synth.chat_stream(data, MODEL, EMPTY_CANNED) == [synth.chat(data, MODEL, EMPTY_CANNED) + b"\n"]


# ------------------------------------------------------------------ generate


def test_generate_is_an_ollama_generate_response() -> None:
    body = generate({"model": "llama3.2", "prompt": "Why is the sky blue?"})
    assert list(body) == ["model", "created_at", "response", "done", "done_reason", *METRICS]
    assert RFC3339.fullmatch(body["created_at"])
    assert len([s for s in SENTENCES if s in body["response"]]) == 3
    assert body["prompt_eval_count"] == count_tokens("Why is the sky blue?")
    assert body["eval_count"] == count_tokens(body["response"])


def test_generate_depends_on_system_and_prompt_not_on_options() -> None:
    base = {"model": "llama3.2", "prompt": "Why is the sky blue?"}
    assert generate(base) == generate(dict(base))
    with_system = generate({**base, "system": "Answer like a pirate."})
    assert with_system["created_at"] != generate(base)["created_at"]
    assert with_system["prompt_eval_count"] == count_tokens("Answer like a pirate.\nWhy is the sky blue?")
    assert generate({**base, "options": {"top_k": 3}})["response"] == generate(base)["response"]


def test_generate_honours_num_predict_stop_and_canned() -> None:
    canned = parse_canned({"replies": [{"pattern": "sky", "text": "Rayleigh scattering. Mostly."}]})
    base = {"model": "m", "prompt": "Why is the sky blue?"}
    assert generate(base, canned=canned)["response"] == "Rayleigh scattering. Mostly."
    cut = generate({**base, "options": {"num_predict": 2}}, canned=canned)
    assert (cut["response"], cut["done_reason"]) == ("Rayleigh", "length")
    stopped = generate({**base, "options": {"stop": ["."]}}, canned=canned)
    assert (stopped["response"], stopped["done_reason"]) == ("Rayleigh scattering", "stop")


@pytest.mark.parametrize("schema", SCHEMAS)
def test_generate_format_schema(schema: dict[str, Any]) -> None:
    data = {"model": "m", "prompt": "Ollama is 22 years old. Respond using JSON", "format": schema}
    VALIDATOR(schema, format_checker=FORMATS).validate(json.loads(generate(data)["response"]))
    assert isinstance(json.loads(generate({**data, "format": "json"})["response"]), dict)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"model": "m", "prompt": "hello"}, id="text"),
        pytest.param({"model": "m", "prompt": "hello", "options": {"num_predict": 4}}, id="cut"),
        pytest.param({"model": "m", "prompt": "hello", "format": SCHEMAS[0].values[0]}, id="schema"),
        pytest.param({"model": "m"}, id="load"),
    ],
)
def test_generate_stream_joins_to_exactly_the_generate_body(data: dict[str, Any]) -> None:
    whole = generate(data)
    lines = lines_of(synth.generate_stream(data, MODEL, EMPTY_CANNED), ollama.GenerateResponse)
    assert "".join(line["response"] for line in lines) == whole["response"]
    assert lines[-1] == {**whole, "response": ""}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        pytest.param({}, "load", id="no prompt"),
        pytest.param({"prompt": ""}, "load", id="empty prompt"),
        pytest.param({"prompt": "", "system": "s"}, "load", id="system only"),
        pytest.param({"keep_alive": 0}, "unload", id="keep_alive 0"),
        pytest.param({"keep_alive": "0m"}, "unload", id="keep_alive 0m"),
        pytest.param({"keep_alive": -1}, "load", id="keep forever"),
    ],
)
def test_generate_without_prompt_loads_or_unloads_the_model(extra: dict[str, Any], reason: str) -> None:
    body = generate({"model": "llama3.2", **extra})
    assert body == {
        "model": MODEL,
        "created_at": body["created_at"],
        "response": "",
        "done": True,
        "done_reason": reason,
    }


# ------------------------------------------------------------------ embeddings


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embed_gives_one_unit_vector_per_input() -> None:
    raw = synth.embed({"model": "m", "input": ["Why is the sky blue?", "Why is the grass green?", ""]}, MODEL)
    ollama.EmbedResponse.model_validate_json(raw)
    body = json.loads(raw)
    assert list(body) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    vectors = body["embeddings"]
    assert len(vectors) == 3 and {len(v) for v in vectors} == {1536}
    assert all(abs(norm(v) - 1) < 1e-6 for v in vectors)
    assert vectors[0] != vectors[1]
    assert body["prompt_eval_count"] == count_tokens("Why is the sky blue?") + count_tokens("Why is the grass green?")
    assert raw == synth.embed({"model": "m", "input": ["Why is the sky blue?", "Why is the grass green?", ""]}, MODEL)


def test_embed_matches_the_openai_fallback_vector_for_the_same_text() -> None:
    for dims in (None, 8, 1024):
        extra = {} if dims is None else {"dimensions": dims}
        ours = json.loads(synth.embed({"input": "the same text", **extra}, MODEL))["embeddings"][0]
        openai_body = json.loads(embeddings({"input": "the same text", **extra}, MODEL))
        assert ours == openai_body["data"][0]["embedding"]
        assert len(ours) == (dims or 1536)


def test_embed_of_a_text_does_not_depend_on_its_batch() -> None:
    alone = json.loads(synth.embed({"input": "b"}, MODEL))["embeddings"][0]
    assert json.loads(synth.embed({"input": ["a", "b"]}, MODEL))["embeddings"][1] == alone
    assert json.loads(synth.embed({"input": "b"}, "other"))["embeddings"][0] != alone


@pytest.mark.parametrize("data", [{}, {"input": ""}, {"input": []}], ids=["absent", "empty string", "empty list"])
def test_embed_without_input_loads_and_returns_no_vectors(data: dict[str, Any]) -> None:
    raw = synth.embed(data, MODEL)
    ollama.EmbedResponse.model_validate_json(raw)
    assert json.loads(raw) == {"model": MODEL, "embeddings": []}


def test_embed_respects_the_embedding_values_cap() -> None:
    caps = Limits(max_embedding_values=100)
    assert len(json.loads(synth.embed({"input": ["a"] * 10, "dimensions": 10}, MODEL, caps))["embeddings"]) == 10
    with pytest.raises(InvalidRequest) as caught:
        synth.embed({"input": ["a"] * 11, "dimensions": 10}, MODEL, caps)
    assert caught.value.param == "input"
    with pytest.raises(InvalidRequest):
        synth.embeddings({"prompt": "a"}, MODEL, caps)


def test_legacy_embeddings_is_the_embed_vector_of_the_prompt() -> None:
    raw = synth.embeddings({"model": "m", "prompt": "Here is an article about llamas..."}, MODEL)
    ollama.EmbeddingsResponse.model_validate_json(raw)
    body = json.loads(raw)
    assert list(body) == ["embedding"]
    expected = json.loads(synth.embed({"input": "Here is an article about llamas..."}, MODEL))["embeddings"][0]
    assert body["embedding"] == expected
    assert json.loads(synth.embeddings({"model": "m"}, MODEL)) == {"embedding": []}


# ------------------------------------------------------------------ models


def test_tags_lists_the_served_models_once_each_in_order() -> None:
    raw = synth.tags(["qwen2.5-coder:7b", "llama3.2:latest", "qwen2.5-coder:7b"])
    listed = ollama.ListResponse.model_validate_json(raw)
    body = json.loads(raw)
    assert [m["name"] for m in body["models"]] == ["qwen2.5-coder:7b", "llama3.2:latest"]
    assert [m.model for m in listed.models] == ["qwen2.5-coder:7b", "llama3.2:latest"]
    first = body["models"][0]
    assert list(first) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert first["digest"] == hashlib.sha256(b"qwen2.5-coder:7b").hexdigest()
    assert first["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "airgap",
        "families": ["airgap"],
        "parameter_size": "0B",
        "quantization_level": "none",
    }
    assert synth.tags([]) == b'{"models":[]}'


def test_tags_dates_a_model_as_the_openai_model_list_does() -> None:
    (model,) = ollama.ListResponse.model_validate_json(synth.tags(["m"])).models
    assert model.modified_at is not None
    created = json.loads(models_list(["m"]))["data"][0]["created"]
    assert model.modified_at == datetime.datetime.fromtimestamp(created, datetime.UTC)


def test_ps_lists_every_model_as_loaded() -> None:
    raw = synth.ps(["a", "b", "a"])
    running = ollama.ProcessResponse.model_validate_json(raw)
    assert [m.name for m in running.models] == ["a", "b"]
    entry = json.loads(raw)["models"][0]
    assert {"expires_at", "size_vram", "digest", "details"} <= set(entry)
    assert running.models[0].expires_at is not None
    assert running.models[0].expires_at.year > 2200


@pytest.mark.parametrize(
    ("data", "served"),
    [
        pytest.param({"model": "llama3.2"}, "llama3.2:latest", id="implied latest"),
        pytest.param({"model": "llama3.2:latest"}, "llama3.2:latest", id="exact"),
        pytest.param({"name": "qwen"}, "qwen", id="legacy name"),
        pytest.param({"model": "qwen:latest"}, "qwen", id="latest of an untagged id"),
    ],
)
def test_show_describes_a_served_model(data: dict[str, Any], served: str) -> None:
    raw = synth.show(data, ["qwen", "llama3.2:latest"])
    shown = ollama.ShowResponse.model_validate_json(raw)
    assert shown.capabilities is not None and {"completion", "embedding"} <= set(shown.capabilities)
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "airgap"
    assert shown.modelfile is not None and f"FROM {served}\n" in shown.modelfile
    assert shown.details is not None and shown.details.family == "airgap"
    body = json.loads(raw)
    assert {"modelfile", "parameters", "template", "details", "model_info", "capabilities"} <= set(body)
    assert synth.show(data, ["qwen", "llama3.2:latest"]) == raw


def test_show_of_an_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as caught:
        synth.show({"model": "mistral"}, ["llama3.2:latest"])
    assert caught.value.message == "model 'mistral' not found"
    assert caught.value.status == 404
    with pytest.raises(InvalidRequest) as missing:
        synth.show({}, ["llama3.2:latest"])
    assert missing.value.param == "model"


def test_version_is_fixed() -> None:
    assert json.loads(synth.version()) == {"version": synth.VERSION}
    assert synth.version() == synth.version()


# ------------------------------------------------------------------ streams()


@pytest.mark.parametrize(
    ("endpoint", "data", "expected"),
    [
        pytest.param("chat", {}, True, id="chat streams by default"),
        pytest.param("generate", {"stream": None}, True, id="null is the default"),
        pytest.param("/api/chat", {"stream": True}, True, id="path form"),
        pytest.param("api/generate", {"stream": False}, False, id="stream false"),
        pytest.param("embed", {}, False, id="embed never streams"),
        pytest.param("show", {"stream": True}, False, id="show never streams"),
        pytest.param("tags", {}, False, id="tags"),
    ],
)
def test_streams(endpoint: str, data: dict[str, Any], expected: bool) -> None:
    assert synth.streams(endpoint, data) is expected


def test_streams_refuses_a_non_boolean() -> None:
    with pytest.raises(InvalidRequest) as caught:
        synth.streams("chat", {"stream": "yes"})
    assert caught.value.param == "stream"


# ------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param({"messages": "hi"}, "messages", id="messages not a list"),
        pytest.param({"messages": ["hi"]}, "messages[0]", id="message not an object"),
        pytest.param({"messages": [{"content": "hi"}]}, "messages[0].role", id="no role"),
        pytest.param({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", id="unknown role"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
            "messages[0].content",
            id="openai content parts",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "x", "images": "a"}]}, "messages[0].images", id="images"
        ),
        pytest.param(
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]},
            "messages[0].tool_calls[0]",
            id="arguments as a string",
        ),
        pytest.param({**chat_request(), "tools": {"a": 1}}, "tools", id="tools not a list"),
        pytest.param({**chat_request(), "tools": [{"type": "function"}]}, "tools[0]", id="tool without function"),
        pytest.param(
            {**chat_request(), "tools": [{"type": "function", "function": {"name": 3}}]},
            "tools[0].function.name",
            id="tool name",
        ),
        pytest.param({**chat_request(), "format": "xml"}, "format", id="format xml"),
        pytest.param({**chat_request(), "format": True}, "format", id="format true"),
        pytest.param({**chat_request(), "options": []}, "options", id="options not an object"),
        pytest.param({**chat_request(), "options": {"num_predict": "5"}}, "options.num_predict", id="num_predict"),
        pytest.param({**chat_request(), "options": {"stop": [1]}}, "options.stop", id="stop"),
        pytest.param({**chat_request(), "keep_alive": []}, "keep_alive", id="keep_alive"),
        pytest.param({**chat_request(), "stream": "no"}, "stream", id="stream"),
        pytest.param({**chat_request(), "think": 3}, "think", id="think"),
    ],
)
def test_bad_chat_requests_name_the_param(data: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        synth.chat(data, MODEL, EMPTY_CANNED)
    assert caught.value.param == param
    with pytest.raises(InvalidRequest):
        synth.chat_stream(data, MODEL, EMPTY_CANNED)


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param({"prompt": ["a"]}, "prompt", id="prompt not a string"),
        pytest.param({"prompt": "a", "system": 1}, "system", id="system"),
        pytest.param({"prompt": "a", "images": [1]}, "images", id="images"),
        pytest.param({"prompt": "a", "context": ["x"]}, "context", id="context"),
        pytest.param({"prompt": "a", "raw": "yes"}, "raw", id="raw"),
        pytest.param({"prompt": "a", "format": 3}, "format", id="format"),
        pytest.param({"prompt": "a", "options": {"num_predict": 1.5}}, "options.num_predict", id="num_predict"),
    ],
)
def test_bad_generate_requests_name_the_param(data: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        synth.generate(data, MODEL, EMPTY_CANNED)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("data", "param"),
    [
        pytest.param({"input": 3}, "input", id="input a number"),
        pytest.param({"input": ["a", 3]}, "input", id="input mixed"),
        pytest.param({"input": [[1, 2]]}, "input", id="token ids"),
        pytest.param({"input": "a", "dimensions": -1}, "dimensions", id="negative dimensions"),
        pytest.param({"input": "a", "dimensions": 5000}, "dimensions", id="too many dimensions"),
        pytest.param({"input": "a", "dimensions": "8"}, "dimensions", id="dimensions a string"),
        pytest.param({"input": "a", "options": 1}, "options", id="options"),
    ],
)
def test_bad_embed_requests_name_the_param(data: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        synth.embed(data, MODEL)
    assert caught.value.param == param


def test_bad_legacy_embeddings_prompt() -> None:
    with pytest.raises(InvalidRequest) as caught:
        synth.embeddings({"prompt": ["a"]}, MODEL)
    assert caught.value.param == "prompt"


# ------------------------------------------------------------------ timestamps


@given(st.integers(min_value=-719_162, max_value=2_932_896))
def test_civil_dates_match_the_calendar(days: int) -> None:
    date = datetime.date(1970, 1, 1) + datetime.timedelta(days=days)
    assert synth._civil(days) == (date.year, date.month, date.day)


@given(st.binary(min_size=1, max_size=16))
def test_created_at_is_the_seed_timestamp_in_rfc3339(data: bytes) -> None:
    seed = Seed.of(data)
    stamp = synth.created_at_of(seed)
    assert RFC3339.fullmatch(stamp)
    whole = datetime.datetime.fromtimestamp(seed.created(), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert stamp.startswith(whole)
    assert not re.search(r"\.\d*0Z$", stamp)  # trailing zeros trimmed, as Go's RFC3339Nano does
    assert synth.created_at_of(seed, nanos=False) == whole + "Z"
