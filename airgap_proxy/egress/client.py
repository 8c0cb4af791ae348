"""The single egress path: the only place that opens outbound connections.

Every outbound HTTP request of the proxy goes through :class:`EgressClient`:

1. One lean HTTP/1.1 client (:mod:`airgap_proxy.http1`) with keep-alive
   pools per upstream. It never reads proxy variables, keeps no cookies,
   never decompresses and never follows a redirect (it has no code that
   would), with explicit connect and read timeouts.
2. Every new connection is opened here, by :meth:`EgressClient._connect`: a
   name is resolved through :class:`PolicyResolver`, which re-applies the
   address check of the policy to every address it resolves to, just before
   connecting, so a name that changes its answer (DNS rebinding) cannot reach
   outside. Deny-listed names are refused before the lookup.
3. The exact address of every socket is checked again before it is created,
   IP literals included.

Connection errors are translated into :mod:`airgap_proxy.errors` here, and only here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TypeVar

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from airgap_proxy import policy
from airgap_proxy.egress import guard
from airgap_proxy.egress.http1 import Http1Connection, Http1Pool, Origin, UpstreamResponse
from airgap_proxy.errors import AirgapViolation, UpstreamConnectTimeout, UpstreamError, UpstreamTimeout
from airgap_proxy.policy.targets import IPAddress, Target

OnWouldBlock = Callable[[policy.Decision], None]
P = TypeVar("P", bound=asyncio.BaseProtocol)
_ORIGIN_CACHE = 1024


class EgressRefused(OSError):
    """Raised inside the connector when the policy refuses an address."""

    def __init__(self, decision: policy.Decision):
        super().__init__(decision.reason)
        self.decision = decision


def _refusal(exc: BaseException) -> EgressRefused | None:
    """Find an :class:`EgressRefused` in an aiohttp connector error chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, EgressRefused):
            return current
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, EgressRefused):
            return os_error
        current = current.__cause__ or current.__context__
    return None


def resolved_addresses(results: list[ResolveResult]) -> list[IPAddress]:
    """The addresses of a resolver's answer, zone ids dropped."""
    return [ipaddress.ip_address(r["host"].split("%", 1)[0]) for r in results]


class PolicyResolver(AbstractResolver):
    """Resolve with ``inner`` then refuse any address the policy does not allow."""

    def __init__(
        self, rules: policy.Rules, enforce: bool, inner: AbstractResolver, on_would_block: OnWouldBlock
    ) -> None:
        self._rules = rules
        self._enforce = enforce
        self._inner = inner
        self._on_would_block = on_would_block

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results, _ = await self.resolve_checked(host, port, family)
        return results

    async def resolve_checked(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> tuple[list[ResolveResult], policy.Decision]:
        """The answer and the policy's decision on it (not local only in report-only mode)."""
        name = host.rstrip(".").lower()
        denied = policy.deny_host_match(name, self._rules)
        refused_name: policy.Decision | None = None
        if denied is not None:
            # Refuse before asking DNS: even the lookup of a hosted API would leak.
            decision = policy.Decision(
                policy.Verdict.EXTERNAL,
                policy.REASON_DENY_HOST.format(host=name, why=denied.why or "deny_hosts"),
                policy.Rule.DENY_HOST,
                name,
            )
            if self._enforce:
                raise EgressRefused(decision)
            self._on_would_block(decision)
            refused_name = decision
        try:
            results = await self._inner.resolve(host, port, family)
        except OSError as exc:
            if self._enforce:
                raise EgressRefused(policy.unresolved(name)) from exc
            raise
        decision = policy.check_addresses(name, resolved_addresses(results), self._rules)
        if not decision.is_local:
            if self._enforce:
                raise EgressRefused(decision)
            self._on_would_block(decision)
        if refused_name is not None:
            # Report-only: the name itself is what the policy refuses, whatever it resolved to.
            return results, policy.Decision(
                refused_name.verdict, refused_name.reason, refused_name.rule, name, decision.addresses
            )
        return results, decision

    async def close(self) -> None:
        await self._inner.close()


class EgressClient:
    """The proxy's one outbound HTTP client. Create with :meth:`start`."""

    def __init__(
        self,
        rules: policy.Rules,
        *,
        enforce: bool,
        connect_timeout_s: float,
        read_timeout_s: float,
        resolver: AbstractResolver | None = None,
        on_would_block: OnWouldBlock | None = None,
    ) -> None:
        self._rules = rules
        self._enforce = enforce
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._inner_resolver = resolver
        self._on_would_block: OnWouldBlock = on_would_block or (lambda decision: None)
        self._resolver: PolicyResolver | None = None
        self._pool: Http1Pool | None = None
        self._tls: ssl.SSLContext | None = None
        self._origins: dict[str, tuple[Origin, str]] = {}

    async def start(self) -> None:
        inner = self._inner_resolver or ThreadedResolver()
        self._resolver = PolicyResolver(self._rules, self._enforce, inner, self._on_would_block)
        self._pool = Http1Pool(self._connect, read_timeout_s=self._read_timeout_s)

    @property
    def running(self) -> bool:
        return self._pool is not None

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    def _check_address(self, host: str) -> tuple[IPAddress, policy.Decision]:
        """Re-check the exact address a socket is about to connect to."""
        address = ipaddress.ip_address(host.split("%", 1)[0])
        decision = policy.check_addresses(address.compressed, [address], self._rules)
        if not decision.is_local:
            if self._enforce:
                raise EgressRefused(decision)
            self._on_would_block(decision)
        return address, decision

    async def _connect(self, origin: Origin, pool: Http1Pool) -> Http1Connection:
        """Open a connection to ``origin`` for the HTTP/1.1 pool."""
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.scheme == "https" else None
        conn, decision = await self._open(origin.host, origin.port, lambda: Http1Connection(loop, origin, pool), tls)
        # What the policy said about this connection travels with every
        # response on it, keep-alive reuse included, into the audit.
        conn.decision = decision
        return conn

    async def open_tunnel(self, host: str, port: int, factory: Callable[[], P]) -> tuple[P, policy.Decision]:
        """Connect ``factory``'s protocol to ``host:port`` (the forward proxy's tunnels).

        The same path as every upstream connection: the name is resolved once,
        through the policy, and the checked address is the one connected to.
        Raises :class:`AirgapViolation` when refused, :class:`UpstreamError` otherwise.
        """
        if self._resolver is None:
            raise UpstreamError("egress client is not running")
        return await self._open(host, port, factory, None)

    async def _open(
        self, host_name: str, target_port: int, factory: Callable[[], P], tls: ssl.SSLContext | None
    ) -> tuple[P, policy.Decision]:
        """Resolve ``host_name`` through the policy, check each address, connect: the one way out."""
        assert self._resolver is not None
        name_decision: policy.Decision | None = None
        try:
            ipaddress.ip_address(host_name.split("%", 1)[0])
            candidates = [(host_name, target_port)]
        except ValueError:
            try:
                results, name_decision = await self._resolver.resolve_checked(host_name, target_port, socket.AF_UNSPEC)
            except EgressRefused as exc:
                raise AirgapViolation(exc.decision.reason, decision=exc.decision) from exc
            except OSError as exc:
                raise UpstreamError(f"cannot connect to upstream: {host_name} does not resolve") from exc
            candidates = [(r["host"], r["port"]) for r in results]
        loop = asyncio.get_running_loop()
        failure: OSError | None = None
        for host, port in candidates:
            try:
                address, address_decision = self._check_address(host)
            except EgressRefused as exc:
                raise AirgapViolation(exc.decision.reason, decision=exc.decision) from exc
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            protocol: P | None = None
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    with guard.through_egress():  # checked above: the self-egress guard lets it pass
                        await loop.sock_connect(sock, (host, port))
                    _, protocol = await loop.create_connection(
                        factory, sock=sock, ssl=tls, server_hostname=host_name if tls is not None else None
                    )
                return protocol, name_decision or address_decision
            except TimeoutError:
                raise UpstreamConnectTimeout("upstream did not accept the connection in time") from None
            except ssl.SSLError as exc:
                raise UpstreamError(f"TLS with the upstream failed: {exc.reason or exc.__class__.__name__}") from None
            except OSError as exc:
                failure = exc
            finally:
                if protocol is None:
                    # Any way out but a connection (a failure, a timeout, the
                    # client's cancellation) closes the socket now, not at GC.
                    sock.close()
        reason = (failure.strerror if failure is not None else None) or "no address"
        raise UpstreamError(f"cannot connect to upstream: {reason}".lower())

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _origin(self, url: str) -> tuple[Origin, str]:
        """The origin and request target of ``url`` (cached: upstream base URLs repeat)."""
        found = self._origins.get(url)
        if found is None:
            parsed = URL(url, encoded=True)
            if parsed.scheme not in ("http", "https") or not parsed.raw_host or parsed.port is None:
                raise UpstreamError("the upstream URL is not an http(s) URL with a host")
            found = (Origin(parsed.scheme, parsed.raw_host, parsed.port), parsed.raw_path_qs or "/")
            if len(self._origins) < _ORIGIN_CACHE:
                self._origins[url] = found
        return found

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes | None,
        timeout_s: float | None = None,
    ) -> UpstreamResponse:
        """Send one request; the caller must release the returned response.

        Raises :class:`AirgapViolation` when the target is refused at connect
        time, :class:`UpstreamTimeout` or :class:`UpstreamError` otherwise.
        """
        if self._pool is None:
            raise UpstreamError("egress client is not running")
        origin, target = self._origin(url)
        items = headers.items() if isinstance(headers, Mapping) else headers
        try:
            return await self._pool.request(origin, method, target, items, body, timeout_s=timeout_s)
        except BaseException as exc:
            raise translate_error(exc) from exc

    async def decide(self, target: Target) -> policy.Decision:
        """Classify ``target`` now, resolving names with the client's own resolver."""
        static = policy.classify_static(target, self._rules)
        if static is not None:
            return static
        inner = self._inner_resolver or ThreadedResolver()
        try:
            results = await inner.resolve(target.host, target.port, socket.AF_UNSPEC)
        except OSError:
            return policy.unresolved(target.host)
        return policy.check_addresses(target.host, resolved_addresses(results), self._rules)

    async def read_limited(self, response: UpstreamResponse, limit: int) -> bytes:
        """Read a whole (small) response body, refusing more than ``limit`` bytes."""
        return await response.read(limit)

    def iter_chunks(self, response: UpstreamResponse) -> AsyncIterator[bytes]:
        """Yield the response body as it arrives (errors are already ours)."""
        return response.iter_chunks()


def translate_error(exc: BaseException) -> BaseException:
    """Map a connection-level exception to our error tree (ours and cancellation pass through)."""
    if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
        return exc
    refused = _refusal(exc)
    if refused is not None:
        return AirgapViolation(refused.decision.reason, decision=refused.decision)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("upstream did not answer in time")
    if isinstance(exc, OSError):
        return UpstreamError(f"upstream connection failed: {exc.__class__.__name__}")
    return exc


def system_resolve(host: str) -> list[IPAddress]:
    """Resolve ``host`` with the system resolver (blocking; for the CLI)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise policy.ResolutionError(host) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses
