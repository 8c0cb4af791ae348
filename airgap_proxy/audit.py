"""The canonical audit event: one per proxied request.

Filled in as the request is handled and emitted once by the middleware. It
holds only metadata: never prompt text, never keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airgap_proxy.policy import Decision

# What the load-time record says of an upstream whose name is judged when it is connected to.
REASON_AT_CONNECT = "addresses checked at connect time"


class Action(enum.Enum):
    """What the proxy did with the request's target."""

    FORWARD = "forward"
    BLOCK = "block"
    WOULD_BLOCK = "would_block"
    FALLBACK = "fallback"
    NONE = "none"


@dataclass(slots=True)
class Tunnel:
    """What the audit event of a forward-proxy request adds: the target's port, its category, byte counts (never bytes).

    The target host and the addresses judged are the event's own ``host`` and ``addresses``.
    """

    port: int | None = None
    category: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0

    def fields(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "category": self.category,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


@dataclass(slots=True)
class Audit:
    request_id: str
    method: str
    route: str
    api: str | None = None
    tenant: str | None = None
    model: str | None = None
    upstream: str | None = None
    # The host the policy judged and the addresses it saw (when it resolved or was given any).
    host: str | None = None
    addresses: tuple[str, ...] = ()
    decision: Action = Action.NONE
    verdict: str | None = None
    reason: str | None = None
    rule: str | None = None
    stream: bool = False
    status: int = 0
    error_code: str | None = None
    error: str | None = None
    bytes_out: int = 0
    stripped: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # For the metrics, not the log: seconds from sending to the upstream until
    # its first body byte, and until its last.
    upstream_first_byte_s: float | None = None
    upstream_total_s: float | None = None
    # For X-Airgap-Overhead-Ms: when the handler started (perf_counter seconds),
    # and the seconds since then spent waiting for the client's body or the upstream.
    started: float = 0.0
    waited_s: float = 0.0
    overhead_ms: float | None = None
    # Set for a CONNECT or absolute-form request (the forward proxy): its fields join the event.
    tunnel: Tunnel | None = None

    def record_decision(self, decision: Decision, action: Action) -> None:
        """The policy's decision on a forward-proxy target, and what was done about it."""
        self.verdict, self.reason, self.rule = decision.verdict.value, decision.reason, decision.rule.value
        if decision.addresses:
            self.addresses = decision.addresses
        self.decision = action

    def record_policy(self, upstream: str, decision: Decision | None) -> None:
        """The upstream chosen and the policy's decision on it (None: judged at connect time)."""
        self.upstream = upstream
        if decision is None:
            self.decision = Action.FORWARD
            self.verdict, self.reason, self.rule = "local", REASON_AT_CONNECT, None
            return
        self.verdict, self.reason, self.rule = decision.verdict.value, decision.reason, decision.rule.value
        self.host, self.addresses = decision.host or None, decision.addresses
        self.decision = Action.FORWARD if decision.is_local else Action.WOULD_BLOCK

    def record_connect(self, decision: Decision | None) -> None:
        """What the policy said when the response's connection was opened.

        Names are judged at connect time: the load-time record only says so,
        and in report-only mode a name resolving outside is a ``would_block``
        on every request over that connection, not only the one that opened it.
        """
        if decision is None or (decision.is_local and self.rule is not None):
            return
        self.verdict, self.reason, self.rule = decision.verdict.value, decision.reason, decision.rule.value
        self.host, self.addresses = decision.host or None, decision.addresses
        if not decision.is_local:
            self.decision = Action.WOULD_BLOCK

    def record_refusal(self, upstream: str, decision: Decision | None, reason: str) -> None:
        """The policy refused the request's upstream (before or at connect time)."""
        self.upstream = upstream
        self.decision = Action.BLOCK
        self.verdict = decision.verdict.value if decision else "external"
        self.reason = reason
        self.rule = decision.rule.value if decision else None
        if decision is not None:
            self.host, self.addresses = decision.host or None, decision.addresses

    def overhead(self, now: float) -> str:
        """Milliseconds spent inside the proxy until ``now``, waits excluded; recorded for the log."""
        text = "%.3f" % (max(0.0, now - self.started - self.waited_s) * 1000)
        self.overhead_ms = float(text)
        return text

    def fields(self, duration_ms: float) -> dict[str, Any]:
        fields = self._fields(duration_ms)
        if self.tunnel is not None:
            fields.update(self.tunnel.fields())
        return fields

    def _fields(self, duration_ms: float) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "api": self.api,
            "tenant": self.tenant,
            "model": self.model,
            "upstream": self.upstream,
            "host": self.host,
            "addresses": list(self.addresses),
            "decision": self.decision.value,
            "verdict": self.verdict,
            "reason": self.reason,
            "rule": self.rule,
            "stream": self.stream,
            "status": self.status,
            "error_code": self.error_code,
            "error": self.error,
            "bytes_out": self.bytes_out,
            "stripped_fields": self.stripped or None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "duration_ms": round(duration_ms, 3),
            "overhead_ms": self.overhead_ms,
        }
