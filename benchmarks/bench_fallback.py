"""In-process throughput of the deterministic fallback (not a test).

Run on one core::

    taskset -c 0 python benchmarks/bench_fallback.py [--seconds 2]

Each case calls the synthesizer repeatedly with a request that differs per
call (the message carries the call number), so nothing is served from a
cache, and prints calls per second. The target for plain chat completions is
5,000 calls/s on one core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from airgap_proxy.fallback import (
    EMPTY_CANNED,
    chat_completion,
    chat_completion_stream,
    completion,
    embeddings,
)

CHAT_TARGET = 5_000
MODEL = "llama3.1:8b"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "email", "tags"],
    "additionalProperties": False,
}


def messages(i: int) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Question number {i}: what is the capital of France?"},
    ]


CASES: list[tuple[str, Callable[[int], object]]] = [
    ("chat", lambda i: chat_completion({"model": MODEL, "messages": messages(i)}, MODEL, EMPTY_CANNED)),
    (
        "chat stream (usage)",
        lambda i: chat_completion_stream(
            {"model": MODEL, "messages": messages(i), "stream": True, "stream_options": {"include_usage": True}},
            MODEL,
            EMPTY_CANNED,
        ),
    ),
    (
        "chat tool call",
        lambda i: chat_completion(
            {"model": MODEL, "messages": messages(i), "tools": [WEATHER_TOOL], "tool_choice": "required"},
            MODEL,
            EMPTY_CANNED,
        ),
    ),
    (
        "chat json_schema",
        lambda i: chat_completion(
            {
                "model": MODEL,
                "messages": messages(i),
                "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
            },
            MODEL,
            EMPTY_CANNED,
        ),
    ),
    ("completion", lambda i: completion({"model": MODEL, "prompt": f"Once upon a time {i}"}, MODEL, EMPTY_CANNED)),
    ("embeddings 1536 float", lambda i: embeddings({"input": f"text {i}"}, MODEL)),
    ("embeddings 1536 base64", lambda i: embeddings({"input": f"text {i}", "encoding_format": "base64"}, MODEL)),
    (
        "embeddings 256 x8 batch",
        lambda i: embeddings({"input": [f"t{i}-{k}" for k in range(8)], "dimensions": 256}, MODEL),
    ),
]


def measure(call: Callable[[int], object], seconds: float) -> float:
    """Calls per second over about ``seconds`` (after a short warm-up)."""
    for i in range(50):
        call(-i)
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            call(calls)
            calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    args = parser.parse_args()
    print(f"{'case':<26}{'calls/s':>12}{'us/call':>10}")
    print("-" * 48)
    results = {}
    for name, call in CASES:
        rate = measure(call, args.seconds)
        results[name] = rate
        print(f"{name:<26}{rate:>12,.0f}{1e6 / rate:>10.1f}")
    verdict = "meets" if results["chat"] >= CHAT_TARGET else "MISSES"
    print(f"\nchat {verdict} the target of {CHAT_TARGET:,} calls/s on one core")


if __name__ == "__main__":
    main()
