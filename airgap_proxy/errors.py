"""One shallow error tree; each class knows its HTTP status and OpenAI code.

Errors become HTTP responses in exactly one place,
:func:`airgap_proxy.middleware.request_middleware`, using :meth:`ProxyError.envelope`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from airgap_proxy.policy import Decision


class ProxyError(Exception):
    """Base of every error a client may see. ``message`` is safe to show."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    # Hang up after answering: the rest of the request body cannot be read.
    close_connection: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class AirgapViolation(ProxyError):
    """The target is external or invalid while air-gapped mode is on.

    ``decision`` is the policy's, when the refusal came from one (at connect
    time, say): it travels with the error into the audit and the health view.
    """

    status = 422
    type = "airgap_violation"
    code = "airgap_violation"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        decision: Decision | None = None,
    ):
        super().__init__(message, param=param, headers=headers)
        self.decision = decision


class ForwardRefused(AirgapViolation):
    """The forward proxy refuses a ``CONNECT`` or absolute-form target: 403, nothing is connected."""

    status = 403
    close_connection = True


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class BadHttpRequest(InvalidRequest):
    """A request the HTTP parser refused (a bad header line, a garbage request line)."""

    code = "bad_request"


class Unauthorized(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "unauthorized"


class Forbidden(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(ProxyError):
    """The client did not send its request body within ``timeouts.client_body_s``."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class UndecodableBody(ProxyError):
    """The request body does not decode (e.g. labelled gzip, but not gzip)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"
    close_connection = True


class InvalidConfig(ProxyError):
    """A configuration reload was refused; the running configuration stays."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_config"


class ExpectationFailed(ProxyError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


class RequestTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(ProxyError):
    """The upstream could not be reached or failed before answering.

    ``retriable``: the next candidate upstream (or the fallback) may answer
    instead, and the failure counts against this upstream's health.
    """

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retriable: ClassVar[bool] = True


class NoHealthyUpstream(ProxyError):
    status = 503
    type = "server_error"
    code = "no_healthy_upstream"


class Overloaded(ProxyError):
    """Too many requests in flight (``limits.max_in_flight`` or an upstream's ``max_in_flight``)."""

    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamTimeout(UpstreamError):
    """The upstream accepted the request but did not answer in time: not retried
    (it may be generating), and a busy single-slot server is not down."""

    status = 504
    code = "upstream_timeout"
    retriable = False


class UpstreamConnectTimeout(UpstreamTimeout):
    """The upstream did not accept the connection in time.

    Nothing was sent, so, unlike a slow answer, it is safe to try the next
    upstream, and it counts against health like a refused connection.
    """

    retriable = True


class InternalError(ProxyError):
    status = 500
    type = "server_error"
    code = "internal_error"


class TenantStoreUnavailable(ProxyError):
    """The shared (PostgreSQL) tenant store cannot be read, so a tenant's provider is unknown.

    Only requests that need a tenant's provider (and the admin API) get it;
    everything else keeps serving.
    """

    status = 503
    type = "server_error"
    code = "tenant_store_unavailable"
    retry_after_s: ClassVar[str] = "2"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message, param=param, headers={"Retry-After": self.retry_after_s, **(headers or {})})
