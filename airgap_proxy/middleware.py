"""The one middleware: request id, error translation, the audit event.

Our errors become OpenAI-shaped HTTP responses here and nowhere else. A 500
never shows internals to the client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from airgap_proxy.audit import Action, Audit
from airgap_proxy.errors import (
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    RequestTooLarge,
)
from airgap_proxy.headers import REQUEST_ID_HEADER, valid_request_id
from airgap_proxy.logs import AUDIT_EVENT, get_logger
from airgap_proxy.state import AUDIT_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = get_logger("airgap_proxy.audit")
_UNAUDITED = frozenset({"/healthz", "/readyz", "/metrics"})


def error_response(error: ProxyError, request_id: str) -> web.Response:
    """The OpenAI error envelope for ``error``."""
    response = web.json_response(error.envelope(), status=error.status)
    response.headers.update(error.headers)
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


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
    audit = Audit(request_id=request_id, method=request.method, route=request.path)
    request[AUDIT_KEY] = audit
    try:
        response = await handler(request)
    except ProxyError as exc:
        response = _fail(audit, exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _fail(audit, _from_http_exception(exc, request.path), request_id)
    except asyncio.CancelledError:
        audit.status = 499
        audit.error = "client disconnected"
        _emit(request, audit, started)
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into 500
        _log.error("internal_error", request_id=request_id, exc_type=type(exc).__name__, exc_info=True)
        response = _fail(audit, InternalError(f"Internal error (request id {request_id})"), request_id)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    if audit.status == 0:
        audit.status = response.status
    _emit(request, audit, started)
    return response


def _fail(audit: Audit, error: ProxyError, request_id: str) -> web.Response:
    audit.status = error.status
    audit.error_code = error.code
    audit.error = error.message
    if error.code == "airgap_violation":
        audit.decision = Action.BLOCK
    return error_response(error, request_id)


def _emit(request: web.Request, audit: Audit, started: float) -> None:
    if request.path in _UNAUDITED:
        return
    duration_ms = (time.perf_counter() - started) * 1000
    if audit.status >= 500:
        _log.warning(AUDIT_EVENT, **audit.fields(duration_ms))
    else:
        _log.info(AUDIT_EVENT, **audit.fields(duration_ms))
