"""Token counts for the audit event, read from the end of a response (pure).

Bodies carry their usage last (in the final SSE chunk for
streams), so the relay keeps only the last :data:`TAIL_BYTES` bytes it passed
on and this module reads the counts from them, without parsing the body.
"""

from __future__ import annotations

import re

TAIL_BYTES = 2048
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,12})')
# Anthropic Messages and OpenAI Responses name them so.
_INPUT = re.compile(rb'"input_tokens"\s*:\s*(\d{1,12})')
_OUTPUT = re.compile(rb'"output_tokens"\s*:\s*(\d{1,12})')
# Ollama's native API counts evaluated tokens.
_PROMPT_EVAL = re.compile(rb'"prompt_eval_count"\s*:\s*(\d{1,12})')
_EVAL = re.compile(rb'"eval_count"\s*:\s*(\d{1,12})')


def keep_tail(tail: bytes, chunk: bytes) -> bytes:
    """The last :data:`TAIL_BYTES` of ``tail + chunk``."""
    if len(chunk) >= TAIL_BYTES:
        return chunk[-TAIL_BYTES:]
    return (tail + chunk)[-TAIL_BYTES:]


def tokens(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of the last ``usage`` in ``tail``."""
    return _last(_PROMPT, tail), _last(_COMPLETION, tail)


def io_tokens(tail: bytes) -> tuple[int | None, int | None]:
    """(input_tokens, output_tokens) of the last usage in ``tail`` (Anthropic, Responses)."""
    return _last(_INPUT, tail), _last(_OUTPUT, tail)


def _last(pattern: re.Pattern[bytes], tail: bytes) -> int | None:
    found = pattern.findall(tail)
    return int(found[-1]) if found else None


def eval_counts(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt_eval_count, eval_count) of the last answer in ``tail`` (Ollama)."""
    return _last(_PROMPT_EVAL, tail), _last(_EVAL, tail)
