"""The surface adapter: what one API protocol supplies to the shared pipeline.

The pipeline (:mod:`airgap_proxy.pipeline`) identifies the caller, reads the
body, plans, forwards and relays the same way for every protocol. A surface
supplies only what differs between protocols:

- how to read the model and the stream flag (:meth:`Surface.parse`);
- how to render an error, whole or in the middle of a stream;
- how the upstream is addressed and authenticated;
- which requests the deterministic fallback answers, and with what;
- which requests it answers itself (a model list).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from airgap_proxy import usage
from airgap_proxy.errors import ProxyError
from airgap_proxy.fallback import Canned
from airgap_proxy.fallback.limits import Limits
from airgap_proxy.headers import upstream_request_headers
from airgap_proxy.payload import Payload

SSE = "text/event-stream"
JSON = "application/json"

# Makes a fallback answer: the whole body, or the stream's events in order.
Maker = Callable[[], list[bytes]]


@dataclass(frozen=True, slots=True)
class FallbackInputs:
    """What a fallback synthesizer needs besides the request: the canned replies and the caps."""

    canned: Canned
    caps: Limits
    # Every model name the proxy answers for (what a model list shows).
    model_ids: tuple[str, ...] = ()


class Surface:
    """One API protocol. Subclasses override what their protocol does differently."""

    name: ClassVar[str]
    # The media type of this surface's streams, as the upstream sends them.
    stream_type: ClassVar[str] = SSE

    def parse(self, endpoint: str, method: str, body: bytes, content_type: str) -> Payload:
        """What routing needs from the body; raises ``InvalidRequest`` for a malformed core request."""
        raise NotImplementedError

    def error_body(self, error: ProxyError) -> bytes:
        """The body of an error response in this protocol's envelope."""
        raise NotImplementedError

    def stream_error(self, error: ProxyError) -> bytes:
        """The event that ends a stream which failed after its first byte."""
        raise NotImplementedError

    def upstream_url(self, base_url: str, endpoint: str, query: str) -> str:
        """Where an upstream with this ``base_url`` serves ``endpoint``."""
        url = f"{base_url.rstrip('/')}/{endpoint}"
        return f"{url}?{query}" if query else url

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None, request_id: str
    ) -> list[tuple[str, str]]:
        """The headers sent upstream: the client's credentials dropped, the upstream's key added."""
        return upstream_request_headers(client_headers, api_key, request_id)

    def body_to_send(self, endpoint: str, payload: Payload, body: bytes, model: str | None) -> bytes:
        """The bytes to forward for ``model``: the client's own unless something must change."""
        raise NotImplementedError

    def routes_by_model(self, endpoint: str, method: str) -> bool:
        """Is this request routed by its model (else to every upstream that speaks the surface)?"""
        return True

    def passes_on(self, endpoint: str, method: str, status: int) -> bool:
        """Should an answer with ``status`` pass the request on to the next candidate?"""
        return False

    def answers_locally(self, endpoint: str, method: str) -> bool:
        """Does the proxy answer this request itself (a model list), without any upstream?"""
        return False

    def local_answer(self, endpoint: str, method: str, model_ids: list[str]) -> bytes:
        """The body of a request :meth:`answers_locally` answers."""
        raise NotImplementedError

    def can_answer(self, endpoint: str, method: str) -> bool:
        """Can the deterministic fallback answer this request?"""
        return False

    def fallback(self, endpoint: str, payload: Payload, model: str, inputs: FallbackInputs) -> Maker:
        """What makes the fallback's answer (run off the event loop, within the CPU budget)."""
        raise NotImplementedError

    def streams(self, endpoint: str, payload: Payload) -> bool:
        """Is the fallback's answer a stream of events (else one body)?"""
        return payload.stream

    def tokens(self, tail: bytes) -> tuple[int | None, int | None]:
        """(input, output) token counts from the last bytes of a response, for the audit."""
        return usage.tokens(tail)
