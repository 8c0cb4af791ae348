"""The OpenAI-compatible surface: every ``/v1/...`` request is routed and relayed.

For each request:

1. Identify the tenant: with ``clients`` configured the client's bearer key
   decides (401 missing or unknown key, 403 an ``X-Tenant-ID`` of another
   tenant); otherwise ``X-Tenant-ID`` does.
2. Read the body within ``limits.max_body_bytes`` (413 past it) and
   ``timeouts.client_body_s`` (408 past it).
3. Parse what routing needs (model, stream); 400 for malformed core requests.
4. ``X-Airgap-Mode: deterministic`` answers from the fallback at once.
5. A tenant with its own provider goes there, and only there (see
   :func:`proxy_tenant`); an unknown tenant continues with the default upstreams.
6. Route by model (404 if no upstream serves it) and plan the attempts:
   policy-permitted, available upstreams by priority and load. Upstreams at
   their ``max_in_flight`` are passed over; when that leaves none, 503
   ``overloaded`` with ``Retry-After`` (busy is not down: no fallback).
7. Every candidate refused by the policy while air-gapped: 422, and no
   connection is opened. Report-only mode forwards and records ``would_block``.
8. Nothing available: the deterministic fallback (or 503 in ``error`` mode).
9. Send through the egress client (which re-checks every address at connect
   time). A connect failure (a connect timeout included: nothing was sent)
   or a 5xx before any byte reached the client is
   retried once on the next candidate; then the response is relayed chunk by
   chunk as it arrives.

The request uses the configuration generation pinned by the middleware from
start to end, whatever reload happens meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

from airgap_proxy import crypto, fallback_http, policy, tenants, usage
from airgap_proxy import payload as payload_mod
from airgap_proxy.audit import Action, Audit
from airgap_proxy.config import UpstreamConfig
from airgap_proxy.egress.http1 import UpstreamResponse
from airgap_proxy.errors import (
    AirgapViolation,
    InternalError,
    InvalidRequest,
    NoHealthyUpstream,
    Overloaded,
    ProxyError,
    RequestTimeout,
    RequestTooLarge,
    UndecodableBody,
    UpstreamError,
)
from airgap_proxy.headers import (
    OVERHEAD_HEADER,
    REQUEST_ID_HEADER,
    UPSTREAM_HEADER,
    client_response_headers,
    upstream_request_headers,
)
from airgap_proxy.logs import get_logger
from airgap_proxy.metrics import METRICS
from airgap_proxy.state import AUDIT_KEY, GENERATION_KEY, STATE, Generation
from airgap_proxy.tenants import TENANT_HEADER, StoredProvider
from airgap_proxy.upstreams import UpstreamRuntime, routing

SSE_CONTENT_TYPE = "text/event-stream"
MODE_HEADER = "X-Airgap-Mode"
UNHEALTHY_STATUSES = frozenset({502, 503, 504})
_FORBIDDEN_SEGMENTS = frozenset({"..", ".", "%2e%2e", "%2e", ".%2e", "%2e."})
OVERLOAD_RETRY_AFTER_S = "1"
_log = get_logger("airgap_proxy.tenants")
_SENT_AT = web.RequestKey("upstream_sent_at", float)


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing anything over ``limit`` bytes early, or not complete within ``timeout_s``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
    content = request.content
    if content.is_eof():
        # The whole body came with the head (the usual case): no wait, no timer.
        body = content.read_nowait()
        if len(body) > limit:
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
        return body
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} seconds") from None
    except (RequestPayloadError, aiohttp.http_exceptions.HttpProcessingError):
        # e.g. a body labelled gzip that does not decompress
        raise UndecodableBody("The request body could not be decoded (Content-Encoding)") from None
    return b"".join(chunks)


def upstream_path(raw_path: str) -> str:
    """The path after ``/v1/``, refusing dot segments that could escape it."""
    tail = raw_path[len("/v1/") :] if raw_path.startswith("/v1/") else ""
    if "." not in tail and "%" not in tail:
        return tail  # no dot segment can hide in it
    for segment in tail.split("/"):
        if segment.lower() in _FORBIDDEN_SEGMENTS:
            raise InvalidRequest("Path contains dot segments")
    return tail


def upstream_url(base: str, tail: str, query: str) -> str:
    url = f"{base.rstrip('/')}/{tail}"
    return f"{url}?{query}" if query else url


async def proxy_v1(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    gen = request[GENERATION_KEY]
    audit = request[AUDIT_KEY]
    config = gen.config
    identity = tenants.identify(
        request.headers.get("Authorization"), request.headers.get(TENANT_HEADER), config.clients
    )
    audit.tenant = identity.tenant
    tail = upstream_path(request.rel_url.raw_path)
    waiting = time.perf_counter()
    body = await read_body(request, config.limits.max_body_bytes, config.timeouts.client_body_s)
    audit.waited_s += time.perf_counter() - waiting
    parsed = payload_mod.parse_payload(tail, request.method, body)
    if parsed.data is None and body:
        payload_mod.refuse_form_hints(body, request.headers.get("Content-Type", ""))
    audit.stream = parsed.stream
    model = routing.requested_model(parsed.model, config.default_model)
    audit.model = model
    if request.headers.get(MODE_HEADER, "").lower() == "deterministic":
        return await fallback_http.respond(request, gen, tail, parsed, model, forced=True)
    provider = await state.tenant_provider(identity.tenant)
    if provider is not None:
        return await proxy_tenant(request, gen, provider, tail=tail, body=body, parsed=parsed)
    if tail == "models" and request.method == "GET":
        return fallback_http.models_response(gen, audit)
    if not config.upstreams:
        return await fallback_http.respond(request, gen, tail, parsed, model, forced=False)
    pool = gen.pool
    candidates, permitted = pool.route(model)
    if not permitted:
        _refuse(gen, candidates[0].upstream.name, audit)
    attempts = routing.plan([c for c in permitted if not pool.full(c.upstream.name)], pool.view)
    if not attempts:
        audit.upstream = permitted[0].upstream.name
        if routing.plan(permitted, pool.view):  # available, but each one at its max_in_flight
            raise _busy(permitted[0].upstream)
        audit.error = _unavailable_cause(gen, permitted)
        return await fallback_http.respond(request, gen, tail, parsed, model, forced=False)
    audit.stripped = payload_mod.hints_in(parsed)
    for number, candidate in enumerate(attempts, start=1):
        last = number == len(attempts)
        runtime = pool.runtimes[candidate.upstream.name]
        if pool.full(runtime.config.name):
            # Filled up while an earlier attempt was failing.
            if last:
                raise _busy(runtime.config)
            continue
        _record_policy(runtime, audit)
        send_body = payload_mod.body_to_send(tail, parsed, body, candidate.model)
        runtime.in_flight += 1
        try:
            try:
                response = await _send(request, gen, runtime.config, tail=tail, body=send_body, audit=audit)
            except AirgapViolation as exc:
                if exc.decision is not None:
                    pool.record_refusal(runtime.config.name, exc.decision)
                raise
            except UpstreamError as exc:
                if not exc.retriable:
                    raise
                # It failed before answering: the next one (or the fallback) may answer.
                pool.observe(runtime.config.name, False, exc.message)
                if last:
                    if fallback_http.enabled_for(gen, tail, request.method):
                        # The fallback answers; the audit event says what it answered for.
                        audit.error = f"upstream {runtime.config.name} failed: {exc.message}"
                        return await fallback_http.respond(request, gen, tail, parsed, model, forced=False)
                    raise
                continue
            try:
                # Only gateway-type failures count against health: a 500 is often
                # the server's answer to one bad request (llama.cpp does that).
                pool.observe(runtime.config.name, response.status not in UNHEALTHY_STATUSES, f"HTTP {response.status}")
                if not last and (response.status >= 500 or _is_redirect(response.status)):
                    continue  # a redirect is never followed: the next candidate may answer
                return await _relay(request, gen, response, audit)
            finally:
                response.release()
        finally:
            runtime.in_flight -= 1
    raise NoHealthyUpstream("no upstream could be reached")  # pragma: no cover - the loop always returns


def _busy(upstream: UpstreamConfig) -> Overloaded:
    return Overloaded(
        f"Upstream {upstream.name!r} is handling {upstream.max_in_flight} requests (its max_in_flight); retry shortly",
        headers={"Retry-After": OVERLOAD_RETRY_AFTER_S},
    )


async def proxy_tenant(
    request: web.Request,
    gen: Generation,
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
    decision = tenants.request_time_decision(provider, gen.config.rules)
    audit.upstream = tenants.upstream_name(provider.tenant)
    audit.verdict, audit.reason, audit.rule = decision.verdict.value, decision.reason, decision.rule.value
    if not decision.is_local:
        if gen.config.airgapped or decision.verdict is policy.Verdict.INVALID:
            raise AirgapViolation(decision.reason)
        audit.decision = Action.WOULD_BLOCK
    else:
        audit.decision = Action.FORWARD
    try:
        api_key = tenants.open_api_key(provider, gen.keyring)
    except crypto.SealError as exc:
        _log.error("tenant_key_unavailable", tenant=provider.tenant, reason=str(exc))
        raise InternalError(f"The API key of tenant {provider.tenant!r} cannot be decrypted: {exc}") from None
    model = routing.requested_model(parsed.model, provider.model)
    audit.model = model
    audit.stripped = payload_mod.hints_in(parsed)
    send_body = payload_mod.body_to_send(tail, parsed, body, model)
    response = await _send(request, gen, provider.upstream(api_key), tail=tail, body=send_body, audit=audit)
    try:
        return await _relay(request, gen, response, audit)
    finally:
        response.release()


def _unavailable_cause(gen: Generation, permitted: list[routing.Candidate]) -> str:
    """Why no permitted upstream is available: each one's last health failure."""
    causes = []
    for candidate in permitted:
        health = gen.pool.runtimes[candidate.upstream.name].health
        causes.append(f"{candidate.upstream.name}: {health.last_error or health.status.value}")
    return "no upstream available (" + "; ".join(causes) + ")"


def _refuse(gen: Generation, name: str, audit: Audit) -> None:
    decision = gen.pool.runtimes[name].verdict
    assert decision is not None
    audit.upstream = name
    audit.verdict = decision.verdict.value
    audit.reason = decision.reason
    audit.rule = decision.rule.value
    raise AirgapViolation(decision.reason)


def _record_policy(runtime: UpstreamRuntime, audit: Audit) -> None:
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
    request: web.Request, gen: Generation, upstream: UpstreamConfig, *, tail: str, body: bytes, audit: Audit
) -> UpstreamResponse:
    assert upstream.target is not None  # invalid targets are never permitted
    url = upstream_url(upstream.target.url, tail, request.rel_url.raw_query_string)
    headers = upstream_request_headers(request.headers, upstream.api_key, audit.request_id)
    sent_at = request[_SENT_AT] = time.perf_counter()
    try:
        response = await gen.egress.request(request.method, url, headers=headers, body=body or None)
    except AirgapViolation as exc:
        refused = exc.decision
        audit.verdict = refused.verdict.value if refused else policy.Verdict.EXTERNAL.value
        audit.reason = exc.message
        audit.rule = refused.rule.value if refused else None
        raise
    finally:
        audit.waited_s += time.perf_counter() - sent_at
    _record_connect_decision(response.decision, audit)
    return response


def _record_connect_decision(decision: policy.Decision | None, audit: Audit) -> None:
    """Audit what the policy said when this response's connection was opened.

    Names are judged at connect time: the load-time record only says so, and
    in report-only mode a name resolving outside is a ``would_block`` on every
    request over that connection, not only the one that opened it.
    """
    if decision is None or (decision.is_local and audit.rule is not None):
        return
    audit.verdict = decision.verdict.value
    audit.reason = decision.reason
    audit.rule = decision.rule.value
    if not decision.is_local:
        audit.decision = Action.WOULD_BLOCK


def _is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304


async def _relay(request: web.Request, gen: Generation, upstream: UpstreamResponse, audit: Audit) -> web.StreamResponse:
    if _is_redirect(upstream.status):
        # Never followed, and never handed to the client to follow either.
        raise UpstreamError(f"upstream answered with a redirect ({upstream.status}), which is never followed")
    headers = client_response_headers(upstream.headers)
    headers[REQUEST_ID_HEADER] = audit.request_id
    headers[UPSTREAM_HEADER] = audit.upstream or ""
    audit.status = upstream.status
    sent_at = request.get(_SENT_AT)
    is_sse = upstream.content_type == SSE_CONTENT_TYPE
    if not is_sse:
        body = upstream.body_if_complete()
        if body is not None:
            # All of it is here already: one response, one write.
            return _whole(upstream, headers=headers, body=body, audit=audit, sent_at=sent_at)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if is_sse:
        response.headers["X-Accel-Buffering"] = "no"
        response.headers.setdefault("Cache-Control", "no-cache")
    elif upstream.content_length is not None and "Content-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    streams = request.app[METRICS].active_streams
    response.headers[OVERHEAD_HEADER] = audit.overhead(time.perf_counter())
    await response.prepare(request)
    tail = b""
    if is_sse:
        streams.inc()
    try:
        async for chunk in gen.egress.iter_chunks(upstream):
            if audit.upstream_first_byte_s is None and sent_at is not None:
                audit.upstream_first_byte_s = time.perf_counter() - sent_at
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
    finally:
        if is_sse:
            streams.dec()
    if sent_at is not None:
        audit.upstream_total_s = time.perf_counter() - sent_at
    await response.write_eof()
    audit.prompt_tokens, audit.completion_tokens = usage.tokens(tail)
    return response


def _whole(
    upstream: UpstreamResponse,
    *,
    headers: CIMultiDict[str],
    body: bytes,
    audit: Audit,
    sent_at: float | None,
) -> web.Response:
    """A response whose body had fully arrived with its head: relayed in one piece."""
    if sent_at is not None:
        audit.upstream_first_byte_s = audit.upstream_total_s = time.perf_counter() - sent_at
    audit.bytes_out = len(body)
    audit.prompt_tokens, audit.completion_tokens = usage.tokens(body[-usage.TAIL_BYTES :])
    headers[OVERHEAD_HEADER] = audit.overhead(time.perf_counter())
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


def sse_error(error: ProxyError) -> bytes:
    return b"data: " + json.dumps(error.envelope(), separators=(",", ":")).encode() + b"\n\n"
