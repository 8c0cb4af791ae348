"""The OpenAI-compatible surface: every ``/v1/...`` request is routed and relayed.

For each request:

1. Identify the tenant: with ``clients`` configured the client's bearer key
   decides (401 missing or unknown key, 403 an ``X-Tenant-ID`` of another
   tenant); otherwise ``X-Tenant-ID`` does.
2. Read the body within ``limits.max_body_bytes`` (413 past it).
3. Parse what routing needs (model, stream); 400 for malformed core requests.
4. ``X-Airgap-Mode: deterministic`` answers from the fallback at once.
5. A tenant with its own provider goes there, and only there (see
   :func:`proxy_tenant`); an unknown tenant continues with the default upstreams.
6. Route by model (404 if no upstream serves it) and plan the attempts:
   policy-permitted, available upstreams by priority and load.
7. Every candidate refused by the policy while air-gapped: 422, and no
   connection is opened. Report-only mode forwards and records ``would_block``.
8. Nothing available: the deterministic fallback (or 503 in ``error`` mode).
9. Send through the egress client (which re-checks every address at connect
   time). A connect failure or a 5xx before any byte reached the client is
   retried once on the next candidate; then the response is relayed chunk by
   chunk as it arrives.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from airgap_proxy import crypto, fallback_http, policy, routing, tenants, usage
from airgap_proxy import payload as payload_mod
from airgap_proxy.audit import Action, Audit
from airgap_proxy.config import UpstreamConfig
from airgap_proxy.errors import (
    AirgapViolation,
    InternalError,
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
from airgap_proxy.logs import get_logger
from airgap_proxy.state import AUDIT_KEY, STATE, AppState
from airgap_proxy.tenants import TENANT_HEADER, StoredProvider
from airgap_proxy.upstreams import UpstreamRuntime

SSE_CONTENT_TYPE = "text/event-stream"
MODE_HEADER = "X-Airgap-Mode"
_FORBIDDEN_SEGMENTS = frozenset({"..", ".", "%2e%2e", "%2e", ".%2e", "%2e."})
_log = get_logger("airgap_proxy.tenants")


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
    identity = tenants.identify(
        request.headers.get("Authorization"), request.headers.get(TENANT_HEADER), config.clients
    )
    audit.tenant = identity.tenant
    tail = upstream_path(request.rel_url.raw_path)
    body = await read_body(request, config.limits.max_body_bytes)
    parsed = payload_mod.parse_payload(tail, request.method, body, request.content_type)
    audit.stream = parsed.stream
    model = routing.requested_model(parsed.model, config.default_model)
    audit.model = model
    if request.headers.get(MODE_HEADER, "").lower() == "deterministic":
        return await fallback_http.respond(request, state, tail, parsed, model, forced=True)
    provider = await state.tenant_provider(identity.tenant)
    if provider is not None:
        return await proxy_tenant(request, state, provider, tail=tail, body=body, parsed=parsed)
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
                response = await _send(request, state, runtime.config, tail=tail, body=send_body, audit=audit)
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


async def proxy_tenant(
    request: web.Request,
    state: AppState,
    provider: StoredProvider,
    *,
    tail: str,
    body: bytes,
    parsed: payload_mod.Payload,
) -> web.StreamResponse:
    """Relay to the tenant's own provider with the tenant's own key, and nowhere else.

    1. The provider's verdict now (:func:`tenants.request_time_decision`):
       ``invalid`` is 422; ``external`` is 422 while air-gapped, forwarded and
       recorded as ``would_block`` in report-only mode.
    2. The tenant's model replaces ``default`` or a missing model.
    3. One attempt, no retry elsewhere: a provider that cannot be reached is
       502/504, never the operator's upstreams or keys, and not the
       deterministic fallback either (it would hide the tenant's outage;
       ``X-Airgap-Mode: deterministic`` still asks for it explicitly).
    """
    audit = request[AUDIT_KEY]
    decision = tenants.request_time_decision(provider, state.config.rules)
    audit.upstream = tenants.upstream_name(provider.tenant)
    audit.verdict, audit.reason, audit.rule = decision.verdict.value, decision.reason, decision.rule.value
    if not decision.is_local:
        if state.config.airgapped or decision.verdict is policy.Verdict.INVALID:
            raise AirgapViolation(decision.reason)
        audit.decision = Action.WOULD_BLOCK
    else:
        audit.decision = Action.FORWARD
    try:
        api_key = tenants.open_api_key(provider, state.keyring)
    except crypto.SealError as exc:
        _log.error("tenant_key_unavailable", tenant=provider.tenant, reason=str(exc))
        raise InternalError(f"The API key of tenant {provider.tenant!r} cannot be decrypted: {exc}") from None
    model = routing.requested_model(parsed.model, provider.model)
    audit.model = model
    send_body = body
    hints = payload_mod.hints_in(parsed)
    audit.stripped = hints
    new_model = model if model != parsed.model else None
    if parsed.data is not None and (new_model is not None or hints):
        send_body = payload_mod.rewritten(parsed, new_model)
    response = await _send(request, state, provider.upstream(api_key), tail=tail, body=send_body, audit=audit)
    try:
        return await _relay(request, state, response, audit)
    finally:
        response.release()


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
    request: web.Request, state: AppState, upstream: UpstreamConfig, *, tail: str, body: bytes, audit: Audit
) -> aiohttp.ClientResponse:
    assert upstream.target is not None  # invalid targets are never permitted
    url = upstream_url(upstream.target.url, tail, request.rel_url.raw_query_string)
    headers = upstream_request_headers(request.headers, upstream.api_key, audit.request_id)
    # Which tenant a request is for is the proxy's business, not the upstream's.
    headers.popall(TENANT_HEADER, None)
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
    tail = b""
    try:
        async for chunk in state.egress.iter_chunks(upstream):
            audit.bytes_out += len(chunk)
            tail = usage.keep_tail(tail, chunk)
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
    audit.prompt_tokens, audit.completion_tokens = usage.tokens(tail)
    return response


def sse_error(error: ProxyError) -> bytes:
    return b"data: " + json.dumps(error.envelope(), separators=(",", ":")).encode() + b"\n\n"
