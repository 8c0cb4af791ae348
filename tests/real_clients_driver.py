"""Drive the proxy with LangChain (langchain-openai) and the LiteLLM SDK, as an agent would.

Run by tests/test_real_clients.py with the Python of the ``venv-litellm``
virtualenv that ``scripts/real-servers setup`` makes (these libraries pin
their own dependencies, so they live there, not in the project's test
environment). Like an agent, it takes the proxy from ``LLM_BASE_URL`` and the
model from ``LLM_MODEL``. It prints one JSON object: for each flow either
what the client saw or the error it raised; the test makes the assertions.

Usage: python real_clients_driver.py FLOW...
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price list download at import
os.environ.setdefault("LITELLM_TELEMETRY", "False")

BASE_URL = os.environ["LLM_BASE_URL"]
MODEL = os.environ["LLM_MODEL"]
API_KEY = "agent-key-not-for-upstreams"
TIMEOUT_S = 60.0
PROMPT = "Say hello in five words."
UPSTREAM_HEADER = "x-airgap-upstream"


def chat_model(**kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    settings: dict[str, Any] = {"temperature": 0, "max_tokens": 24, **kwargs}
    return ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=API_KEY, timeout=TIMEOUT_S, max_retries=0, **settings)


def langchain_invoke() -> dict[str, Any]:
    message = chat_model(include_response_headers=True).invoke(PROMPT)
    headers = {k.lower(): v for k, v in (message.response_metadata.get("headers") or {}).items()}
    return {"content": message.content, "upstream": headers.get(UPSTREAM_HEADER)}


def langchain_stream() -> dict[str, Any]:
    chunks = [chunk.content for chunk in chat_model().stream(PROMPT)]
    return {"chunks": len([c for c in chunks if c]), "content": "".join(str(c) for c in chunks)}


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: the city name, e.g. Paris
        unit: celsius or fahrenheit
    """
    return f"20 degrees {unit} in {city}"


def langchain_tools() -> dict[str, Any]:
    # A forced tool choice: a model of any size answers with a call (llama.cpp constrains it by grammar).
    bound = chat_model(max_tokens=64).bind_tools([get_weather], tool_choice="get_weather")
    message = bound.invoke("What is the weather in Paris?")
    return {
        "tool_calls": [{"name": c["name"], "args": c["args"]} for c in message.tool_calls],
        "invalid_tool_calls": [{"name": c["name"], "args": c["args"]} for c in message.invalid_tool_calls],
    }


def litellm_completion() -> dict[str, Any]:
    import litellm

    response = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=BASE_URL,
        api_key=API_KEY,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=24,
        temperature=0,
        timeout=TIMEOUT_S,
        num_retries=0,
    )
    hidden = getattr(response, "_hidden_params", {}) or {}
    headers = {k.lower(): v for k, v in (hidden.get("additional_headers") or {}).items()}
    upstream = headers.get(UPSTREAM_HEADER) or headers.get("llm_provider-" + UPSTREAM_HEADER)
    return {"content": response.choices[0].message.content, "upstream": upstream}


def litellm_stream() -> dict[str, Any]:
    import litellm

    stream = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=BASE_URL,
        api_key=API_KEY,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=24,
        temperature=0,
        timeout=TIMEOUT_S,
        num_retries=0,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    return {"chunks": len([p for p in pieces if p]), "content": "".join(pieces)}


FLOWS: dict[str, Callable[[], dict[str, Any]]] = {
    "langchain_invoke": langchain_invoke,
    "langchain_stream": langchain_stream,
    "langchain_tools": langchain_tools,
    "litellm_completion": litellm_completion,
    "litellm_stream": litellm_stream,
}


def main(names: list[str]) -> int:
    results: dict[str, Any] = {}
    for name in names or list(FLOWS):
        start = time.monotonic()
        try:
            results[name] = {"ok": True, **FLOWS[name]()}
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        results[name]["seconds"] = round(time.monotonic() - start, 3)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
