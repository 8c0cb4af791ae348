"""Relaying an upstream's response to the client: whole when it is all here, else chunk by chunk.

Streams (SSE, NDJSON) are passed on as they arrive, never re-parsed or
buffered. A failure after the first byte cannot change the status any more:
a stream ends with the surface's error event, any other body is cut short
and the connection closed, so the client sees it.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from multidict import CIMultiDict

from airgap_proxy import usage
from airgap_proxy.egress.http1 import UpstreamResponse
from airgap_proxy.errors import ProxyError, UpstreamError
from airgap_proxy.headers import (
    MODEL_HEADER,
    OVERHEAD_HEADER,
    REQUEST_ID_HEADER,
    UPSTREAM_HEADER,
    client_response_headers,
)
from airgap_proxy.metrics import METRICS
from airgap_proxy.pipeline.exchange import Exchange

STREAM_TYPES = frozenset({"text/event-stream", "application/x-ndjson"})


def is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304


async def relay(ex: Exchange, upstream: UpstreamResponse) -> web.StreamResponse:
    """Pass ``upstream``'s response on to the client."""
    if is_redirect(upstream.status):
        # Never followed, and never handed to the client to follow either.
        raise UpstreamError(f"upstream answered with a redirect ({upstream.status}), which is never followed")
    audit = ex.audit
    headers = client_response_headers(upstream.headers)
    headers[REQUEST_ID_HEADER] = audit.request_id
    headers[UPSTREAM_HEADER] = audit.upstream or ""
    if ex.sent_model is not None:
        headers[MODEL_HEADER] = ex.sent_model
    audit.status = upstream.status
    is_stream = upstream.content_type in STREAM_TYPES
    if not is_stream:
        body = upstream.body_if_complete()
        if body is not None:
            # All of it is here already: one response, one write.
            return _whole(ex, upstream, headers, body)
    request = ex.request
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if is_stream:
        response.headers["X-Accel-Buffering"] = "no"
        response.headers.setdefault("Cache-Control", "no-cache")
    elif upstream.content_length is not None and "Content-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    streams = request.app[METRICS].active_streams
    response.headers[OVERHEAD_HEADER] = audit.overhead(time.perf_counter())
    await response.prepare(request)
    tail = b""
    sent_at = ex.sent_at
    if is_stream:
        streams.inc()
    try:
        async for chunk in ex.gen.egress.iter_chunks(upstream):
            if audit.upstream_first_byte_s is None and sent_at is not None:
                audit.upstream_first_byte_s = time.perf_counter() - sent_at
            audit.bytes_out += len(chunk)
            tail = usage.keep_tail(tail, chunk)
            await response.write(chunk)
    except ProxyError as exc:
        audit.error_code = exc.code
        audit.error = exc.message
        if is_stream:
            await response.write(ex.surface.stream_error(exc))
            await response.write_eof()
        elif request.transport is not None:
            request.transport.close()
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        audit.status = 499
        audit.error = "client disconnected"
        raise
    finally:
        if is_stream:
            streams.dec()
    if sent_at is not None:
        audit.upstream_total_s = time.perf_counter() - sent_at
    await response.write_eof()
    audit.prompt_tokens, audit.completion_tokens = ex.surface.tokens(tail)
    return response


def _whole(ex: Exchange, upstream: UpstreamResponse, headers: CIMultiDict[str], body: bytes) -> web.Response:
    """A response whose body had fully arrived with its head: relayed in one piece."""
    audit = ex.audit
    if ex.sent_at is not None:
        audit.upstream_first_byte_s = audit.upstream_total_s = time.perf_counter() - ex.sent_at
    audit.bytes_out = len(body)
    audit.prompt_tokens, audit.completion_tokens = ex.surface.tokens(body[-usage.TAIL_BYTES :])
    headers[OVERHEAD_HEADER] = audit.overhead(time.perf_counter())
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
