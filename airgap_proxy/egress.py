"""The single egress path: the only place that opens outbound connections.

Every outbound HTTP request of the proxy goes through :class:`EgressClient`:

1. One ``aiohttp.ClientSession`` with ``trust_env=False`` (proxy variables are
   ignored), no cookie jar, no automatic decompression, explicit timeouts and
   keep-alive pooling. Redirects are never followed.
2. Its resolver (:class:`PolicyResolver`) re-applies the address check of the
   policy to every address a name resolves to, just before connecting, so a
   name that changes its answer (DNS rebinding) cannot reach outside.
3. Its socket factory re-checks the exact address of every socket it is asked
   to create, IP literals included (aiohttp does not resolve those).

aiohttp errors are translated into :mod:`airgap_proxy.errors` here, and only here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from airgap_proxy import policy
from airgap_proxy.errors import AirgapViolation, UpstreamError, UpstreamTimeout
from airgap_proxy.targets import IPAddress, Target

OnWouldBlock = Callable[[policy.Decision], None]


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
        name = host.rstrip(".").lower()
        denied = policy.deny_host_match(name, self._rules)
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
        return results

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
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._inner_resolver = resolver
        self._on_would_block: OnWouldBlock = on_would_block or (lambda decision: None)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        inner = self._inner_resolver or ThreadedResolver()
        connector = aiohttp.TCPConnector(
            resolver=PolicyResolver(self._rules, self._enforce, inner, self._on_would_block),
            socket_factory=self._socket_factory,
            limit=0,
            limit_per_host=0,
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _socket_factory(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        decision = policy.check_addresses(address.compressed, [address], self._rules)
        if not decision.is_local:
            if self._enforce:
                raise EgressRefused(decision)
            self._on_would_block(decision)
        return socket.socket(family=family, type=type_, proto=proto)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        request_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request; the caller must release the returned response.

        Raises :class:`AirgapViolation` when the connector refused the target,
        :class:`UpstreamTimeout` or :class:`UpstreamError` otherwise.
        """
        if self._session is None:
            raise UpstreamError("egress client is not running")
        try:
            return await self._session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=request_timeout or self._timeout,
            )
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

    async def read_limited(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        """Read a whole (small) response body, refusing more than ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.iter_chunks(response):
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def iter_chunks(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Yield the response body as it arrives, translating errors."""
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except BaseException as exc:
            raise translate_error(exc) from exc


def translate_error(exc: BaseException) -> BaseException:
    """Map an aiohttp/asyncio exception to our error tree (others pass through)."""
    if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
        return exc
    refused = _refusal(exc)
    if refused is not None:
        return AirgapViolation(refused.decision.reason)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or exc.os_error.__class__.__name__
        return UpstreamError(f"cannot connect to upstream: {reason}".lower())
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError("upstream response was cut short")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError("upstream closed the connection")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(f"upstream request failed: {exc.__class__.__name__}")
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
