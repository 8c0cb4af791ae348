"""The OpenAI-compatible surface: every ``/v1/...`` request is routed and relayed.

For each request:

1. Read the body within ``limits.max_body_bytes`` (413 past it).
2. Parse what routing needs (model, stream); 400 for malformed core requests.
3. ``X-Airgap-Mode: deterministic`` answers from the fallback at once.
4. Route by model (404 if no upstream serves it) and plan the attempts:
   policy-permitted, available upstreams by priority and load.
5. Every candidate refused by the policy while air-gapped: 422, and no
   connection is opened. Report-only mode forwards and records ``would_block``.
6. Nothing available: the deterministic fallback (or 503 in ``error`` mode).
7. Send through the egress client (which re-checks every address at connect
   time). A connect failure or a 5xx before any byte reached the client is
   retried once on the next candidate; then the response is relayed chunk by
   chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from airgap_proxy import fallback_http, policy, routing
from airgap_proxy import payload as payload_mod
from airgap_proxy.audit import Action, Audit
from airgap_proxy.errors import (
    AirgapViolation,
    InvalidRequest,
    NoHealthyUpstream,
    ProxyError,
    RequestTooLarge,
    UpstreamError,
)
from airgap_proxy.headers import (
    REQUEST_ID_HEADER,
    UPSTREAM_HEADER,
    client_response_headers,
    upstream_request_headers,
)
from airgap_proxy.state import AUDIT_KEY, STATE, AppState
from airgap_proxy.upstreams import UpstreamRuntime

SSE_CONTENT_TYPE = "text/event-stream"
MODE_HEADER = "X-Airgap-Mode"
_FORBIDDEN_SEGMENTS = frozenset({"..", ".", "%2e%2e", "%2e", ".%2e", "%2e."})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing anything over ``limit`` bytes early."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def upstream_path(raw_path: str) -> str:
    """The path after ``/v1/``, refusing dot segments that could escape it."""
    tail = raw_path[len("/v1/") :] if raw_path.startswith("/v1/") else ""
    for segment in tail.split("/"):
        if segment.lower() in _FORBIDDEN_SEGMENTS:
            raise InvalidRequest("Path contains dot segments")
    return tail


def upstream_url(base: str, tail: str, query: str) -> str:
    url = f"{base.rstrip('/')}/{tail}"
    return f"{url}?{query}" if query else url


async def proxy_v1(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    audit = request[AUDIT_KEY]
    config = state.config
    tail = upstream_path(request.rel_url.raw_path)
    body = await read_body(request, config.limits.max_body_bytes)
    parsed = payload_mod.parse_payload(tail, request.method, body, request.content_type)
    audit.stream = parsed.stream
    model = routing.requested_model(parsed.model, config.default_model)
    audit.model = model
    if request.headers.get(MODE_HEADER, "").lower() == "deterministic":
        return await fallback_http.respond(request, state, tail, parsed, model, forced=True)
    if tail == "models" and request.method == "GET":
        return fallback_http.models_response(state, audit)
    if not config.upstreams:
        return await fallback_http.respond(request, state, tail, parsed, model, forced=False)
    candidates = routing.route(config.upstreams, model)
    permitted = [c for c in candidates if state.pool.permitted(c.upstream.name)]
    if not permitted:
        _refuse(state, candidates[0].upstream.name, audit)
    attempts = routing.plan(permitted, state.pool.view)
    hints = payload_mod.hints_in(parsed)
    audit.stripped = hints
    if not attempts:
        audit.upstream = permitted[0].upstream.name
        return await fallback_http.respond(request, state, tail, parsed, model, forced=False)
    for number, candidate in enumerate(attempts, start=1):
        last = number == len(attempts)
        runtime = state.pool.runtimes[candidate.upstream.name]
        _record_policy(state, runtime, audit)
        send_body = body
        new_model = candidate.model if candidate.model != parsed.model else None
        if parsed.data is not None and (new_model is not None or hints):
            send_body = payload_mod.rewritten(parsed, new_model)
        runtime.in_flight += 1
        try:
            try:
                response = await _send(request, state, runtime, tail=tail, body=send_body, audit=audit)
            except UpstreamError as exc:
                state.pool.observe(runtime.config.name, False, exc.message)
                if last:
                    if fallback_http.enabled_for(state, tail, request.method):
                        return await fallback_http.respond(request, state, tail, parsed, model, forced=False)
                    raise
                continue
            try:
                if response.status >= 500 and not last:
                    state.pool.observe(runtime.config.name, False, f"HTTP {response.status}")
                    continue
                state.pool.observe(runtime.config.name, response.status < 500, f"HTTP {response.status}")
                return await _relay(request, state, response, audit)
            finally:
                response.release()
        finally:
            runtime.in_flight -= 1
    raise NoHealthyUpstream("no upstream could be reached")  # pragma: no cover - the loop always returns


def _refuse(state: AppState, name: str, audit: Audit) -> None:
    decision = state.pool.runtimes[name].decision
    assert decision is not None
    audit.upstream = name
    audit.verdict = decision.verdict.value
    audit.reason = decision.reason
    audit.rule = decision.rule.value
    raise AirgapViolation(decision.reason)


def _record_policy(state: AppState, runtime: UpstreamRuntime, audit: Audit) -> None:
    audit.upstream = runtime.config.name
    decision = runtime.decision
    if decision is None:
        audit.decision = Action.FORWARD
        audit.verdict = policy.Verdict.LOCAL.value
        audit.reason = "addresses checked at connect time"
        audit.rule = None
        return
    audit.verdict = decision.verdict.value
    audit.reason = decision.reason
    audit.rule = decision.rule.value
    audit.decision = Action.FORWARD if decision.is_local else Action.WOULD_BLOCK


async def _send(
    request: web.Request, state: AppState, runtime: UpstreamRuntime, *, tail: str, body: bytes, audit: Audit
) -> aiohttp.ClientResponse:
    upstream = runtime.config
    assert upstream.target is not None  # invalid targets are never permitted
    url = upstream_url(upstream.target.url, tail, request.rel_url.raw_query_string)
    headers = upstream_request_headers(request.headers, upstream.api_key, audit.request_id)
    try:
        return await state.egress.request(request.method, url, headers=headers, body=body or None)
    except AirgapViolation as exc:
        audit.verdict = policy.Verdict.EXTERNAL.value
        audit.reason = exc.message
        raise


async def _relay(
    request: web.Request, state: AppState, upstream: aiohttp.ClientResponse, audit: Audit
) -> web.StreamResponse:
    if 300 <= upstream.status < 400 and upstream.status != 304:
        # Never followed, and never handed to the client to follow either.
        raise UpstreamError(f"upstream answered with a redirect ({upstream.status}), which is never followed")
    headers = client_response_headers(upstream.headers)
    headers[REQUEST_ID_HEADER] = audit.request_id
    headers[UPSTREAM_HEADER] = audit.upstream or ""
    is_sse = upstream.content_type == SSE_CONTENT_TYPE
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if is_sse:
        response.headers["X-Accel-Buffering"] = "no"
        response.headers.setdefault("Cache-Control", "no-cache")
    elif upstream.content_length is not None and "Content-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    audit.status = upstream.status
    await response.prepare(request)
    try:
        async for chunk in state.egress.iter_chunks(upstream):
            audit.bytes_out += len(chunk)
            await response.write(chunk)
    except ProxyError as exc:
        # Bytes were sent: the status cannot change any more. End cleanly.
        audit.error_code = exc.code
        audit.error = exc.message
        if is_sse:
            await response.write(sse_error(exc))
            await response.write_eof()
        elif request.transport is not None:
            # The body is cut short: close the connection so the client sees it.
            request.transport.close()
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        audit.status = 499
        audit.error = "client disconnected"
        raise
    await response.write_eof()
    return response


def sse_error(error: ProxyError) -> bytes:
    return b"data: " + json.dumps(error.envelope(), separators=(",", ":")).encode() + b"\n\n"
