"""Deterministic legacy ``/v1/completions`` bodies and SSE streams (pure).

``prompt`` may be a string, a list of strings, a list of token ids or a list
of such lists; each prompt gets ``n`` choices, numbered prompt-major as the
OpenAI API does. The text is the canned reply matching the model and the
prompt, or neutral sentences, then ``stop`` and ``max_tokens`` (default 16,
the API's default for this endpoint). ``echo`` prepends the prompt (token
prompts echo nothing: there is no tokenizer here). The text of a prompt's
choices depends on the prompt, the model and the choice number only. ``suffix``, ``best_of``
and ``logprobs`` are accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import request, text, wire
from airgap_proxy.fallback.canned import Canned
from airgap_proxy.fallback.limits import DEFAULT_LIMITS, Limits, spend
from airgap_proxy.fallback.seed import Seed, request_seed

DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class _Prompt:
    text: str | None  # None for token prompts
    tokens: int
    key: bytes  # what seeds this prompt's texts


@dataclass(frozen=True, slots=True)
class _Choice:
    index: int
    text: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class _Answer:
    head: dict[str, Any]
    choices: tuple[_Choice, ...]
    usage: dict[str, int]
    include_usage: bool


def completion(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``text_completion`` JSON body for ``data``, as bytes."""
    answer = _answer(data, model, canned, caps)
    choices = [
        {"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish_reason} for c in answer.choices
    ]
    return wire.encode({**answer.head, "choices": choices, "usage": answer.usage})


def completion_stream(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """The ``text_completion`` SSE events for ``data``, ending with ``[DONE]``."""
    answer = _answer(data, model, canned, caps)

    def chunk(index: int, piece: str, finish_reason: str | None) -> bytes:
        choice = {"text": piece, "index": index, "logprobs": None, "finish_reason": finish_reason}
        body: dict[str, Any] = {**answer.head, "choices": [choice]}
        if answer.include_usage:
            body["usage"] = None
        return wire.event(body)

    events: list[bytes] = []
    for c in answer.choices:
        events.extend(chunk(c.index, piece, None) for piece in text.word_pieces(c.text))
        events.append(chunk(c.index, "", c.finish_reason))
    if answer.include_usage:
        events.append(wire.event({**answer.head, "choices": [], "usage": answer.usage}))
    events.append(wire.DONE_EVENT)
    return events


def _answer(data: dict[str, Any], model: str, canned: Canned, caps: Limits) -> _Answer:
    prompts = _read_prompts(data)
    n = request.read_n(data, caps)
    max_tokens = request.read_max_tokens(data, DEFAULT_MAX_TOKENS)
    stop = request.read_stop(data)
    echo = request.read_bool(data, "echo")
    include_usage = request.read_include_usage(data)
    seed = request_seed(data, model)
    choices = []
    completion_tokens = 0
    model_key = model.encode("utf-8", "surrogatepass")
    for p, prompt in enumerate(prompts):
        reply = canned.reply_for(model, prompt.text)
        content_seed = Seed.of(b"completion", prompt.key, model_key)
        for j in range(n):
            spend()
            index = p * n + j
            generated = reply if reply is not None else text.neutral_text(content_seed.child(f"choice{j}"))
            shaped = text.shape(generated, stop, max_tokens)
            completion_tokens += text.count_tokens(shaped.text)
            body = (prompt.text or "") + shaped.text if echo else shaped.text
            choices.append(_Choice(index, body, shaped.finish_reason))
    prompt_tokens = sum(p.tokens for p in prompts)
    head = {
        "id": "cmpl-" + seed.hex_id(),
        "object": "text_completion",
        "created": seed.created(),
        "model": model,
        "system_fingerprint": wire.SYSTEM_FINGERPRINT,
    }
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return _Answer(head, tuple(choices), usage, include_usage)


def _read_prompts(data: dict[str, Any]) -> list[_Prompt]:
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        return [_text_prompt(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [_text_prompt(p) for p in prompt]
        if all(request.is_int(t) for t in prompt):
            return [_token_prompt(prompt)]
        if all(isinstance(p, list) and p and all(request.is_int(t) for t in p) for p in prompt):
            return [_token_prompt(p) for p in prompt]
    raise InvalidRequest(
        "Invalid value for 'prompt': expected a string, an array of strings, an array of token ids "
        "or an array of arrays of token ids",
        param="prompt",
    )


def _text_prompt(prompt: str) -> _Prompt:
    return _Prompt(prompt, text.count_tokens(prompt), b"s" + prompt.encode("utf-8", "surrogatepass"))


def _token_prompt(tokens: list[int]) -> _Prompt:
    return _Prompt(None, len(tokens), b"t" + ",".join(map(str, tokens)).encode("ascii"))
