"""Header hygiene between client, proxy and upstream (pure).

Towards the upstream: hop-by-hop headers (and those named in ``Connection``)
are dropped, every client credential is dropped (``Authorization``,
``Proxy-Authorization``, ``Cookie``, and any header whose name has a
credential word in it: ``api-key``, ``x-goog-api-key``, ``X-Auth-Token``,
``x-amz-security-token``, ``ocp-apim-subscription-key``...), the upstream's
own key is injected, and ``X-Request-ID`` is set.
Towards the client: hop-by-hop headers, framing headers and cookies are dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
CLIENT_ONLY = frozenset(
    {
        "host",
        "authorization",
        "cookie",
        "api-key",
        "x-api-key",
        "content-length",
        # aiohttp hands us the body decompressed; the label must not travel on.
        "content-encoding",
        "accept-encoding",
        "expect",
        "x-request-id",
        "x-forwarded-for",
        "forwarded",
        # Which tenant a request is for is the proxy's business (tenants.TENANT_HEADER).
        "x-tenant-id",
    }
)
UPSTREAM_ONLY = frozenset({"content-length", "set-cookie", "server", "date", "x-request-id"})
_TO_UPSTREAM_DROPPED = HOP_BY_HOP | CLIENT_ONLY
_TO_CLIENT_DROPPED = HOP_BY_HOP | UPSTREAM_ONLY
REQUEST_ID_HEADER = "X-Request-ID"
UPSTREAM_HEADER = "X-Airgap-Upstream"
# The model the upstream received, when routing (an alias) changed the client's.
MODEL_HEADER = "X-Airgap-Model"
# The code of an error the proxy itself produced (not one relayed from an upstream).
ERROR_HEADER = "X-Airgap-Error"
# Milliseconds the proxy itself spent on a request, waits for the client's body and the upstream excluded.
OVERHEAD_HEADER = "X-Airgap-Overhead-Ms"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# A header is a credential when a word of its name (split on - _ .) says so:
# vendors name keys freely (x-goog-api-key, x-litellm-api-key, helicone-auth,
# x-amz-security-token), and a key that reaches a gateway upstream can be
# spent there. Over-dropping costs a header; under-dropping leaks a key.
_CREDENTIAL_WORD = re.compile(
    r"(?:^|[-_.])(?:key|apikey|api_key|token|secret|password|passwd|auth|authorization"
    r"|credential|credentials|signature|cookie|sessiontoken)(?:$|[-_.])"
)
# Names with a credential word that carry none.
_NOT_CREDENTIALS = frozenset({"idempotency-key"})


def _connection_listed(headers: Mapping[str, str]) -> frozenset[str]:
    if "Connection" not in headers:
        return frozenset()
    values = (
        headers.getall("Connection", [])
        if isinstance(headers, (CIMultiDict, CIMultiDictProxy))
        else [headers.get("Connection", "")]
    )
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def _filtered(headers: Mapping[str, str], drop: frozenset[str]) -> CIMultiDict[str]:
    listed = _connection_listed(headers)
    dropped = drop | listed if listed else drop
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if (lowered := name.lower()) not in dropped and not lowered.startswith("x-airgap-")
    )


@functools.lru_cache(maxsize=1024)
def is_credential_header(lowered: str) -> bool:
    """Whether a (lower-cased) header name looks like it carries a credential."""
    return lowered not in _NOT_CREDENTIALS and _CREDENTIAL_WORD.search(lowered) is not None


def upstream_request_headers(
    client_headers: Mapping[str, str], api_key: str | None, request_id: str
) -> list[tuple[str, str]]:
    """Headers to send upstream for a client's request, in the client's order."""
    listed = _connection_listed(client_headers)
    dropped = _TO_UPSTREAM_DROPPED | listed if listed else _TO_UPSTREAM_DROPPED
    out = [
        (name, value)
        for name, value in client_headers.items()
        if (lowered := name.lower()) not in dropped
        and not lowered.startswith("x-airgap-")
        and not is_credential_header(lowered)
    ]
    if api_key:
        out.append(("Authorization", f"Bearer {api_key}"))
    out.append((REQUEST_ID_HEADER, request_id))
    return out


def client_response_headers(upstream_headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers of an upstream response that are passed on to the client."""
    return _filtered(upstream_headers, _TO_CLIENT_DROPPED)


def valid_request_id(value: str | None) -> str | None:
    """The client's ``X-Request-ID`` if it is safe to echo and log, else None."""
    if value and _REQUEST_ID_RE.match(value):
        return value
    return None
