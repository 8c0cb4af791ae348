"""The proxy in front of real upstreams: llama.cpp (llama-cpp-python's server) and the LiteLLM proxy.

Real processes on 127.0.0.1, a real 135M-parameter model, the official
openai SDK as the client. Needs ``scripts/real-servers setup`` (see
docs/real-servers.md); skipped without it, except in CI, where it fails.

Wire facts of llama-cpp-python's server these tests live with: SSE events end
in ``\\r\\n\\r\\n`` and ``: ping`` comments may appear; it serves one request at a
time; a decoder-only model without pooling answers ``/v1/embeddings`` with one
vector per token (a list of lists), whatever ``encoding_format`` asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.real_servers import (
    CLIENT_TIMEOUT_S,
    LITELLM_KEY,
    LITELLM_MODEL,
    LITELLM_TEXT,
    LLAMA_KEY,
    LLAMA_MODEL,
    RealSetup,
    Server,
    Servers,
    call,
    litellm_server,
    llama_server,
    proxy_server,
    real_setup,
    servers,
    status,
    upstream_health,
    wait_for_health,
    wait_until,
)

__all__ = ["real_setup", "servers"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

DETERMINISTIC_FINGERPRINT = "fp_airgap_deterministic"
# The local-llamacpp probe asks for the model list, which llama-cpp-python's
# server (no /health) and llama.cpp's own llama-server both serve.
# Until that is fixed the upstream is configured with the generic type, whose probe is GET models.
LLAMA_PROVIDER_TYPE = "local-llamacpp"
# SmolLM2's end-of-text and end-of-turn tokens: forbidding them makes the model
# write exactly max_tokens tokens, so a stream lasts long enough to measure.
NO_EOS = {"0": -100, "2": -100}
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in five words."}]


def llama_upstream(server: Server, provider_type: str = LLAMA_PROVIDER_TYPE) -> dict[str, Any]:
    return {
        "name": "llama",
        "provider_type": provider_type,
        "base_url": f"http://127.0.0.1:{server.port}/v1",
        "api_key": LLAMA_KEY,
    }


def litellm_upstream(server: Server) -> dict[str, Any]:
    return {
        "name": "litellm",
        "provider_type": "local-litellm",
        "base_url": f"http://127.0.0.1:{server.port}/v1",
        "api_key": LITELLM_KEY,
    }


_SERVERS: list[Servers] = []


@pytest.fixture(scope="module", autouse=True)
def _clients(servers: Servers) -> Iterator[None]:
    _SERVERS.append(servers)
    yield
    _SERVERS.remove(servers)


def client(proxy: Server) -> openai.OpenAI:
    # As an agent: LLM_BASE_URL is the proxy, and its own key is not the upstream's.
    return _SERVERS[-1].client(proxy)


def chat_served_by(proxy: Server, model: str, **extra: Any) -> tuple[str, Any]:
    raw = client(proxy).chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **extra)
    return raw.headers["x-airgap-upstream"], raw.parse()


@pytest.fixture(scope="module")
def llama(real_setup: RealSetup, servers: Servers) -> Server:
    return servers.start(llama_server(real_setup, servers.log_dir))


@pytest.fixture(scope="module")
def llama_proxy(llama: Server, servers: Servers) -> Server:
    proxy = servers.start(proxy_server(servers.log_dir, [llama_upstream(llama)], default_model=LLAMA_MODEL))
    wait_for_health(proxy, "llama", "healthy")
    return proxy


@pytest.fixture(scope="module")
def litellm(real_setup: RealSetup, servers: Servers) -> Server:
    return servers.start(litellm_server(real_setup, servers.log_dir))


@pytest.fixture(scope="module")
def litellm_proxy(litellm: Server, servers: Servers) -> Server:
    proxy = servers.start(proxy_server(servers.log_dir, [litellm_upstream(litellm)], default_model=LITELLM_MODEL))
    wait_for_health(proxy, "litellm", "healthy")
    return proxy


def arrival_times(stream: Iterator[Any]) -> tuple[list[float], str]:
    """Client-side arrival time of each chunk that carries text, and the text."""
    times, text = [], []
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            times.append(time.monotonic())
            text.append(piece)
    return times, "".join(text)


def assert_streamed_incrementally(times: list[float], min_spread_s: float = 1.0) -> None:
    """The "fake streaming" detector of gateway benchmarks.

    A buffering hop delivers every chunk at the very end; real streaming spreads
    the arrivals over the generation. The stream must last over ``min_spread_s``
    and at most half of the chunks may arrive within its last 250 ms.
    """
    assert len(times) >= 10, f"only {len(times)} chunks"
    spread = times[-1] - times[0]
    assert spread > min_spread_s, f"all chunks arrived within {spread:.3f} s"
    late = sum(1 for t in times if t > times[-1] - 0.25)
    assert late <= len(times) / 2, f"{late} of {len(times)} chunks arrived in the last 250 ms"


# --------------------------------------------------------------------------- #
# llama.cpp
# --------------------------------------------------------------------------- #


def test_llama_chat(llama_proxy: Server) -> None:
    upstream, chat = chat_served_by(llama_proxy, LLAMA_MODEL, max_tokens=16, temperature=0)
    assert upstream == "llama"
    assert chat.system_fingerprint != DETERMINISTIC_FINGERPRINT
    assert isinstance(chat.choices[0].message.content, str) and chat.choices[0].message.content.strip()
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 16


def test_llama_stream_arrives_incrementally(llama_proxy: Server) -> None:
    stream = client(llama_proxy).chat.completions.create(
        model=LLAMA_MODEL,
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        max_tokens=256,
        logit_bias=NO_EOS,
        stream=True,
    )
    times, text = arrival_times(stream)
    assert text.strip()
    assert_streamed_incrementally(times)


def test_llama_completions(llama_proxy: Server) -> None:
    raw = client(llama_proxy).completions.with_raw_response.create(
        model=LLAMA_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert raw.headers["x-airgap-upstream"] == "llama"
    completion = raw.parse()
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_llama_embeddings_with_the_sdk_default_encoding(llama_proxy: Server) -> None:
    # The SDK asks for base64 by default; llama-cpp-python answers with floats
    # (per token, for this model), which the SDK accepts as they are.
    raw = client(llama_proxy).embeddings.with_raw_response.create(model=LLAMA_MODEL, input="hello world")
    assert raw.headers["x-airgap-upstream"] == "llama"
    embedding = raw.parse().data[0].embedding
    flat = [x for row in embedding for x in (row if isinstance(row, list) else [row])]
    assert len(flat) >= 64 and all(isinstance(x, float) for x in flat)


def test_llama_models_and_status(llama_proxy: Server) -> None:
    assert LLAMA_MODEL in [m.id for m in client(llama_proxy).models.list()]
    report = status(llama_proxy)
    assert report["reachable"] is True
    assert report["airgap_compliant"] is True
    assert report["upstream"] == "llama"
    assert report["provider_type"] == LLAMA_PROVIDER_TYPE
    assert report["fallback_active"] is False


def test_llama_upstream_errors_reach_the_client(llama_proxy: Server) -> None:
    # llama-cpp-python answers a validation error with HTTP 500; the client sees it, nothing hangs.
    with pytest.raises(openai.InternalServerError):
        client(llama_proxy).chat.completions.create(
            model=LLAMA_MODEL, messages=MESSAGES, max_tokens=4, extra_body={"top_p": "high"}
        )
    wait_for_health(llama_proxy, "llama", "healthy")


def test_llama_with_a_wrong_key_is_reported_and_not_used(llama: Server, servers: Servers) -> None:
    # llama-cpp-python refuses a wrong key with a FastAPI-shaped 401; the probe sees it.
    wrong = {**llama_upstream(llama), "api_key": "sk-not-the-right-key"}
    proxy = servers.start(proxy_server(servers.log_dir, [wrong], default_model=LLAMA_MODEL))
    try:
        wait_for_health(proxy, "llama", "unhealthy")
        [detail] = status(proxy)["upstreams"]
        assert "401" in detail["last_error"]
        assert "sk-not-the-right-key" not in json.dumps(status(proxy))
        upstream, chat = chat_served_by(proxy, LLAMA_MODEL)
        assert upstream == "deterministic" and chat.system_fingerprint == DETERMINISTIC_FINGERPRINT
    finally:
        proxy.stop()


def test_local_llamacpp_probe_finds_llama_cpp_python(llama: Server, servers: Servers) -> None:
    proxy = servers.start(
        proxy_server(servers.log_dir, [llama_upstream(llama, "local-llamacpp")], default_model=LLAMA_MODEL)
    )
    try:
        wait_until("first probe", lambda: status(proxy)["upstreams"][0]["last_check"] is not None, 20)
        time.sleep(1.0)  # two more probe intervals
        report = status(proxy)
        assert report["upstreams"][0]["health"] == "healthy", report["upstreams"][0]
        assert report["provider_type"] == "local-llamacpp"
        assert report["reachable"] is True and report["airgap_compliant"] is True
        upstream, _ = chat_served_by(proxy, LLAMA_MODEL, max_tokens=4)
        assert upstream == "llama"
    finally:
        proxy.stop()


def test_a_long_generation_does_not_mark_llama_down(llama: Server, servers: Servers) -> None:
    health = {"interval_s": 0.5, "timeout_s": 1, "unhealthy_after": 2, "healthy_after": 1}
    proxy = servers.start(
        proxy_server(servers.log_dir, [llama_upstream(llama)], default_model=LLAMA_MODEL, health=health)
    )
    try:
        wait_for_health(proxy, "llama", "healthy")
        stream = client(proxy).chat.completions.create(
            model=LLAMA_MODEL, messages=MESSAGES, max_tokens=400, logit_bias=NO_EOS, stream=True
        )
        seen, next_look = [], time.monotonic() + 0.5
        with stream:
            for _chunk in stream:
                if time.monotonic() >= next_look:
                    seen.append(upstream_health(proxy, "llama"))
                    next_look = time.monotonic() + 0.5
        assert len(seen) >= 6, "the generation was too short to tell"
        assert "unhealthy" not in seen, seen
    finally:
        proxy.stop()


def test_llama_killed_fallback_then_back(real_setup: RealSetup, servers: Servers) -> None:
    llama = servers.start(llama_server(real_setup, servers.log_dir))
    proxy = servers.start(proxy_server(servers.log_dir, [llama_upstream(llama)], default_model=LLAMA_MODEL))
    wait_for_health(proxy, "llama", "healthy")
    assert chat_served_by(proxy, LLAMA_MODEL, max_tokens=4)[0] == "llama"

    # Killed in the middle of a stream: the client's stream ends (error or end), it never hangs.
    stream = client(proxy).chat.completions.create(
        model=LLAMA_MODEL, messages=MESSAGES, max_tokens=400, logit_bias=NO_EOS, stream=True
    )
    started = time.monotonic()
    pieces = 0
    with _ends(), stream:
        for _chunk in stream:
            pieces += 1
            if pieces == 3:
                llama.kill()
    assert 3 <= pieces < 400
    assert time.monotonic() - started < CLIENT_TIMEOUT_S

    wait_for_health(proxy, "llama", "unhealthy")
    upstream, chat = chat_served_by(proxy, LLAMA_MODEL)
    assert upstream == "deterministic" and chat.system_fingerprint == DETERMINISTIC_FINGERPRINT
    streamed = list(client(proxy).chat.completions.create(model=LLAMA_MODEL, messages=MESSAGES, stream=True))
    assert streamed[0].system_fingerprint == DETERMINISTIC_FINGERPRINT
    embedding = client(proxy).embeddings.create(model=LLAMA_MODEL, input="hi")
    assert embedding.data[0].embedding
    report = status(proxy)
    # The status describes the configured provider, down: the reference page's "reachable: false".
    assert report["fallback_active"] is True and report["provider_type"] == "local-llamacpp"
    assert report["reachable"] is False and report["upstream"] == "llama"

    llama.start()  # back on the same port
    wait_for_health(proxy, "llama", "healthy")
    assert chat_served_by(proxy, LLAMA_MODEL, max_tokens=4)[0] == "llama"
    assert status(proxy)["upstream"] == "llama"


class _ends:
    """Context manager: the block may end normally or with an openai error, nothing else."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        return kind is None or issubclass(kind, openai.APIError)


# --------------------------------------------------------------------------- #
# LiteLLM proxy as the upstream
# --------------------------------------------------------------------------- #


def test_litellm_chat_stream_completions_models(litellm_proxy: Server) -> None:
    upstream, chat = chat_served_by(litellm_proxy, LITELLM_MODEL)
    assert upstream == "litellm"
    assert chat.choices[0].message.content == LITELLM_TEXT

    chunks = list(client(litellm_proxy).chat.completions.create(model=LITELLM_MODEL, messages=MESSAGES, stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == LITELLM_TEXT

    raw = client(litellm_proxy).completions.with_raw_response.create(model=LITELLM_MODEL, prompt="hi")
    assert raw.headers["x-airgap-upstream"] == "litellm"
    assert raw.parse().choices[0].text == LITELLM_TEXT

    assert LITELLM_MODEL in [m.id for m in client(litellm_proxy).models.list()]


def test_litellm_status_uses_its_liveliness_probe(litellm: Server, litellm_proxy: Server) -> None:
    assert call("GET", litellm.port, "/health/liveliness").status == 200
    report = status(litellm_proxy)
    assert report["provider_type"] == "local-litellm"
    assert report["reachable"] is True and report["airgap_compliant"] is True
    [detail] = report["upstreams"]
    assert detail["health"] == "healthy" and detail["last_error"] is None


def test_litellm_killed_fallback_then_back(real_setup: RealSetup, servers: Servers) -> None:
    litellm = servers.start(litellm_server(real_setup, servers.log_dir))
    proxy = servers.start(proxy_server(servers.log_dir, [litellm_upstream(litellm)], default_model=LITELLM_MODEL))
    wait_for_health(proxy, "litellm", "healthy")
    assert chat_served_by(proxy, LITELLM_MODEL)[0] == "litellm"

    litellm.kill()
    wait_for_health(proxy, "litellm", "unhealthy")
    upstream, chat = chat_served_by(proxy, LITELLM_MODEL)
    assert upstream == "deterministic" and chat.system_fingerprint == DETERMINISTIC_FINGERPRINT
    assert status(proxy)["fallback_active"] is True

    litellm.start()
    wait_for_health(proxy, "litellm", "healthy")
    upstream, chat = chat_served_by(proxy, LITELLM_MODEL)
    assert upstream == "litellm" and chat.choices[0].message.content == LITELLM_TEXT
