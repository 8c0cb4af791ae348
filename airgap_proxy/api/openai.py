"""The OpenAI-compatible surface: every ``/v1/...`` request is routed and relayed.

For each request:

1. Read the body within ``limits.max_body_bytes`` (413 past it).
2. Parse what routing needs (model, stream); 400 for malformed core requests.
3. Route by model; take the first candidate.
4. Apply the policy verdict computed at load. External or invalid while
   air-gapped: 422, and no connection is opened. Report-only: forward and
   record ``would_block``.
5. Send through the egress client (which re-checks every address at connect
   time) and relay the response chunk by chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from airgap_proxy import payload as payload_mod
from airgap_proxy import policy, routing
from airgap_proxy.audit import Action, Audit
from airgap_proxy.errors import AirgapViolation, InvalidRequest, ProxyError, RequestTooLarge, UpstreamError
from airgap_proxy.headers import (
    REQUEST_ID_HEADER,
    UPSTREAM_HEADER,
    client_response_headers,
    upstream_request_headers,
)
from airgap_proxy.logs import get_logger
from airgap_proxy.state import AUDIT_KEY, STATE, AppState

_log = get_logger("airgap_proxy.proxy")
SSE_CONTENT_TYPE = "text/event-stream"
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
    candidates = routing.route(config.upstreams, model)
    candidate = candidates[0]
    upstream = candidate.upstream
    audit.upstream = upstream.name
    if candidate.model is not None and candidate.model != parsed.model and parsed.data is not None:
        body = payload_mod.with_model(parsed, candidate.model)
    await _apply_policy(state, upstream.name, audit)
    assert upstream.target is not None  # invalid targets were refused by _apply_policy
    url = upstream_url(upstream.target.url, tail, request.rel_url.raw_query_string)
    headers = upstream_request_headers(request.headers, upstream.api_key, audit.request_id)
    try:
        response = await state.egress.request(request.method, url, headers=headers, body=body or None)
    except AirgapViolation as exc:
        audit.verdict = policy.Verdict.EXTERNAL.value
        audit.reason = exc.message
        raise
    try:
        return await _relay(request, state, response, audit)
    finally:
        response.release()


async def _apply_policy(state: AppState, name: str, audit: Audit) -> None:
    decision = state.decisions.get(name)
    if decision is None:
        audit.decision = Action.FORWARD
        audit.verdict = policy.Verdict.LOCAL.value
        audit.reason = "addresses checked at connect time"
        return
    audit.verdict = decision.verdict.value
    audit.reason = decision.reason
    audit.rule = decision.rule.value
    if decision.is_local:
        audit.decision = Action.FORWARD
        return
    if state.config.airgapped or decision.verdict is policy.Verdict.INVALID:
        # An invalid URL cannot be forwarded safely even in report-only mode.
        raise AirgapViolation(decision.reason)
    audit.decision = Action.WOULD_BLOCK


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
        audit.error_code = exc.code
        audit.error = exc.message
        if is_sse:
            await response.write(_sse_error(exc))
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


def _sse_error(error: ProxyError) -> bytes:
    return b"data: " + json.dumps(error.envelope(), separators=(",", ":")).encode() + b"\n\n"
