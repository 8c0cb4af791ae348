"""The one middleware: request id, limits, error translation, the audit event and metrics.

Our errors become HTTP responses here and nowhere else, in the envelope of
the request's surface (OpenAI's unless the pipeline chose another), marked
with ``X-Airgap-Error``. A 500
never shows internals to the client. For every request, in order:

1. Take or make the request id; start the audit record.
2. Pin the current configuration generation for the whole request (a reload
   never changes a request half way through).
3. ``/v1`` requests past ``limits.max_in_flight`` are refused at once with
   503 ``overloaded`` and ``Retry-After`` (never queued).
4. Run the handler; translate errors; emit the audit event and observe the
   metrics once, from the audit record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from airgap_proxy import logs
from airgap_proxy.audit import Action, Audit
from airgap_proxy.errors import (
    ExpectationFailed,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    ProxyError,
    RequestTooLarge,
)
from airgap_proxy.headers import ERROR_HEADER, OVERHEAD_HEADER, REQUEST_ID_HEADER, valid_request_id
from airgap_proxy.logs import AUDIT_EVENT, get_logger
from airgap_proxy.metrics import FORWARD_PROXY_ROUTE, route_label
from airgap_proxy.state import AUDIT_KEY, GENERATION_KEY, STATE
from airgap_proxy.surfaces import JSON, OPENAI, SURFACE_KEY, Surface

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = get_logger("airgap_proxy.audit")
_UNAUDITED = frozenset({"/healthz", "/readyz", "/metrics"})
OVERLOAD_RETRY_AFTER_S = "1"


def new_request_id() -> str:
    """128 random bits as 32 hex digits (the shape of a uuid4 hex, at a quarter of the cost)."""
    return os.urandom(16).hex()


def error_response(error: ProxyError, request_id: str, surface: Surface = OPENAI) -> web.Response:
    """``error`` in ``surface``'s envelope."""
    response = web.Response(body=surface.error_body(error), status=error.status, content_type=JSON)
    response.headers.update(error.headers)
    response.headers[ERROR_HEADER] = error.code
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _from_http_exception(exc: web.HTTPException, path: str) -> ProxyError:
    if exc.status == 404:
        return NotFound(f"Unknown path: {path}")
    if exc.status == 405:
        return MethodNotAllowed("Method not allowed")
    if exc.status == 413:
        return RequestTooLarge("Request body is too large")
    if 400 <= exc.status < 500:
        return InvalidRequest(exc.reason)
    return InternalError("Internal error")


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect`` for every route (aiohttp runs this before any middleware).

    ``100-continue`` gets its interim response; anything else is 417 in the
    OpenAI envelope rather than aiohttp's plain text echoing the header back.
    """
    if request.headers.get("Expect", "").lower() == "100-continue":
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None
    request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
    response = error_response(ExpectationFailed("Only 'Expect: 100-continue' is supported"), request_id)
    # Answer, then hang up: the body the client may still send is never read
    # (aiohttp would otherwise linger to drain it, and fail on one it cannot decode).
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def is_model_traffic(path: str) -> bool:
    """Is this a request for a model (``/v1/...``, Ollama's ``/api/...``), which ``limits.max_in_flight`` caps?"""
    return path.startswith("/v1/") or (path.startswith("/api/") and not path.startswith("/api/v1/"))


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
    audit = Audit(request_id=request_id, method=request.method, route=request.path, started=started)
    request[AUDIT_KEY] = audit
    state = request.app[STATE]
    generation = state.generation
    request[GENERATION_KEY] = generation
    generation.enter()
    limited = is_model_traffic(request.path)
    admitted = False
    hang_up = False
    try:
        if limited:
            limit = generation.config.limits.max_in_flight
            if state.in_flight >= limit:
                raise Overloaded(
                    f"The proxy is handling {limit} requests (limits.max_in_flight); retry shortly",
                    headers={"Retry-After": OVERLOAD_RETRY_AFTER_S},
                )
            state.in_flight += 1
            admitted = True
        response = await handler(request)
    except ProxyError as exc:
        response = _fail(audit, exc, request_id, request.get(SURFACE_KEY, OPENAI))
        hang_up = exc.close_connection
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _fail(audit, _from_http_exception(exc, request.path), request_id, request.get(SURFACE_KEY, OPENAI))
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away (cancelled handler, or a write to a closed transport).
        audit.status = 499
        audit.error = "client disconnected"
        _emit(request, audit, started)
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into 500
        _log.error("internal_error", request_id=request_id, exc_type=type(exc).__name__, exc_info=True)
        error = InternalError(f"Internal error (request id {request_id})")
        response = _fail(audit, error, request_id, request.get(SURFACE_KEY, OPENAI))
    finally:
        if admitted:
            state.in_flight -= 1
        generation.leave()
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
        if limited:
            response.headers[OVERHEAD_HEADER] = audit.overhead(time.perf_counter())
    if audit.status == 0:
        audit.status = response.status
    if not hang_up and not response.prepared:
        # An answer given before the body was read (a refusal, a bad header):
        # aiohttp would linger to drain the body, and fail on one it cannot decode.
        content = request.content
        hang_up = content.exception() is not None or not content.is_eof()
    if hang_up and request.transport is not None:
        # Answer, then hang up: waiting for the rest of a slow or broken body
        # (aiohttp lingers up to 10 s for it) would let a client hold the connection.
        response.force_close()
        await _send_now(request, response, audit, started)
        request.protocol.force_close()
    elif not response.prepared:
        # The client gets its answer first; the audit line and metrics follow,
        # off the latency path (aiohttp's own send afterwards finds it done).
        await _send_now(request, response, audit, started)
    _emit(request, audit, started)
    return response


async def _send_now(request: web.Request, response: web.StreamResponse, audit: Audit, started: float) -> None:
    try:
        await response.prepare(request)
        await response.write_eof()
    except (asyncio.CancelledError, ConnectionResetError):
        audit.status = 499
        audit.error = "client disconnected"
        _emit(request, audit, started)
        raise


def _fail(audit: Audit, error: ProxyError, request_id: str, surface: Surface) -> web.Response:
    audit.status = error.status
    audit.error_code = error.code
    audit.error = error.message
    if error.code == "airgap_violation":
        audit.decision = Action.BLOCK
    return error_response(error, request_id, surface)


def _emit(request: web.Request, audit: Audit, started: float) -> None:
    if request.path in _UNAUDITED:
        return
    duration_s = time.perf_counter() - started
    route = FORWARD_PROXY_ROUTE if audit.tunnel is not None else route_label(request)
    request.app[STATE].metrics.observe(audit, route, duration_s)
    logs.emit(
        _log, logging.WARNING if audit.status >= 500 else logging.INFO, AUDIT_EVENT, audit.fields(duration_s * 1000)
    )
