"""Hostile bodies and schemas through a served proxy: a 400 in the OpenAI envelope, never a 500.

Each request is sent as raw bytes, as an attacker would, once with
``X-Airgap-Mode: deterministic`` next to a configured upstream and once with
no upstream at all (the default fallback answers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy.app import create_app
from airgap_proxy.payload import MAX_JSON_DEPTH, nests_deeper
from tests.conftest import make_config
from tests.fakes import FakeUpstream
from tests.test_fallback_schema import FLOAT_EDGES, assert_valid

CHAT = "/v1/chat/completions"
USER = '"messages":[{"role":"user","content":"hi"}]'


def arrays(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def body(*fields: str, head: str = '"model":"m",' + USER) -> str:
    """A JSON object from raw ``"key":value`` fields, after the model and one user message."""
    return "{" + ",".join((head, *fields)) + "}"


def schema_body(schema: str) -> str:
    return body('"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":' + schema + "}}")


def tool_body(parameters: str) -> str:
    tool = '{"type":"function","function":{"name":"f","parameters":' + parameters + "}}"
    return body('"tools":[' + tool + "]", '"tool_choice":"required"')


def nested_ifs(levels: int) -> str:
    """``if``/``then`` nested ``levels`` times, each around two copies of the level below: many pending choices."""
    schema: Any = {"type": "string"}
    for _ in range(levels):
        schema = {"if": schema, "then": schema}
    return json.dumps(schema)


def ref_chain(length: int, link: str) -> str:
    """``$defs`` d0 -> d1 -> ... -> dN, each link ``link`` around the next ``$ref``: flat JSON, deep schema."""
    defs = {f"d{i}": json.loads(link % json.dumps({"$ref": f"#/$defs/d{i + 1}"})) for i in range(length)}
    defs[f"d{length}"] = {"type": "integer"}
    return json.dumps({"$defs": defs, "$ref": "#/$defs/d0"})


DEEP = 1_000  # below orjson's 1,024, above what the standard library's encoder survives

NESTED: list[Any] = [
    pytest.param(CHAT, body('"metadata":' + objects(DEEP)), "nests", id="deep extra field"),
    pytest.param(
        CHAT,
        body(head='"model":"m","messages":[{"role":"user","content":"hi","x":' + arrays(DEEP) + "}]"),
        "nests",
        id="deep message",
    ),
    pytest.param(CHAT, body('"m":' + arrays(1_020)), "nests", id="just under orjson's limit"),
    pytest.param(CHAT, body('"m":' + arrays(5_000)), "", id="past every parser's limit"),
    pytest.param(
        "/v1/completions", body('"p":' + arrays(DEEP), head='"model":"m","prompt":"x"'), "nests", id="completions"
    ),
    pytest.param(
        "/v1/embeddings", body('"e":' + arrays(DEEP), head='"model":"m","input":"x"'), "nests", id="embeddings"
    ),
    pytest.param(CHAT, schema_body('{"allOf":[' * 450 + "{}" + "]}" * 450), "nests", id="deep allOf"),
    pytest.param(CHAT, schema_body('{"not":' * 900 + "{}" + "}" * 900), "nests", id="deep not"),
    pytest.param(CHAT, schema_body('{"enum":[' + arrays(900) + "]}"), "nests", id="deep enum value"),
    pytest.param(CHAT, schema_body('{"const":' + arrays(900) + "}"), "nests", id="deep const"),
    pytest.param(
        CHAT,
        tool_body('{"type":"object","required":["a"],"properties":{"a":' * 300 + "{}" + "}}" * 300),
        "nests",
        id="deep tool parameters",
    ),
    pytest.param(CHAT, schema_body(ref_chain(1_500, "%s")), "nests", id="long $ref chain"),
    pytest.param(CHAT, schema_body(ref_chain(1_500, '{"allOf":[%s]}')), "nests", id="$ref chain through allOf"),
    pytest.param(CHAT, schema_body(ref_chain(1_500, '{"not":{"not":%s}}')), "nests", id="$ref chain through not"),
    pytest.param(CHAT, schema_body(ref_chain(1_500, '{"anyOf":[%s]}')), "nests", id="$ref chain through anyOf"),
    pytest.param(
        CHAT,
        schema_body(json.dumps({"allOf": [{"anyOf": [{"type": "integer"}, {"minimum": i}]} for i in range(900)]})),
        "",
        id="many pending choices",
    ),
    pytest.param(CHAT, schema_body(nested_ifs(10)), "", id="nested if/then"),
]


async def send(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n"
        ).encode()
        + body
    )
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


@pytest.fixture(params=["deterministic header", "no upstream"])
async def served(request: pytest.FixtureRequest, aiohttp_server: Any) -> tuple[int, dict[str, str]]:
    """(port, extra headers): the forced fallback next to a live upstream, or the default fallback."""
    if request.param == "no upstream":
        server = await aiohttp_server(create_app(make_config()))
        return int(server.port), {}
    upstream = await aiohttp_server(FakeUpstream().app())
    env = {"LLM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1"}
    server = await aiohttp_server(create_app(make_config(None, env)))
    return int(server.port), {"X-Airgap-Mode": "deterministic"}


def assert_clean_400(status: int, body: Any, logs: Sequence[MutableMapping[str, Any]], match: str) -> None:
    assert status == 400, body
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert match in error["message"], error["message"]
    assert not [e for e in logs if e["event"] == "internal_error" or "exc_info" in e]


@pytest.mark.parametrize(("path", "body", "match"), NESTED)
async def test_deeply_nested_input_is_a_400(
    served: tuple[int, dict[str, str]], path: str, body: str, match: str
) -> None:
    port, headers = served
    with capture_logs() as logs:
        status, answer = await send(port, path, body.encode(), headers)
    if match == "" and status == 200:  # a budget or a limit may also answer it; never a 500
        return
    assert_clean_400(status, answer, logs, match)


@pytest.mark.parametrize("schema", FLOAT_EDGES)
async def test_float_edge_cases_give_a_valid_number_or_a_400(
    served: tuple[int, dict[str, str]], schema: dict[str, Any]
) -> None:
    port, headers = served
    with capture_logs() as logs:
        status, answer = await send(port, CHAT, schema_body(json.dumps(schema)).encode(), headers)
    if status == 200:
        value = json.loads(answer["choices"][0]["message"]["content"])
        assert_valid(schema, value)
        return
    assert_clean_400(status, answer, logs, "response_format.json_schema:")


async def test_nesting_at_the_limit_is_answered(served: tuple[int, dict[str, str]]) -> None:
    port, headers = served
    status, answer = await send(port, CHAT, body('"m":' + arrays(MAX_JSON_DEPTH - 1)).encode(), headers)
    assert status == 200, answer


async def test_deep_body_forwarded_with_a_new_model_is_a_400(aiohttp_server: Any) -> None:
    """The forward path re-serialises the body to set the default model: deep nesting is refused first."""
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    env = {"LLM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1", "LLM_MODEL": "served-model"}
    server = await aiohttp_server(create_app(make_config(None, env)))
    deep = body('"api_base":"http://elsewhere"', '"x":' + arrays(DEEP), head=USER)
    with capture_logs() as logs:
        status, answer = await send(int(server.port), CHAT, deep.encode(), {})
    assert_clean_400(status, answer, logs, "nests")
    assert fake.received == []


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        pytest.param('{"a":"' + "[" * 500 + '"}', False, id="brackets inside a string"),
        pytest.param("{" + ",".join(f'"k{i}":[[1]]' for i in range(500)) + "}", False, id="wide, not deep"),
        pytest.param('{"a":' + arrays(MAX_JSON_DEPTH - 1) + "}", False, id="at the limit"),
        pytest.param('{"a":' + arrays(MAX_JSON_DEPTH) + "}", True, id="one past the limit"),
        pytest.param('{"a":[' + objects(MAX_JSON_DEPTH) + "]}", True, id="objects in an array"),
    ],
)
def test_nesting_is_measured_without_recursion(text: str, deeper: bool) -> None:
    assert nests_deeper(text.encode(), json.loads(text)) is deeper
