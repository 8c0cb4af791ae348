"""The fallback's limits, through a served proxy: linear-time patterns, a CPU budget, bounded answers.

Each attack is sent as a client would (aiohttp, the official SDK) to
``airgap-proxy serve`` in its own process, while a second client polls
``/healthz``: the attack must get its 400 quickly and the event loop must keep
answering meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.test_operations import ServedProxy, serve, write_config

FORCE = {"X-Airgap-Mode": "deterministic"}
HEALTHZ_MAX_S = 0.1
ATTACK_MAX_S = 3.0


def schema_request(schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        **extra,
    }


def string_property(**rules: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"v": {"type": "string", **rules}}, "required": ["v"]}


# A schema that costs seconds of generation per choice (wide objects of long patterned strings).
HEAVY = {
    "type": "object",
    "properties": {
        f"p{i}": {"type": "array", "minItems": 50, "items": {"type": "string", "pattern": "^[a-z]{20,40}@[a-z]{5}$"}}
        for i in range(40)
    },
    "required": [f"p{i}" for i in range(40)],
}


async def start(tmp_path: Path, fallback: dict[str, Any] | None = None) -> ServedProxy:
    raw: dict[str, Any] = {"fallback": fallback} if fallback else {}
    return await serve(write_config(tmp_path / "airgap-proxy.yaml", raw))


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ServedProxy]:
    served = await start(tmp_path)
    yield served
    await served.stop()


async def attack(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float, float]:
    """POST ``body`` while polling ``/healthz``: status, JSON answer, seconds taken, worst ``/healthz`` seconds."""
    worst = 0.0
    done = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def poll() -> None:
            nonlocal worst
            while not done.is_set():
                began = time.perf_counter()
                async with http.get(f"{url}/healthz") as resp:
                    assert resp.status == 200
                worst = max(worst, time.perf_counter() - began)
                await asyncio.sleep(0.01)

        poller = asyncio.get_running_loop().create_task(poll())
        began = time.perf_counter()
        try:
            async with http.post(f"{url}{path}", json=body, headers=FORCE) as resp:
                status, answer = resp.status, json.loads(await resp.read())
        finally:
            elapsed = time.perf_counter() - began
            done.set()
            await poller
    return status, answer, elapsed, worst


def assert_refused(answer: dict[str, Any], *words: str) -> None:
    error = answer["error"]
    assert error["type"] == "invalid_request_error", error
    for word in words:
        assert word in error["message"], error


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        pytest.param(
            string_property(pattern="^(a+)+$", enum=["a" * 30 + "b"]),
            ["no value of enum"],
            id="nested quantifier, non-matching enum",
        ),
        pytest.param(
            string_property(pattern="(a+)+(?=b)c", minLength=30),
            ["(a+)+(?=b)c", "RE2", "lookaround"],
            id="lookahead",
        ),
        pytest.param(string_property(pattern="^(a)\\1$"), ["RE2", "back-reference"], id="back-reference"),
        pytest.param(
            {"type": "object", "patternProperties": {"^(a+)+(?=b)$": {}}, "minProperties": 1},
            ["patternProperties", "RE2"],
            id="patternProperties key",
        ),
    ],
)
async def test_catastrophic_patterns_are_answered_quickly_and_the_loop_stays_live(
    proxy: ServedProxy, schema: dict[str, Any], words: list[str]
) -> None:
    status, answer, elapsed, worst = await attack(proxy.url, "/v1/chat/completions", schema_request(schema))
    assert status == 400, answer
    assert_refused(answer, *words)
    assert elapsed < ATTACK_MAX_S, elapsed
    assert worst < HEALTHZ_MAX_S, worst


async def test_normal_patterns_still_produce_matching_output(proxy: ServedProxy) -> None:
    schema = string_property(pattern="^[A-Z]{2}-\\d{4}$", minLength=7)
    status, answer, _, _ = await attack(proxy.url, "/v1/chat/completions", schema_request(schema))
    assert status == 200, answer
    value = json.loads(answer["choices"][0]["message"]["content"])["v"]
    assert len(value) == 7 and value[2] == "-" and value[:2].isupper() and value[3:].isdigit(), value


async def test_an_answer_past_the_cpu_budget_is_refused_and_the_loop_stays_live(tmp_path: Path) -> None:
    proxy = await start(tmp_path, {"max_cpu_ms": 50})
    try:
        status, answer, elapsed, worst = await attack(proxy.url, "/v1/chat/completions", schema_request(HEAVY, n=8))
        assert status == 400, answer
        assert_refused(answer, "fallback.max_cpu_ms", "50")
        assert elapsed < 1.0, elapsed
        assert worst < HEALTHZ_MAX_S, worst
        small = await attack(proxy.url, "/v1/chat/completions", schema_request(string_property(pattern="^ok$")))
        assert small[0] == 200, small[1]
    finally:
        await proxy.stop()


async def test_concurrent_heavy_requests_do_not_stall_the_loop(tmp_path: Path) -> None:
    proxy = await start(tmp_path, {"max_cpu_ms": 200})
    try:
        results = await asyncio.gather(
            *(attack(proxy.url, "/v1/chat/completions", schema_request(HEAVY, n=8)) for _ in range(4))
        )
    finally:
        await proxy.stop()
    for status, answer, _elapsed, worst in results:
        assert status == 400, answer
        assert_refused(answer, "fallback.max_cpu_ms")
        assert worst < HEALTHZ_MAX_S * 2, worst


async def test_sigterm_drains_while_an_attack_runs(proxy: ServedProxy) -> None:
    body = schema_request(string_property(pattern="^(a+)+$", enum=["a" * 32 + "b"]))
    async with aiohttp.ClientSession() as http:
        sent = asyncio.get_running_loop().create_task(
            http.post(f"{proxy.url}/v1/chat/completions", json=body, headers=FORCE)
        )
        await asyncio.sleep(0.3)
        signalled = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proxy.process.wait(), 10) == 0
        assert time.monotonic() - signalled < 5
        resp = await sent
        assert resp.status in (200, 400)
        resp.release()


# --------------------------------------------------------------------------- #
# Amplification
# --------------------------------------------------------------------------- #


async def test_an_oversized_embeddings_request_is_refused_fast(proxy: ServedProxy) -> None:
    body = {"model": "e", "input": ["x"] * 2048, "dimensions": 4096}
    status, answer, elapsed, worst = await attack(proxy.url, "/v1/embeddings", body)
    assert status == 400, answer
    assert_refused(answer, "fallback.max_embedding_values", "2048", "4096")
    assert answer["error"]["param"] == "input"
    assert elapsed < 0.5, elapsed
    assert worst < HEALTHZ_MAX_S, worst


async def test_embeddings_within_the_limit_still_work_with_the_sdk(proxy: ServedProxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", default_headers=FORCE)
    async with client:
        result = await client.embeddings.create(model="e", input=["a", "b"] * 128, dimensions=1024)
    assert len(result.data) == 256 and len(result.data[0].embedding) == 1024


async def test_n_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    proxy = await start(tmp_path, {"max_choices": 2})
    try:
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="unused", default_headers=FORCE)
        async with client:
            messages: Any = [{"role": "user", "content": "hi"}]
            ok = await client.chat.completions.create(model="m", messages=messages, n=2)
            assert len(ok.choices) == 2
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="m", messages=messages, n=3)
            with pytest.raises(openai.BadRequestError):
                await client.completions.create(model="m", prompt="hi", n=3)
        assert refused.value.status_code == 400
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["param"] == "n"
        assert "fallback.max_choices" in refused.value.body["message"]
    finally:
        await proxy.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/embeddings", {"model": "e", "input": ["x"] * 64, "dimensions": 1024}, id="embeddings"),
        pytest.param(
            "/v1/completions", {"model": "m", "prompt": ["p"] * 2000, "max_tokens": 100}, id="completions batch"
        ),
        pytest.param("/v1/chat/completions", {**schema_request(HEAVY), "stream": True}, id="chat stream with a schema"),
    ],
)
async def test_an_answer_past_the_size_limit_is_refused(tmp_path: Path, path: str, body: dict[str, Any]) -> None:
    proxy = await start(tmp_path, {"max_answer_bytes": 65536})
    try:
        status, answer, elapsed, worst = await attack(proxy.url, path, body)
        assert status == 400, answer
        assert_refused(answer, "fallback.max_answer_bytes", "65536")
        assert elapsed < ATTACK_MAX_S and worst < HEALTHZ_MAX_S, (elapsed, worst)
        small = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert (await attack(proxy.url, "/v1/chat/completions", small))[0] == 200
    finally:
        await proxy.stop()
