"""The forward-proxy backstop: ``CONNECT host:port`` and absolute-form requests.

Tools that ignore the base URL for part of their traffic still honour
``HTTPS_PROXY``; with ``forward_proxy.enabled`` the listener judges each such
target by the same policy, in this order:

1. Disabled: 405 ``method_not_allowed``; nothing is parsed or connected.
2. The target must parse (:func:`airgap_proxy.policy.targets.parse_target`:
   no userinfo, every IP notation normalised) and its port must be in
   ``forward_proxy.allow_ports``; otherwise 403, in every mode.
3. Names on the deny list or the telemetry list are refused *before any
   resolution*; IP literals are checked as they are.
4. Everything else goes to the egress client, which resolves the name once,
   checks every address and connects to the checked one.

Refusals are 403 ``airgap_violation`` with ``X-Airgap-Reason``. In report-only
mode (``airgapped: false``) policy refusals are tunnelled and recorded as
``would_block``. A tunnel counts towards ``limits.max_in_flight`` while open.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web

from airgap_proxy import policy
from airgap_proxy.api.tunnel import SHUTDOWN, Tunnel
from airgap_proxy.audit import REASON_AT_CONNECT, Action, Audit
from airgap_proxy.audit import Tunnel as TunnelFacts
from airgap_proxy.config import ForwardProxyConfig
from airgap_proxy.errors import AirgapViolation, ForwardRefused, MethodNotAllowed, Overloaded
from airgap_proxy.headers import HOP_BY_HOP, client_response_headers
from airgap_proxy.metrics import FORWARD_PROXY_ROUTE
from airgap_proxy.middleware import OVERLOAD_RETRY_AFTER_S
from airgap_proxy.policy.targets import Target, TargetError, parse_target
from airgap_proxy.policy.telemetry import TELEMETRY
from airgap_proxy.state import AUDIT_KEY, GENERATION_KEY, STATE, Generation

REASON_HEADER = "X-Airgap-Reason"
REASON_PORT = "port {port} is not in forward_proxy.allow_ports ({ports})"
REASON_DISABLED = "The proxy is not a forward proxy here (forward_proxy.enabled is false)"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# Request headers that are the proxy's own business, never the target's.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect", "content-encoding"}
TUNNELS = web.AppKey("tunnels", set[Tunnel])


def is_forward_request(request: web.BaseRequest) -> bool:
    """A ``CONNECT``, or a request whose target is an absolute URL for another host."""
    if request.method == "CONNECT":
        return True
    raw = request.raw_path
    if raw.startswith("/") or "://" not in raw:
        return False
    return not _is_own_authority(request)


def _is_own_authority(request: web.BaseRequest) -> bool:
    """An absolute-form target naming this very listener (served here, not forwarded)."""
    try:
        target = parse_target(request.raw_path)
    except TargetError:
        return False
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not sockname or target.port != sockname[1]:
        return False
    return target.host in {"localhost", str(sockname[0]).split("%", 1)[0]}


async def forward_proxy(request: web.Request) -> web.StreamResponse:
    """The handler for every request :func:`is_forward_request` picks out."""
    generation = request[GENERATION_KEY]
    settings = generation.config.forward_proxy
    if not settings.enabled:
        raise MethodNotAllowed(REASON_DISABLED + "; send requests to its /v1 API instead")
    audit = request[AUDIT_KEY]
    audit.route = FORWARD_PROXY_ROUTE  # not the target's path: it is not one of ours
    facts = audit.tunnel = TunnelFacts()
    if request.method == "CONNECT":
        target = _judge(generation, settings, audit, facts, "https://" + request.raw_path, authority=True)
        return await _tunnel(request, generation, audit, facts, target)
    target = _judge(generation, settings, audit, facts, request.raw_path, authority=False)
    return await _forward(request, generation, audit, facts, target)


def _refuse(audit: Audit, decision: policy.Decision) -> ForwardRefused:
    audit.record_decision(decision, Action.BLOCK)
    header = decision.reason.encode("ascii", "backslashreplace").decode("ascii")
    return ForwardRefused(decision.reason, headers={REASON_HEADER: header}, decision=decision)


def _judge(
    generation: Generation, settings: ForwardProxyConfig, audit: Audit, facts: TunnelFacts, raw: str, *, authority: bool
) -> Target:
    """Steps 2 and 3: parse, port, and what is decided without resolving (raises the refusal)."""
    try:
        if authority and any(c in raw[len("https://") :] for c in "/?#"):
            raise TargetError("a CONNECT target is host:port, nothing more")
        target = parse_target(raw if not authority else raw + "/")
        if authority and not raw.rpartition(":")[2].isdigit():
            raise TargetError("a CONNECT target needs a port")
    except TargetError as exc:
        decision = policy.Decision(policy.Verdict.INVALID, policy.REASON_INVALID.format(detail=exc), policy.Rule.PARSE)
        raise _refuse(audit, decision) from None
    audit.host, facts.port = target.host, target.port
    telemetry = next((h for h in settings.telemetry_hosts if h.matches(target.host)), None)
    facts.category = "telemetry" if telemetry is not None else None
    if target.port not in settings.allow_ports:
        ports = ", ".join(str(p) for p in sorted(settings.allow_ports)) or "none"
        reason = REASON_PORT.format(port=target.port, ports=ports)
        raise _refuse(audit, policy.Decision(policy.Verdict.EXTERNAL, reason, policy.Rule.PORT, target.host))
    rules = generation.config.rules
    if telemetry is not None:
        why = f"{TELEMETRY}: {telemetry.why}"
        decision = policy.Decision(
            policy.Verdict.EXTERNAL,
            policy.REASON_DENY_HOST.format(host=target.host, why=why),
            policy.Rule.DENY_HOST,
            target.host,
        )
    else:
        decision = policy.classify_static(target, rules) or policy.Decision(
            policy.Verdict.LOCAL, REASON_AT_CONNECT, policy.Rule.ALLOW_NETWORK, target.host
        )
    if decision.verdict is policy.Verdict.INVALID or (not decision.is_local and generation.config.airgapped):
        raise _refuse(audit, decision)
    audit.record_decision(decision, Action.FORWARD if decision.is_local else Action.WOULD_BLOCK)
    return target


def _connected(audit: Audit, decision: policy.Decision) -> None:
    """What the egress client decided when it connected (a would-block found earlier stays)."""
    if audit.decision is Action.WOULD_BLOCK:
        return
    audit.record_decision(decision, Action.FORWARD if decision.is_local else Action.WOULD_BLOCK)


class _Early:
    """Collects what the client sent after the ``CONNECT`` head before the tunnel took over."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        return None


class _Tunnelled(web.StreamResponse):
    """The answer that already went out on the raw transport: nothing more to send."""

    @property
    def prepared(self) -> bool:
        return True

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


async def _tunnel(
    request: web.Request, generation: Generation, audit: Audit, facts: TunnelFacts, target: Target
) -> web.StreamResponse:
    settings = generation.config.forward_proxy
    state = request.app[STATE]
    limit = generation.config.limits.max_in_flight
    if state.in_flight >= limit:
        raise Overloaded(
            f"The proxy is handling {limit} requests (limits.max_in_flight); retry shortly",
            headers={"Retry-After": OVERLOAD_RETRY_AFTER_S},
        )
    loop = asyncio.get_running_loop()
    tunnel = Tunnel(loop, settings.idle_timeout_s)
    state.in_flight += 1
    try:
        try:
            _, decision = await generation.egress.open_tunnel(target.host, target.port, lambda: tunnel.upstream)
        except AirgapViolation as exc:
            raise _refuse(audit, exc.decision or policy.unresolved(target.host)) from None
        _connected(audit, decision)
        return await _relay(request, tunnel, audit, facts)
    finally:
        state.in_flight -= 1


async def _relay(request: web.Request, tunnel: Tunnel, audit: Audit, facts: TunnelFacts) -> web.StreamResponse:
    transport = request.transport
    handler = request.protocol
    if transport is None or transport.is_closing():
        tunnel.finish("client closed")
        raise ConnectionResetError("client went away before the tunnel opened")
    tunnels = request.app[TUNNELS]
    early = _Early()
    cast(Any, handler).set_parser(early)  # aiohttp hands over the bytes it already buffered
    transport.write(ESTABLISHED)
    tunnel.attach(transport, early.data)
    tunnels.add(tunnel)
    try:
        audit.error = await tunnel.wait()
    finally:
        tunnels.discard(tunnel)
        tunnel.finish("cancelled")
        facts.bytes_up, facts.bytes_down = tunnel.bytes_up, tunnel.bytes_down
        audit.bytes_out = tunnel.bytes_down
        # Give the connection back to aiohttp, closed: it learns so once this "response" is done.
        transport.set_protocol(handler)
        if tunnel.client.lost:
            asyncio.get_running_loop().call_soon(handler.connection_lost, None)
        elif not transport.is_closing():
            transport.close()  # the upstream went away before the tunnel was attached
    if audit.error == SHUTDOWN:
        audit.error = "closed by the shutdown drain"
    response = _Tunnelled(status=200)
    response.force_close()
    audit.status = 200
    return response


async def _forward(
    request: web.Request, generation: Generation, audit: Audit, facts: TunnelFacts, target: Target
) -> web.StreamResponse:
    """An absolute-form request: through the egress client (no redirect is followed), relayed as it comes."""
    body = await request.read()
    facts.bytes_up = len(body)
    listed = {t.strip().lower() for v in request.headers.getall("Connection", []) for t in v.split(",")}
    headers = [
        (name, value)
        for name, value in request.headers.items()
        if (lowered := name.lower()) not in _NOT_FORWARDED
        and lowered not in listed
        and not lowered.startswith("x-airgap-")
    ]
    try:
        upstream = await generation.egress.request(request.method, target.url, headers=headers, body=body or None)
    except AirgapViolation as exc:
        raise _refuse(audit, exc.decision or policy.unresolved(target.host)) from None
    try:
        if upstream.decision is not None:
            _connected(audit, upstream.decision)
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=client_response_headers(upstream.headers)
        )
        await response.prepare(request)
        async for chunk in generation.egress.iter_chunks(upstream):
            facts.bytes_down += len(chunk)
            await response.write(chunk)
        await response.write_eof()
        audit.bytes_out = facts.bytes_down
        return response
    finally:
        upstream.release()


async def drain(app: web.Application) -> None:
    """``on_shutdown``: open tunnels get ``timeouts.shutdown_grace_s``, then are closed."""
    grace = app[STATE].config.timeouts.shutdown_grace_s
    loop = asyncio.get_running_loop()
    tunnels: set[Tunnel] = app[TUNNELS]
    for tunnel in list(tunnels):
        loop.call_later(grace, tunnel.close)
