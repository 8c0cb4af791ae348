"""Serving the deterministic fallback over HTTP (the pure synthesizer is :mod:`fallback`).

The fallback answers when no permitted upstream is available, when none is
configured, or when a request carries ``X-Airgap-Mode: deterministic``. With
``fallback.mode: error`` it answers 503 ``no_healthy_upstream`` instead.

Answers are made off the event loop, on the fallback's own threads
(:data:`EXECUTOR`), each within ``fallback.max_cpu_ms`` of its thread's CPU
time and ``fallback.max_answer_bytes``: a costly request gets 400 and the
loop keeps serving everything else meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from airgap_proxy import fallback, usage
from airgap_proxy.audit import Action, Audit
from airgap_proxy.config import FallbackConfig, FallbackMode
from airgap_proxy.errors import NoHealthyUpstream
from airgap_proxy.fallback import limits
from airgap_proxy.headers import OVERHEAD_HEADER, REQUEST_ID_HEADER, UPSTREAM_HEADER
from airgap_proxy.payload import Payload
from airgap_proxy.state import AUDIT_KEY, Generation

DETERMINISTIC = "deterministic"
DEFAULT_FALLBACK_MODEL = "airgap-deterministic"
RETRY_AFTER_S = "5"
_ANSWERABLE = {("POST", "chat/completions"), ("POST", "completions"), ("POST", "embeddings"), ("GET", "models")}
# Threads that make answers. The GIL runs one at a time; two let a quick answer pass a costly one.
THREADS = 2
EXECUTOR = web.AppKey("fallback_executor", ThreadPoolExecutor)


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fallback's threads for the application's lifetime (a running answer ends within its budget)."""
    executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="fallback")
    app[EXECUTOR] = executor
    yield
    executor.shutdown(wait=False, cancel_futures=True)  # a running answer stops within its budget


def can_answer(tail: str, method: str) -> bool:
    return (method, tail) in _ANSWERABLE


def enabled_for(gen: Generation, tail: str, method: str) -> bool:
    """Would the fallback answer this request (mode ``deterministic``, known endpoint)?"""
    return gen.config.fallback.mode is FallbackMode.DETERMINISTIC and can_answer(tail, method)


def _unavailable(message: str) -> NoHealthyUpstream:
    return NoHealthyUpstream(message, headers={"Retry-After": RETRY_AFTER_S})


async def respond(
    request: web.Request, gen: Generation, tail: str, parsed: Payload, model: str | None, *, forced: bool
) -> web.StreamResponse:
    """Answer from the fallback, or raise 503 when it may not or cannot."""
    audit = request[AUDIT_KEY]
    if not forced and gen.config.fallback.mode is FallbackMode.ERROR:
        raise _unavailable("no healthy upstream is available and the fallback is disabled (fallback.mode: error)")
    if not can_answer(tail, request.method):
        raise _unavailable(f"no healthy upstream is available for /v1/{tail}")
    if tail == "models":
        response = models_response(gen, audit)
        audit.decision = Action.FALLBACK
        audit.upstream = DETERMINISTIC
        return response
    assert parsed.data is not None
    name = model or DEFAULT_FALLBACK_MODEL
    audit.decision = Action.FALLBACK
    audit.upstream = DETERMINISTIC
    audit.model = name
    make = _maker(tail, parsed, name, gen)
    events = await asyncio.get_running_loop().run_in_executor(
        request.app[EXECUTOR], _within_limits, make, gen.config.fallback
    )
    if parsed.stream and tail != "embeddings":
        return await _stream(request, events, audit)
    return _json(events[0], audit)


def _maker(tail: str, parsed: Payload, name: str, gen: Generation) -> Callable[[], list[bytes]]:
    """What makes the answer: its body, or its SSE events when it streams."""
    assert parsed.data is not None
    data, canned, caps = parsed.data, gen.canned, gen.config.fallback.limits
    if tail == "embeddings":
        return lambda: [fallback.embeddings(data, name, caps)]
    chat = tail == "chat/completions"
    if parsed.stream:
        stream = fallback.chat_completion_stream if chat else fallback.completion_stream
        return functools.partial(stream, data, name, canned, caps)
    body = fallback.chat_completion if chat else fallback.completion
    return lambda: [body(data, name, canned, caps)]


def _within_limits(make: Callable[[], list[bytes]], config: FallbackConfig) -> list[bytes]:
    """``make()`` on this thread, within its CPU budget and answer size (runs off the event loop)."""
    budget = limits.Budget(time.thread_time, config.max_cpu_ms)
    events = limits.within(budget, make)
    limits.check_answer_bytes(sum(map(len, events)), config.limits)
    return events


def _json(body: bytes, audit: Audit) -> web.Response:
    audit.status = 200
    audit.bytes_out = len(body)
    audit.prompt_tokens, audit.completion_tokens = usage.tokens(body[-usage.TAIL_BYTES :])
    return web.Response(
        body=body,
        content_type="application/json",
        headers={UPSTREAM_HEADER: DETERMINISTIC, REQUEST_ID_HEADER: audit.request_id},
    )


async def _stream(request: web.Request, events: list[bytes], audit: Audit) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            UPSTREAM_HEADER: DETERMINISTIC,
            REQUEST_ID_HEADER: audit.request_id,
            OVERHEAD_HEADER: audit.overhead(time.perf_counter()),
        }
    )
    audit.status = 200
    await response.prepare(request)
    for event in events:
        audit.bytes_out += len(event)
        await response.write(event)
    if len(events) > 1:
        audit.prompt_tokens, audit.completion_tokens = usage.tokens(events[-2][-usage.TAIL_BYTES :])
    await response.write_eof()
    return response


def model_ids(gen: Generation) -> list[str]:
    """Every model name the proxy can answer for: default, configured, discovered, aliases."""
    ids: list[str] = []

    def add(name: str | None) -> None:
        if name and "*" not in name and "?" not in name and "[" not in name and name not in ids:
            ids.append(name)

    add(gen.config.default_model)
    for runtime in gen.pool.runtimes.values():
        if not gen.pool.permitted(runtime.config.name):
            continue
        for name in runtime.config.models:
            add(name)
        for name in runtime.models:
            add(name)
        for alias, _target in runtime.config.aliases:
            add(alias)
    if not ids:
        add(DEFAULT_FALLBACK_MODEL)
    return ids


def models_response(gen: Generation, audit: Audit) -> web.Response:
    """``GET /v1/models``: the union of what the upstreams serve, in OpenAI's shape."""
    audit.decision = Action.NONE
    body = json.dumps(
        {
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "airgap-proxy"} for i in model_ids(gen)],
        },
        separators=(",", ":"),
    ).encode()
    audit.status = 200
    return web.Response(body=body, content_type="application/json", headers={REQUEST_ID_HEADER: audit.request_id})
