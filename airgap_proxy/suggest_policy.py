"""From a report-only run's audit log to a policy that enforces it (pure): ``airgap-proxy suggest-policy``.

Smokescreen's report -> enforce workflow, automated. Every audit event that
says ``would_block`` names the host the policy judged and the addresses it
saw. Destinations whose addresses are all non-public (private, shared,
unique-local ranges: a GPU box on another subnet, a model server behind a
VPN) are the ones enforcement would break although nothing leaves the
network: their addresses become ``allow_networks`` entries, collapsed. The
rest (public addresses, deny-listed hosted APIs, names that do not resolve,
link-local and metadata addresses, which are never local) is what
enforcement would block, listed with its count and reason.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from airgap_proxy import policy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Rules that no allow_networks entry can lift.
_NEVER = frozenset({"deny_host", "deny_network", "provider_type", "parse", "unresolved", "zone"})


@dataclass
class Destination:
    """One host seen in would_block events: how often, its addresses, the last reason."""

    host: str
    count: int = 0
    addresses: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    reason: str = ""


@dataclass(frozen=True)
class Suggestion:
    """What to add to ``allow_networks``, the hosts it keeps working, and what enforcement blocks."""

    allow_networks: tuple[Network, ...]
    kept: tuple[Destination, ...]
    blocked: tuple[Destination, ...]
    events: int
    would_block: int


def read_events(lines: Iterable[str]) -> list[dict[str, object]]:
    """The JSON audit events among ``lines`` (other log lines are skipped)."""
    events = []
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            event = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def suggest(events: list[dict[str, object]], rules: policy.Rules) -> Suggestion:
    """The suggestion for these audit events under the current ``rules``."""
    seen: dict[str, Destination] = {}
    would_block = 0
    for event in events:
        if event.get("decision") != "would_block":
            continue
        would_block += 1
        host = str(event.get("host") or event.get("upstream") or "?")
        destination = seen.setdefault(host, Destination(host))
        destination.count += 1
        raw = event.get("addresses")
        if isinstance(raw, list):
            destination.addresses.update(a for a in raw if isinstance(a, str))
        destination.rules.add(str(event.get("rule")))
        destination.reason = str(event.get("reason") or destination.reason)
    kept, blocked, networks = [], [], []
    for destination in seen.values():
        liftable = _liftable(destination, rules)
        if liftable is None:
            blocked.append(destination)
        else:
            kept.append(destination)
            networks.extend(liftable)
    collapsed = tuple(ipaddress.collapse_addresses(n for n in networks if n.version == 4)) + tuple(
        ipaddress.collapse_addresses(n for n in networks if n.version == 6)
    )
    by_count = sorted(blocked, key=lambda d: (-d.count, d.host))
    return Suggestion(collapsed, tuple(sorted(kept, key=lambda d: d.host)), tuple(by_count), len(events), would_block)


def _liftable(destination: Destination, rules: policy.Rules) -> list[Network] | None:
    """The host networks that would make this destination local, or None when it must stay blocked."""
    if not destination.addresses or destination.rules & _NEVER:
        return None
    networks: list[Network] = []
    for text in destination.addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return None
        if address.is_global or address.is_link_local or address.is_multicast or address.is_unspecified:
            return None
        if any(address in n for n in rules.deny_networks):
            return None
        networks.append(ipaddress.ip_network(address))
    return networks


def render(suggestion: Suggestion, rules: policy.Rules) -> str:
    """The suggestion as a YAML ``policy:`` snippet and a commented report."""
    lines = [
        f"# {suggestion.events} audit events read, {suggestion.would_block} would_block.",
    ]
    if suggestion.allow_networks:
        current = [str(n) for n in rules.allow_networks]
        lines.append("# To keep these local destinations working while air-gapped:")
        lines += [f"#   {d.host} ({', '.join(sorted(d.addresses))}), {d.count} requests" for d in suggestion.kept]
        lines += ["policy:", "  allow_networks:"]
        lines += [f'    - "{n}"' for n in current]
        lines += [f'    - "{n}"  # added' for n in suggestion.allow_networks]
    else:
        lines.append("# Nothing to add: every would_block destination is external.")
    if suggestion.blocked:
        lines.append("# Enforcement would block (external; not suggested):")
        lines += [f"#   {d.host}: {d.count} requests; {d.reason}" for d in suggestion.blocked]
    return "\n".join(lines) + "\n"
