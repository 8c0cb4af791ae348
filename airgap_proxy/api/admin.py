"""The admin API: each tenant's own LLM provider (bearer ``AIRGAP_PROXY_ADMIN_TOKEN``).

Off unless an admin token is configured: every admin route then answers 404
``not_found`` saying so. With a token, a request without a bearer token is 401
and one with the wrong token 403 (compared in constant time).

``PUT /api/v1/tenants/{tenant}/llm-provider``, in order:

1. Validate the tenant id and the body (400 ``invalid_request_error`` naming the field).
2. An ``api_key`` needs a configured secret key (400 otherwise).
3. Classify ``base_url`` with the egress policy, names resolved by the egress
   client's resolver: ``invalid`` is 422 ``airgap_violation`` always,
   ``external`` is 422 while air-gapped (report-only stores it and logs
   ``would_block``). On refusal nothing is stored and the previous value stays.
4. ``?verify=true``: probe the endpoint's free health path through the egress
   client and report the outcome (the settings are stored either way).
5. Seal the key (bound to the tenant and the URL), store the record in one
   transaction, and log ``tenant_provider_changed`` (never the key).

``POST /api/v1/admin/reload`` re-reads the configuration as SIGHUP does
(:func:`airgap_proxy.reload.reload_app`): 200 with the new generation, or 400
``invalid_config`` with the loader's message while the running one stays. A
worker of ``serve --workers N`` then has the supervisor reload every other
worker, waits for them (up to :data:`~airgap_proxy.group.RELOAD_WAIT_S`), and
lists each worker's generation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from airgap_proxy import crypto, policy, reload, tenants
from airgap_proxy.audit import Action
from airgap_proxy.config import ConfigError
from airgap_proxy.errors import (
    AirgapViolation,
    Forbidden,
    InternalError,
    InvalidConfig,
    InvalidRequest,
    NotFound,
    TenantStoreUnavailable,
    Unauthorized,
)
from airgap_proxy.group import GROUP, RELOAD_WAIT_S, WorkerGroup
from airgap_proxy.logs import get_logger
from airgap_proxy.pipeline import read_body
from airgap_proxy.state import AUDIT_KEY, STATE, AppState, TenantProbe
from airgap_proxy.tenant_cache import SharedTenantStore
from airgap_proxy.tenant_store import AsyncTenantStore, Store
from airgap_proxy.upstreams import Probe, probe_endpoint

TENANTS_PATH = "/api/v1/tenants"
PROVIDER_PATH = "/api/v1/tenants/{tenant}/llm-provider"
RELOAD_PATH = "/api/v1/admin/reload"
MAX_ADMIN_BODY = 64 * 1024
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no", ""})
_log = get_logger("airgap_proxy.audit")


ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def add_routes(app: web.Application, expect_handler: ExpectHandler) -> None:
    app.router.add_get(TENANTS_PATH, list_tenants, expect_handler=expect_handler)
    app.router.add_route("PUT", PROVIDER_PATH, put_provider, expect_handler=expect_handler)
    app.router.add_route("GET", PROVIDER_PATH, get_provider, expect_handler=expect_handler)
    app.router.add_route("DELETE", PROVIDER_PATH, delete_provider, expect_handler=expect_handler)
    app.router.add_post(RELOAD_PATH, reload_config, expect_handler=expect_handler)


def _authorize(request: web.Request) -> Store:
    """The store, once the admin token checks out."""
    state = request.app[STATE]
    _check_token(request, state)
    if state.store is None:  # pragma: no cover - the store opens at start-up whenever admin is on
        raise InternalError("The tenant store is not open")
    return state.store


def _check_token(request: web.Request, state: AppState) -> None:
    token = state.config.admin.token
    if token is None:
        raise NotFound("The admin API is disabled: set AIRGAP_PROXY_ADMIN_TOKEN (or admin.token_file) to enable it")
    authorization = request.headers.get("Authorization")
    if tenants.bearer_token_bytes(authorization) is None:
        raise Unauthorized(
            "Missing or malformed admin token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="airgap-proxy admin"'},
        )
    if not tenants.bearer_matches(authorization, token):
        raise Forbidden("Invalid admin token")


def _tenant(request: web.Request) -> str:
    tenant = tenants.check_tenant_id(request.match_info["tenant"])
    request[AUDIT_KEY].tenant = tenant
    return tenant


def _verify_flag(request: web.Request) -> bool:
    value = request.query.get("verify", "false").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidRequest("'verify' must be true or false", param="verify")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def list_tenants(request: web.Request) -> web.Response:
    store = _authorize(request)
    providers = await store.list()
    return web.json_response({"object": "list", "data": [p.view() for p in providers]})


async def get_provider(request: web.Request) -> web.Response:
    store = _authorize(request)
    tenant = _tenant(request)
    provider = await store.get(tenant)
    if provider is None:
        raise NotFound(f"Tenant {tenant!r} has no LLM provider")
    return web.json_response(provider.view())


async def delete_provider(request: web.Request) -> web.Response:
    store = _authorize(request)
    tenant = _tenant(request)
    state = request.app[STATE]
    previous = await store.get(tenant)
    if previous is None or not await store.delete(tenant):
        raise NotFound(f"Tenant {tenant!r} has no LLM provider")
    state.tenant_probes.pop(tenant, None)
    _log.info(
        "tenant_provider_changed",
        request_id=request[AUDIT_KEY].request_id,
        tenant=tenant,
        action="delete",
        provider_type=previous.provider_type.value,
        base_url_host=previous.target.host if previous.target else None,
    )
    return web.Response(status=204)


async def put_provider(request: web.Request) -> web.Response:
    store = _authorize(request)
    tenant = _tenant(request)
    state = request.app[STATE]
    audit = request[AUDIT_KEY]
    verify = _verify_flag(request)
    body = tenants.parse_provider_request(await read_body(request, MAX_ADMIN_BODY))
    if body.api_key is not None and not state.keyring.can_seal:
        raise InvalidRequest(
            "This proxy cannot store API keys: no secret key is configured (AIRGAP_PROXY_SECRET_KEY or "
            "tenants.secret_key_file). Configure one, or omit api_key.",
            param="api_key",
        )
    parsed = tenants.parse_base_url(body.base_url)
    decision = parsed if isinstance(parsed, policy.Decision) else await state.egress.decide(parsed)
    audit.verdict, audit.reason, audit.rule = decision.verdict.value, decision.reason, decision.rule.value
    host = None if isinstance(parsed, policy.Decision) else parsed.host
    if decision.verdict is policy.Verdict.INVALID or (not decision.is_local and state.config.airgapped):
        _log.warning(
            "tenant_provider_refused",
            request_id=audit.request_id,
            tenant=tenant,
            provider_type=body.provider_type.value,
            base_url_host=host,
            reason=decision.reason,
        )
        raise AirgapViolation(f"base_url is not local: {decision.reason}. Nothing was stored.", param="base_url")
    audit.decision = Action.FORWARD if decision.is_local else Action.WOULD_BLOCK
    assert not isinstance(parsed, policy.Decision)
    base_url = parsed.url
    try:
        sealed = tenants.seal_api_key(state.keyring, tenant, base_url, body.api_key)
    except crypto.SealError as exc:  # pragma: no cover - can_seal was checked above
        raise InternalError(str(exc)) from None
    provider = tenants.StoredProvider(
        tenant=tenant,
        provider_type=body.provider_type,
        base_url=base_url,
        model=body.model,
        sealed_key=sealed,
        key_hint=tenants.key_hint(body.api_key),
        decision=decision,
        updated_at=_now(),
    )
    probe = (
        await probe_endpoint(state.egress, provider.upstream(body.api_key), state.config.health.timeout_s)
        if verify
        else None
    )
    created = await store.put(provider)
    state.tenant_probes.pop(tenant, None)
    if probe is not None:
        state.tenant_probes[tenant] = TenantProbe(time.monotonic(), time.time(), base_url, probe)
    _log.info(
        "tenant_provider_changed",
        request_id=audit.request_id,
        tenant=tenant,
        action="create" if created else "update",
        provider_type=provider.provider_type.value,
        base_url_host=host,
        verdict=decision.verdict.value,
        api_key_set=sealed is not None,
        key_id=sealed.key_id if sealed else None,
    )
    if not decision.is_local:
        _log.warning("tenant_provider_would_block", tenant=tenant, base_url_host=host, reason=decision.reason)
    view: dict[str, Any] = provider.view() | {"created": created}
    if probe is not None:
        view["verify"] = verify_view(probe)
    return web.json_response(view, status=201 if created else 200)


async def reload_config(request: web.Request) -> web.Response:
    """Reload the configuration file (and the environment captured at start-up), as SIGHUP does."""
    _check_token(request, request.app[STATE])
    try:
        reloaded = await reload.reload_app(request.app)
    except ConfigError as exc:
        raise InvalidConfig(f"configuration rejected, the running one stays: {exc}") from None
    body: dict[str, Any] = {
        "reloaded": True,
        "generation": reloaded.generation,
        "restart_needed": list(reloaded.restart_needed),
    }
    group = request.app.get(GROUP)
    if group is not None:
        body["workers"] = await _reload_others(group, reloaded.generation)
    return web.json_response(body)


async def _reload_others(group: WorkerGroup, generation: int) -> list[dict[str, Any]]:
    """Every other worker reloads too; each worker's generation, and whether it reloaded in time."""
    before = {pid: record for pid, record in group.records().items() if pid != group.pid}
    group.reload_others()
    reloaded = await group.wait_reloaded(before, RELOAD_WAIT_S)
    now = group.records()
    workers = [{"pid": group.pid, "generation": generation, "reloaded": True}]
    workers += [{"pid": pid, "generation": now[pid].generation, "reloaded": ok} for pid, ok in reloaded.items()]
    return sorted(workers, key=lambda w: w["pid"])


def verify_view(probe: Probe) -> dict[str, Any]:
    return {"reachable": probe.ok, "status": probe.status, "error": probe.error, "models": list(probe.models)}


async def open_store(state: AppState) -> None:
    """Open the store at start-up: a PostgreSQL one always; a SQLite one when the admin API is on or the file exists.

    Logs what it found, and warns about tenant keys no configured secret key can open.
    An unreachable PostgreSQL database is not fatal (:mod:`airgap_proxy.tenant_cache`).
    """
    tenants_config = state.config.tenants
    store: Store = (
        SharedTenantStore(tenants_config) if tenants_config.is_postgres else AsyncTenantStore(tenants_config.store)
    )
    try:
        opened = await store.open(create=state.config.admin.token is not None)
    except BaseException:
        await store.close()
        raise
    if not opened:
        await store.close()
        return
    state.store = store
    health = store.health()
    if health is not None and not health["connected"]:
        _log.warning("tenant_store_opened", store=store.shown, connected=False, reason=health["reason"])
        return
    try:
        providers = await store.list()
    except TenantStoreUnavailable:  # gone since the first poll: the poller reports it
        return
    _log.info(
        "tenant_store_opened",
        path=store.shown,
        tenants=len(providers),
        admin_api=state.config.admin.token is not None,
        secret_key_ids=list(state.keyring.key_ids()),
        clients=len(state.config.clients),
    )
    missing = sorted({p.sealed_key.key_id for p in providers if p.sealed_key} - set(state.keyring.key_ids()))
    if missing:
        # Those tenants' requests fail with 500 until the key is configured again.
        _log.warning(
            "tenant_keys_undecryptable",
            key_ids=missing,
            tenants=[p.tenant for p in providers if p.sealed_key and p.sealed_key.key_id in missing],
            hint="add the old secret key to AIRGAP_PROXY_PREVIOUS_SECRET_KEYS",
        )
