"""Real client libraries against the proxy, with a real upstream (llama.cpp) and in fallback.

The official openai SDK (sync, async, streaming, embeddings with its default
base64 encoding) runs here; LangChain's ChatOpenAI (invoke, stream, a bound
tool) and the LiteLLM SDK (``litellm.completion`` with ``api_base``) run in
the ``venv-litellm`` virtualenv through tests/real_clients_driver.py, which
takes the proxy from ``LLM_BASE_URL`` as an agent does. Needs
``scripts/real-servers setup`` (docs/real-servers.md).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.real_servers import (
    CLIENT_TIMEOUT_S,
    LLAMA_KEY,
    LLAMA_MODEL,
    ROOT,
    RealSetup,
    Server,
    Servers,
    child_env,
    free_port,
    llama_server,
    proxy_server,
    real_setup,
    servers,
    wait_for_health,
)

__all__ = ["real_setup", "servers"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.real, pytest.mark.timeout(300)]

DRIVER = ROOT / "tests" / "real_clients_driver.py"
DRIVER_TIMEOUT_S = 240
DETERMINISTIC_FINGERPRINT = "fp_airgap_deterministic"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in five words."}]


@pytest.fixture(scope="module", params=["llama", "fallback"])
def scenario(request: pytest.FixtureRequest, real_setup: RealSetup, servers: Servers) -> tuple[str, Server]:
    """The proxy in front of a live llama.cpp server, or in front of one that is not there."""
    if request.param == "llama":
        llama = servers.start(llama_server(real_setup, servers.log_dir))
        port = llama.port
    else:
        port = free_port()  # nothing listens there: every request gets the deterministic fallback
    upstream = {
        "name": "llama",
        "provider_type": "local-llamacpp",
        "base_url": f"http://127.0.0.1:{port}/v1",
        "api_key": LLAMA_KEY,
    }
    proxy = servers.start(proxy_server(servers.log_dir, [upstream], default_model=LLAMA_MODEL))
    wait_for_health(proxy, "llama", "healthy" if request.param == "llama" else "unhealthy")
    return request.param, proxy


def expected_upstream(name: str) -> str:
    return "llama" if name == "llama" else "deterministic"


def base_url(proxy: Server) -> str:
    return f"http://127.0.0.1:{proxy.port}/v1"


def test_openai_sync(scenario: tuple[str, Server], servers: Servers) -> None:
    name, proxy = scenario
    client = servers.client(proxy)
    raw = client.chat.completions.with_raw_response.create(model=LLAMA_MODEL, messages=MESSAGES, max_tokens=16)
    assert raw.headers["x-airgap-upstream"] == expected_upstream(name)
    chat = raw.parse()
    assert chat.choices[0].message.content
    assert (chat.system_fingerprint == DETERMINISTIC_FINGERPRINT) is (name == "fallback")

    chunks = list(client.chat.completions.create(model=LLAMA_MODEL, messages=MESSAGES, max_tokens=16, stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    # No encoding_format: the SDK asks for base64 and decodes whatever shape comes back.
    embedding = client.embeddings.create(model=LLAMA_MODEL, input="hello")
    assert embedding.data[0].embedding

    assert LLAMA_MODEL in [m.id for m in client.models.list()]


async def test_openai_async(scenario: tuple[str, Server]) -> None:
    name, proxy = scenario
    client = openai.AsyncOpenAI(base_url=base_url(proxy), api_key="agent-key", max_retries=0, timeout=CLIENT_TIMEOUT_S)
    try:
        raw = await asyncio.wait_for(
            client.chat.completions.with_raw_response.create(model=LLAMA_MODEL, messages=MESSAGES, max_tokens=16),
            CLIENT_TIMEOUT_S,
        )
        assert raw.headers["x-airgap-upstream"] == expected_upstream(name)
        assert raw.parse().choices[0].message.content

        async def stream_text() -> str:
            stream = await client.chat.completions.create(
                model=LLAMA_MODEL, messages=MESSAGES, max_tokens=16, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        assert (await asyncio.wait_for(stream_text(), CLIENT_TIMEOUT_S)).strip()
        embedding = await asyncio.wait_for(client.embeddings.create(model=LLAMA_MODEL, input="hi"), CLIENT_TIMEOUT_S)
        assert embedding.data[0].embedding
    finally:
        await client.close()


def drive(setup: RealSetup, proxy: Server, *flows: str) -> dict[str, Any]:
    """Run the driver in venv-litellm with LLM_BASE_URL pointing at the proxy; its JSON report."""
    result = subprocess.run(
        [str(setup.litellm_python), str(DRIVER), *flows],
        env=child_env(LLM_BASE_URL=base_url(proxy), LLM_MODEL=LLAMA_MODEL),
        cwd=Path(DRIVER).parent,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    failed = {k: v["trace"] for k, v in report.items() if not v["ok"]}
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())
    return report


@pytest.fixture(scope="module")
def driven(real_setup: RealSetup, scenario: tuple[str, Server]) -> dict[str, Any]:
    """Every LangChain and LiteLLM flow, run once per scenario (importing litellm takes seconds)."""
    return drive(real_setup, scenario[1])


def test_langchain_chat_openai(driven: dict[str, Any], scenario: tuple[str, Server]) -> None:
    name, _proxy = scenario
    report = driven
    assert report["langchain_invoke"]["content"]
    assert report["langchain_invoke"]["upstream"] == expected_upstream(name)
    assert report["langchain_stream"]["chunks"] > 1 and report["langchain_stream"]["content"].strip()
    calls = report["langchain_tools"]["tool_calls"]
    # A forced tool choice names the tool; the fallback's arguments also follow the schema.
    # (The 135M model's arguments, grammar-constrained or not, are not always valid JSON.)
    assert [c["name"] for c in calls + report["langchain_tools"]["invalid_tool_calls"]][:1] == ["get_weather"]
    if name == "fallback":
        assert isinstance(calls[0]["args"]["city"], str)


def test_litellm_sdk(driven: dict[str, Any], scenario: tuple[str, Server]) -> None:
    name, _proxy = scenario
    report = driven
    assert report["litellm_completion"]["content"]
    assert report["litellm_completion"]["upstream"] == expected_upstream(name)
    assert report["litellm_stream"]["chunks"] > 1 and report["litellm_stream"]["content"].strip()
