"""Token counts read from the tail of a response."""

from __future__ import annotations

import json

import pytest

from airgap_proxy.usage import TAIL_BYTES, keep_tail, tokens


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}}', (12, 30), id="json"
        ),
        pytest.param(
            b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\ndata: [DONE]\n\n',
            (3, 4),
            id="sse",
        ),
        pytest.param(b'{"usage": {"prompt_tokens": 5, "total_tokens": 5}}', (5, None), id="embeddings"),
        pytest.param(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', (None, None), id="no usage"),
        pytest.param(b"", (None, None), id="empty"),
    ],
)
def test_tokens(body: bytes, expected: tuple[int | None, int | None]) -> None:
    assert tokens(body) == expected


def test_tail_is_bounded_and_keeps_the_last_usage() -> None:
    tail = b""
    for index in range(500):
        chunk = b"data: " + json.dumps({"choices": [{"delta": {"content": f"t{index}"}}]}).encode() + b"\n\n"
        tail = keep_tail(tail, chunk)
        assert len(tail) <= TAIL_BYTES
    tail = keep_tail(tail, b'data: {"usage":{"prompt_tokens":7,"completion_tokens":500}}\n\n')
    tail = keep_tail(tail, b"data: [DONE]\n\n")
    assert tokens(tail) == (7, 500)
    assert keep_tail(b"abc", b"x" * (TAIL_BYTES + 10)) == b"x" * TAIL_BYTES
