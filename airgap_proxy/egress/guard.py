"""The self-egress guard: a PEP 578 audit hook that refuses the process's own stray connections.

Every outbound connection of the proxy goes through :mod:`.client`, which
marks its own connects (:func:`through_egress`). Any other ``socket.connect``
or ``socket.sendto`` in the process, by a dependency say, to an address the
policy does not allow (outside ``allow_networks``, or in ``deny_networks``)
raises ``PermissionError`` before the system call, and is logged with the
module that asked for it; in report-only mode it is logged and let through.
A lookup (``socket.getaddrinfo``) of a name on the deny list is refused the
same way anywhere in the process: the egress client never asks DNS for one,
so such a lookup is always a stray. Unix sockets are local and pass. A
connect to a name rather than an address (``"example.com"``, ``"127.2"``,
``"0x7f000002"``) is refused: the socket resolves it in C, where no address
check sees the result (that lookup has happened by the time the hook runs).

An audit hook cannot be removed: :func:`install` is for the ``serve``
process (and its forked workers, which inherit it), once, before it serves.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airgap_proxy import policy
from airgap_proxy.logs import get_logger

_log = get_logger("airgap_proxy.egress.guard")
_EGRESS = contextvars.ContextVar("airgap_proxy_egress", default=False)
# Frames of these modules are the plumbing between a caller and the socket: skipped to name the caller.
_PLUMBING = ("socket", "ssl", "selectors", "asyncio", "airgap_proxy.egress.guard", "concurrent", "threading")
REASON_STRAY = "{event} to {address} outside the egress path: {reason}"
REASON_BY_NAME = "a connect to the name {host} resolves it where no address check can see it"


@dataclass
class _State:
    rules: policy.Rules
    enforce: bool
    refused: int = 0
    reported: int = 0


@dataclass
class _Installed:
    state: _State | None = None


_installed = _Installed()
_lock = threading.Lock()
_inside = threading.local()


def install(rules: policy.Rules, *, enforce: bool) -> None:
    """Install the hook (once per process); later calls only update the rules."""
    with _lock:
        if _installed.state is not None:
            _installed.state.rules, _installed.state.enforce = rules, enforce
            return
        _installed.state = _State(rules, enforce)
        sys.addaudithook(_hook)


def update(rules: policy.Rules, *, enforce: bool) -> None:
    """The rules of a reloaded configuration (no-op when the hook is not installed)."""
    state = _installed.state
    if state is not None:
        state.rules, state.enforce = rules, enforce


def installed() -> bool:
    return _installed.state is not None


def counts() -> tuple[int, int]:
    """(refused, reported) stray attempts since the hook was installed."""
    state = _installed.state
    return (state.refused, state.reported) if state is not None else (0, 0)


@contextlib.contextmanager
def through_egress() -> Iterator[None]:
    """Mark connects made in this context as the egress client's own (already checked by the policy)."""
    token = _EGRESS.set(True)
    try:
        yield
    finally:
        _EGRESS.reset(token)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in ("socket.connect", "socket.sendto", "socket.getaddrinfo"):
        return
    state = _installed.state
    if state is None or _EGRESS.get() or getattr(_inside, "busy", False):
        return
    _inside.busy = True
    try:
        decision = _judge(event, args, state.rules)
        if decision is None or decision.is_local:
            return
        _stray(event, decision, state)
    finally:
        _inside.busy = False


def _judge(event: str, args: tuple[Any, ...], rules: policy.Rules) -> policy.Decision | None:
    """The policy's decision on this attempt, or None when it is not one to judge."""
    if event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str) or not host:
            return None
        name = host.rstrip(".").lower()
        denied = policy.deny_host_match(name, rules)
        if denied is None:
            return None
        reason = policy.REASON_DENY_HOST.format(host=name, why=denied.why or "deny_hosts")
        return policy.Decision(policy.Verdict.EXTERNAL, reason, policy.Rule.DENY_HOST, name)
    sock, address = args[0], args[1]
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return None
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None
    try:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        # A name: the socket would resolve it in C, where no hook sees the address. Fail closed.
        name = address[0].rstrip(".").lower()
        if name == "localhost":
            return None
        return policy.Decision(policy.Verdict.EXTERNAL, REASON_BY_NAME.format(host=name), policy.Rule.PARSE, name)
    return policy.check_addresses(ip.compressed, [ip], rules)


def _stray(event: str, decision: policy.Decision, state: _State) -> None:
    caller = _caller()
    reason = REASON_STRAY.format(event=event, address=decision.host, reason=decision.reason)
    if state.enforce:
        state.refused += 1
        _log.error("self_egress_refused", caller=caller, audit_event=event, host=decision.host, reason=reason)
        raise PermissionError(f"airgap-proxy refused {reason}")
    state.reported += 1
    _log.warning("self_egress_would_block", caller=caller, audit_event=event, host=decision.host, reason=reason)


def _caller() -> str:
    """The module that asked for the connection: the first frame outside the socket plumbing."""
    frame = sys._getframe(2)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", "?"))
        if not name.startswith(_PLUMBING):
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return "?"
