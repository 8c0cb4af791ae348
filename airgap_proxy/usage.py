"""Token counts for the audit event, read from the end of a response (pure).

OpenAI-shaped bodies carry ``usage`` last (in the final SSE chunk for
streams), so the relay keeps only the last :data:`TAIL_BYTES` bytes it passed
on and this module reads the counts from them, without parsing the body.
"""

from __future__ import annotations

import re

TAIL_BYTES = 2048
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,12})')


def keep_tail(tail: bytes, chunk: bytes) -> bytes:
    """The last :data:`TAIL_BYTES` of ``tail + chunk``."""
    if len(chunk) >= TAIL_BYTES:
        return chunk[-TAIL_BYTES:]
    return (tail + chunk)[-TAIL_BYTES:]


def tokens(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of the last ``usage`` in ``tail``."""
    prompt = _PROMPT.findall(tail)
    completion = _COMPLETION.findall(tail)
    return (int(prompt[-1]) if prompt else None, int(completion[-1]) if completion else None)
