"""The official openai SDK, unchanged, pointed at the proxy (as agents use it)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import openai
import pytest

from airgap_proxy.app import create_app
from tests.conftest import ThreadedServers, make_config
from tests.fakes import FakeUpstream

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
KEY = "sk-local-upstream-42"


def start(threaded: ThreadedServers, fake: FakeUpstream, **env: str) -> str:
    port = threaded.start(fake.app())
    config = make_config(None, {"LLM_BASE_URL": f"http://127.0.0.1:{port}/v1", "LLM_API_KEY": KEY, **env})
    return threaded.start_proxy(config) + "/v1"


def test_sync_sdk_every_core_endpoint(threaded: ThreadedServers) -> None:
    fake = FakeUpstream()
    client = openai.OpenAI(base_url=start(threaded, fake), api_key="agent-key", max_retries=0)

    chat = client.chat.completions.create(model="llama3", messages=MESSAGES)
    assert chat.choices[0].message.content == "Hello from upstream"

    chunks = list(client.chat.completions.create(model="llama3", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "

    legacy = client.completions.create(model="llama3", prompt="hi")
    assert legacy.choices[0].text == "legacy text"

    embedding = client.embeddings.create(model="nomic", input="hi", encoding_format="float")
    assert embedding.data[0].embedding == [0.6, 0.8]

    assert "fake-model" in [m.id for m in client.models.list()]  # discovered by the health probe

    paths = [r.path for r in fake.received]
    assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    for received in fake.received:
        assert received.headers["Authorization"] == f"Bearer {KEY}"
        assert "agent-key" not in str(received.headers)


# Vendor key headers a client (or a gateway SDK) may carry; none may reach an upstream.
CREDENTIAL_HEADERS = [
    "x-goog-api-key",
    "x-litellm-api-key",
    "ocp-apim-subscription-key",
    "x-amz-security-token",
    "X-Auth-Token",
    "api-key",
    "x-api-key",
    "x-portkey-api-key",
    "helicone-auth",
    "x-goog-iam-authorization-token",
    "X-Vault-Token",
    "x-client-secret",
    "x-apikey",
]


def test_credential_headers_never_reach_the_upstream(threaded: ThreadedServers) -> None:
    fake = FakeUpstream()
    secrets = {name: f"client-secret-{index:02d}-9f3b" for index, name in enumerate(CREDENTIAL_HEADERS)}
    kept = {"anthropic-version": "2023-06-01", "OpenAI-Organization": "org-1", "Idempotency-Key": "idem-1"}
    client = openai.OpenAI(
        base_url=start(threaded, fake), api_key="agent-key", max_retries=0, default_headers={**secrets, **kept}
    )
    client.chat.completions.create(model="llama3", messages=MESSAGES)
    list(client.chat.completions.create(model="llama3", messages=MESSAGES, stream=True))
    client.embeddings.create(model="nomic", input="hi", encoding_format="float")
    assert len(fake.received) == 3
    for received in fake.received:
        sent = {name.lower(): value for name, value in received.headers.items()}
        for name, secret in secrets.items():
            assert name.lower() not in sent, name
            assert secret not in str(received.headers)
        assert sent["authorization"] == f"Bearer {KEY}"  # only the upstream's own key
        for name, value in kept.items():
            assert sent[name.lower()] == value


def test_sync_sdk_sees_airgap_violation(threaded: ThreadedServers) -> None:
    base = threaded.start_proxy(make_config(None, {"LLM_BASE_URL": "https://api.openai.com/v1"})) + "/v1"
    client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == 422
    assert info.value.code == "airgap_violation"
    assert "deny list" in info.value.message
    with pytest.raises(openai.UnprocessableEntityError):
        list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))


def test_sync_sdk_sees_bad_request(threaded: ThreadedServers) -> None:
    fake = FakeUpstream()
    client = openai.OpenAI(base_url=start(threaded, fake), api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[])
    assert info.value.code == "invalid_request_error"
    assert fake.received == []


async def test_async_sdk_plain_and_streaming(aiohttp_server: Any) -> None:
    fake = FakeUpstream(stream_chunks=4)
    upstream = await aiohttp_server(fake.app())
    config = make_config(None, {"LLM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1", "LLM_API_KEY": KEY})
    proxy = await aiohttp_server(create_app(config))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="x", max_retries=0)
    try:
        chat = await client.chat.completions.create(model="llama3", messages=MESSAGES)
        assert chat.choices[0].message.content == "Hello from upstream"
        stream = await client.chat.completions.create(model="llama3", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "tok0 tok1 tok2 tok3 "
        embedding = await client.embeddings.create(model="nomic", input=["a"], encoding_format="float")
        assert len(embedding.data) == 1
    finally:
        await client.close()


async def test_each_stream_chunk_arrives_within_50ms(aiohttp_server: Any) -> None:
    """Five chunks 200 ms apart: each reaches the SDK within 50 ms of being sent."""
    fake = FakeUpstream(stream_chunks=5, chunk_delay_s=0.2)
    upstream = await aiohttp_server(fake.app())
    config = make_config(None, {"LLM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1"})
    proxy = await aiohttp_server(create_app(config))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="x", max_retries=0)
    received_at: list[float] = []
    try:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            received_at.append(time.monotonic())
    finally:
        await client.close()
    assert len(received_at) == 5
    lags = [got - sent for sent, got in zip(fake.chunk_sent_at, received_at, strict=True)]
    assert max(lags) < 0.05, lags
    gaps = [b - a for a, b in itertools.pairwise(received_at)]
    assert min(gaps) > 0.15, gaps  # chunks were not coalesced


async def test_mid_stream_failure_raises_in_the_sdk(aiohttp_server: Any) -> None:
    fake = FakeUpstream(stream_chunks=5, die_after_chunks=2)
    upstream = await aiohttp_server(fake.app())
    config = make_config(None, {"LLM_BASE_URL": f"http://127.0.0.1:{upstream.port}/v1"})
    proxy = await aiohttp_server(create_app(config))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="x", max_retries=0)
    got: list[str] = []
    try:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="upstream"):
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    finally:
        await client.close()
    assert got == ["tok0 ", "tok1 "]
    await asyncio.sleep(0)
