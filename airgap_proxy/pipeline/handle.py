"""The pipeline's entry: one request of any surface, from intake to the relayed answer.

1. Identify the caller: with ``clients`` configured the client's bearer key
   decides (401 missing or unknown key, 403 an ``X-Tenant-ID`` of another
   tenant); otherwise ``X-Tenant-ID`` does.
2. Read the body within ``limits.max_body_bytes`` (413) and
   ``timeouts.client_body_s`` (408); the surface parses what routing needs
   (400 for a malformed core request).
3. :func:`~airgap_proxy.pipeline.plan.plan` decides the one outcome.
4. Execute it: forward and relay (:mod:`.forward`), answer from the
   fallback (:mod:`.answer`), or refuse with the surface's error.

The request uses the configuration generation pinned by the middleware from
start to end, whatever reload happens meanwhile.
"""

from __future__ import annotations

import time

from aiohttp import web

from airgap_proxy import tenants
from airgap_proxy.errors import AirgapViolation, NoHealthyUpstream
from airgap_proxy.pipeline import answer, intake
from airgap_proxy.pipeline.exchange import Exchange
from airgap_proxy.pipeline.forward import busy, forward
from airgap_proxy.pipeline.plan import Answer, Busy, Facts, Forward, Local, Outcome, Refuse, Tenant, plan
from airgap_proxy.state import AUDIT_KEY, GENERATION_KEY, STATE
from airgap_proxy.surfaces import SURFACE_KEY, Surface
from airgap_proxy.tenants import TENANT_HEADER, StoredProvider
from airgap_proxy.upstreams import routing

MODE_HEADER = "X-Airgap-Mode"
RETRY_AFTER_S = "5"


async def handle(request: web.Request, surface: Surface, endpoint: str) -> web.StreamResponse:
    """Serve one request on ``surface``; ``endpoint`` is its path below the surface's root."""
    request[SURFACE_KEY] = surface
    gen = request[GENERATION_KEY]
    audit = request[AUDIT_KEY]
    audit.api = surface.name
    config = gen.config
    identity = tenants.identify(
        request.headers.get("Authorization"), request.headers.get(TENANT_HEADER), config.clients
    )
    audit.tenant = identity.tenant
    waiting = time.perf_counter()
    body = await intake.read_body(request, config.limits.max_body_bytes, config.timeouts.client_body_s)
    audit.waited_s += time.perf_counter() - waiting
    parsed = surface.parse(endpoint, request.method, body, request.headers.get("Content-Type", ""))
    audit.stream = parsed.stream
    by_model = surface.routes_by_model(endpoint, request.method)
    model = routing.requested_model(parsed.model, config.default_model) if by_model else None
    forced = request.headers.get(MODE_HEADER, "").lower() == "deterministic"
    provider = None if forced else await request.app[STATE].tenant_provider(identity.tenant)
    tenant = None
    if provider is not None:
        model = routing.requested_model(parsed.model, provider.model) if by_model else None
        tenant = Tenant(
            tenants.upstream_name(provider.tenant), model, tenants.request_time_decision(provider, config.rules)
        )
    audit.model = model
    method = request.method
    facts = Facts(
        api=surface.name,
        path=request.path,
        model=model,
        forced=forced,
        tenant=tenant,
        local=surface.answers_locally(endpoint, method),
        answerable=surface.can_answer(endpoint, method),
        fallback_mode=config.fallback.mode,
        airgapped=config.airgapped,
    )
    outcome = plan(facts, gen.pool)
    ex = Exchange(request, gen, audit, surface, endpoint, parsed, body, model)
    return await execute(ex, outcome, provider)


async def execute(ex: Exchange, outcome: Outcome, provider: StoredProvider | None) -> web.StreamResponse:
    """Carry out the plan's outcome."""
    if isinstance(outcome, Forward):
        return await forward(ex, outcome, provider)
    if isinstance(outcome, Answer):
        return await answer.respond(ex, outcome.cause)
    if isinstance(outcome, Local):
        return answer.local(ex)
    if isinstance(outcome, Refuse):
        ex.audit.record_refusal(outcome.upstream, outcome.decision, outcome.decision.reason)
        raise AirgapViolation(outcome.decision.reason, decision=outcome.decision)
    if isinstance(outcome, Busy):
        ex.audit.upstream = outcome.upstream.name
        raise busy(outcome.upstream)
    ex.audit.upstream = outcome.upstream
    raise NoHealthyUpstream(outcome.message, headers={"Retry-After": RETRY_AFTER_S})
