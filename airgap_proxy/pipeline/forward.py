"""Running a :class:`~airgap_proxy.pipeline.plan.Forward`: the attempts in order, then the relay.

Each attempt goes through the egress client, which re-checks every address
at connect time. Whether the next attempt runs is decided from the failure's
kind (:attr:`~airgap_proxy.errors.UpstreamError.retriable`): a failure
before anything was sent or answered (a refused or timed-out connect) passes
the request on, and so does a 5xx or a redirect from a candidate that is not
the last. When the last one fails that way the fallback answers, if the plan
allows it. A tenant's provider is one attempt with no fallback.
"""

from __future__ import annotations

import time

from aiohttp import web

from airgap_proxy import crypto, tenants
from airgap_proxy.config import UpstreamConfig
from airgap_proxy.egress.http1 import UpstreamResponse
from airgap_proxy.errors import AirgapViolation, InternalError, NoHealthyUpstream, Overloaded, UpstreamError
from airgap_proxy.logs import get_logger
from airgap_proxy.payload import hints_in
from airgap_proxy.pipeline import answer
from airgap_proxy.pipeline.exchange import Exchange
from airgap_proxy.pipeline.plan import Attempt, Forward
from airgap_proxy.pipeline.relay import is_redirect, relay
from airgap_proxy.tenants import StoredProvider
from airgap_proxy.upstreams import UpstreamRuntime

# Only gateway-type failures count against health: a 500 is often the
# server's answer to one bad request (llama.cpp does that).
UNHEALTHY_STATUSES = frozenset({502, 503, 504})
OVERLOAD_RETRY_AFTER_S = "1"
_log = get_logger("airgap_proxy.pipeline")


def busy(upstream: UpstreamConfig) -> Overloaded:
    return Overloaded(
        f"Upstream {upstream.name!r} is handling {upstream.max_in_flight} requests (its max_in_flight); retry shortly",
        headers={"Retry-After": OVERLOAD_RETRY_AFTER_S},
    )


async def forward(ex: Exchange, plan: Forward, provider: StoredProvider | None) -> web.StreamResponse:
    """Try the plan's attempts in order and relay the first answer."""
    ex.audit.stripped = hints_in(ex.payload)
    pool = ex.gen.pool
    for number, attempt in enumerate(plan.attempts, start=1):
        last = number == len(plan.attempts)
        if attempt.upstream is None:
            assert provider is not None
            ex.audit.record_policy(attempt.name, attempt.decision)
            return await _once(ex, attempt, _tenant_upstream(ex, provider))
        runtime = pool.runtimes[attempt.name]
        if pool.full(attempt.name):
            # Filled up while an earlier attempt was failing.
            if last:
                raise busy(runtime.config)
            continue
        ex.audit.record_policy(attempt.name, attempt.decision)
        runtime.in_flight += 1
        try:
            response = await _attempt(ex, attempt, runtime, last=last, fallback=plan.fallback)
        finally:
            runtime.in_flight -= 1
        if response is not None:
            return response
    raise NoHealthyUpstream("no upstream could be reached")  # pragma: no cover - the last attempt always returns


async def _attempt(
    ex: Exchange, attempt: Attempt, runtime: UpstreamRuntime, *, last: bool, fallback: bool
) -> web.StreamResponse | None:
    """One attempt on a pool upstream: its response relayed, or None to try the next."""
    pool = ex.gen.pool
    name = attempt.name
    try:
        upstream = await _send(ex, attempt, runtime.config)
    except AirgapViolation as exc:
        if exc.decision is not None:
            pool.record_refusal(name, exc.decision)
        raise
    except UpstreamError as exc:
        if not exc.retriable:
            raise
        # It failed before answering: the next one (or the fallback) may answer.
        pool.observe(name, False, exc.message)
        if not last:
            return None
        if fallback:
            return await answer.respond(ex, f"upstream {name} failed: {exc.message}")
        raise
    try:
        pool.observe(name, upstream.status not in UNHEALTHY_STATUSES, f"HTTP {upstream.status}")
        status = upstream.status
        if not last and (
            status >= 500 or is_redirect(status) or ex.surface.passes_on(ex.endpoint, ex.request.method, status)
        ):
            return None  # a redirect is never followed: the next candidate may answer
        return await relay(ex, upstream)
    finally:
        upstream.release()


async def _once(ex: Exchange, attempt: Attempt, upstream: UpstreamConfig) -> web.StreamResponse:
    """A tenant's provider: one attempt, relayed; its failures are the client's 502/504."""
    response = await _send(ex, attempt, upstream)
    try:
        return await relay(ex, response)
    finally:
        response.release()


def _tenant_upstream(ex: Exchange, provider: StoredProvider) -> UpstreamConfig:
    try:
        api_key = tenants.open_api_key(provider, ex.gen.keyring)
    except crypto.SealError as exc:
        _log.error("tenant_key_unavailable", tenant=provider.tenant, reason=str(exc))
        raise InternalError(f"The API key of tenant {provider.tenant!r} cannot be decrypted: {exc}") from None
    return provider.upstream(api_key)


async def _send(ex: Exchange, attempt: Attempt, upstream: UpstreamConfig) -> UpstreamResponse:
    assert upstream.target is not None  # invalid targets are never permitted
    request, audit, surface = ex.request, ex.audit, ex.surface
    body = surface.body_to_send(ex.endpoint, ex.payload, ex.body, attempt.model)
    ex.sent_model = attempt.model if attempt.model is not None and attempt.model != ex.model else None
    url = surface.upstream_url(upstream.target.url, ex.endpoint, request.rel_url.raw_query_string)
    headers = surface.upstream_headers(request.headers, upstream.api_key, audit.request_id)
    sent_at = ex.sent_at = time.perf_counter()
    try:
        response = await ex.gen.egress.request(request.method, url, headers=headers, body=body or None)
    except AirgapViolation as exc:
        audit.record_refusal(attempt.name, exc.decision, exc.message)
        raise
    finally:
        audit.waited_s += time.perf_counter() - sent_at
    audit.record_connect(response.decision)
    return response
