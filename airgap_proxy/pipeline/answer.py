"""Answering from the deterministic fallback, in the request's own surface.

Answers are made off the event loop, on the fallback's own threads
(:data:`EXECUTOR`), each within ``fallback.max_cpu_ms`` of its thread's CPU
time and ``fallback.max_answer_bytes``: a costly request gets 400 and the
loop keeps serving everything else meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from airgap_proxy import usage
from airgap_proxy.audit import Action
from airgap_proxy.config import FallbackConfig
from airgap_proxy.fallback import limits
from airgap_proxy.headers import OVERHEAD_HEADER, REQUEST_ID_HEADER, UPSTREAM_HEADER
from airgap_proxy.pipeline.exchange import Exchange
from airgap_proxy.state import Generation
from airgap_proxy.surfaces import JSON, FallbackInputs, Maker

DETERMINISTIC = "deterministic"
DEFAULT_FALLBACK_MODEL = "airgap-deterministic"
# Threads that make answers. The GIL runs one at a time; two let a quick answer pass a costly one.
THREADS = 2
EXECUTOR = web.AppKey("fallback_executor", ThreadPoolExecutor)


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fallback's threads for the application's lifetime (a running answer ends within its budget)."""
    executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="fallback")
    app[EXECUTOR] = executor
    yield
    executor.shutdown(wait=False, cancel_futures=True)  # a running answer stops within its budget


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


def local(ex: Exchange) -> web.Response:
    """What the surface answers itself (a model list), without any upstream."""
    body = ex.surface.local_answer(ex.endpoint, ex.request.method, model_ids(ex.gen))
    ex.audit.status = 200
    return web.Response(body=body, content_type=JSON, headers={REQUEST_ID_HEADER: ex.audit.request_id})


async def respond(ex: Exchange, cause: str | None) -> web.StreamResponse:
    """The fallback's answer to this request; ``cause`` (why it answers) goes to the audit."""
    audit = ex.audit
    audit.decision = Action.FALLBACK
    audit.upstream = DETERMINISTIC
    if cause is not None:
        audit.error = cause
    if ex.surface.answers_locally(ex.endpoint, ex.request.method):
        return local(ex)
    name = ex.model or DEFAULT_FALLBACK_MODEL
    audit.model = name
    config = ex.gen.config.fallback
    make = ex.surface.fallback(
        ex.endpoint, ex.payload, name, FallbackInputs(ex.gen.canned, config.limits, tuple(model_ids(ex.gen)))
    )
    events = await asyncio.get_running_loop().run_in_executor(ex.request.app[EXECUTOR], _within_limits, make, config)
    if ex.surface.streams(ex.endpoint, ex.payload):
        return await _stream(ex, events)
    return _whole(ex, events[0])


def _within_limits(make: Maker, config: FallbackConfig) -> list[bytes]:
    """``make()`` on this thread, within its CPU budget and answer size (runs off the event loop)."""
    budget = limits.Budget(time.thread_time, config.max_cpu_ms)
    events = limits.within(budget, make)
    limits.check_answer_bytes(sum(map(len, events)), config.limits)
    return events


def _whole(ex: Exchange, body: bytes) -> web.Response:
    audit = ex.audit
    audit.status = 200
    audit.bytes_out = len(body)
    audit.prompt_tokens, audit.completion_tokens = ex.surface.tokens(body[-usage.TAIL_BYTES :])
    return web.Response(
        body=body,
        content_type=JSON,
        headers={UPSTREAM_HEADER: DETERMINISTIC, REQUEST_ID_HEADER: audit.request_id},
    )


async def _stream(ex: Exchange, events: list[bytes]) -> web.StreamResponse:
    audit = ex.audit
    response = web.StreamResponse(
        headers={
            "Content-Type": ex.surface.stream_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            UPSTREAM_HEADER: DETERMINISTIC,
            REQUEST_ID_HEADER: audit.request_id,
            OVERHEAD_HEADER: audit.overhead(time.perf_counter()),
        }
    )
    audit.status = 200
    await response.prepare(ex.request)
    for event in events:
        audit.bytes_out += len(event)
        await response.write(event)
    if len(events) > 1:
        audit.prompt_tokens, audit.completion_tokens = ex.surface.tokens(b"".join(events[-2:])[-usage.TAIL_BYTES :])
    await response.write_eof()
    return response
