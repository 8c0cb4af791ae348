"""The egress policy: is a target local, external, or invalid? (pure, no I/O).

Resolution is the only step that needs the network; it is injected as a
``Resolve`` callable so the module stays pure. The connect-time check in
:mod:`airgap_proxy.egress` calls :func:`check_addresses` with the addresses it is
about to connect to.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from airgap_proxy.policy.targets import IPAddress, Target, TargetError, normalise_host, parse_target

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Verdict(enum.Enum):
    LOCAL = "local"
    EXTERNAL = "external"
    INVALID = "invalid"


class Rule(enum.Enum):
    """Which step of the policy decided (stable names for logs and tests)."""

    PARSE = "parse"
    DENY_HOST = "deny_host"
    DENY_NETWORK = "deny_network"
    ALLOW_NETWORK = "allow_network"
    NOT_ALLOWED_NETWORK = "not_allowed_network"
    ALLOW_HOST = "allow_host"
    UNRESOLVED = "unresolved"
    ZONE = "zone"
    PROVIDER_TYPE = "provider_type"
    PORT = "port"


# Reasons are templates; tests import them and format the expected text.
REASON_INVALID = "invalid URL: {detail}"
REASON_DENY_HOST = "host {host} is on the deny list ({why})"
REASON_DENY_NETWORK = "address {address} of host {host} is in deny_networks ({network})"
REASON_NOT_ALLOWED = "address {address} of host {host} is not in allow_networks"
REASON_EMBEDDED = "address {address} of host {host} embeds {embedded} ({kind})"
REASON_ALLOW_NETWORK = "all addresses of host {host} are in allow_networks ({addresses})"
REASON_ALLOW_HOST = "host {host} is on allow_hosts ({pattern})"
REASON_UNRESOLVED = "host {host} does not resolve"
REASON_NO_ADDRESSES = "host {host} resolved to no addresses"
REASON_COMPATIBLE = (
    "address {address} of host {host} is IPv4-compatible IPv6 (::a.b.c.d), which is routed as IPv6,"
    " off the host; it is not in allow_networks"
)
REASON_ZONE = "IPv6 zone id on a non-link-local address {address} is ambiguous"

HOSTED_API = "hosted LLM API"
METADATA = "cloud metadata service"

# Built-in deny list: (pattern, why). ``*.`` matches one or more leading labels;
# a ``*`` label in the middle matches exactly one label.
BUILTIN_DENY_HOSTS: tuple[tuple[str, str], ...] = (
    ("openai.com", HOSTED_API),
    ("*.openai.com", HOSTED_API),
    ("*.openai.azure.com", HOSTED_API),
    ("azure.com", HOSTED_API),
    ("*.azure.com", HOSTED_API),
    ("*.cognitiveservices.azure.com", HOSTED_API),
    ("*.googleapis.com", HOSTED_API),
    ("anthropic.com", HOSTED_API),
    ("*.anthropic.com", HOSTED_API),
    ("bedrock-runtime.*.amazonaws.com", HOSTED_API),
    ("bedrock.*.amazonaws.com", HOSTED_API),
    ("bedrock-runtime-fips.*.amazonaws.com", HOSTED_API),
    ("api.mistral.ai", HOSTED_API),
    ("*.mistral.ai", HOSTED_API),
    ("api.cohere.com", HOSTED_API),
    ("api.cohere.ai", HOSTED_API),
    ("*.cohere.com", HOSTED_API),
    ("api.groq.com", HOSTED_API),
    ("api.together.xyz", HOSTED_API),
    ("api.together.ai", HOSTED_API),
    ("openrouter.ai", HOSTED_API),
    ("*.openrouter.ai", HOSTED_API),
    ("api.deepseek.com", HOSTED_API),
    ("api.x.ai", HOSTED_API),
    ("api.fireworks.ai", HOSTED_API),
    ("api.perplexity.ai", HOSTED_API),
    ("api-inference.huggingface.co", HOSTED_API),
    ("router.huggingface.co", HOSTED_API),
    ("*.endpoints.huggingface.cloud", HOSTED_API),
    ("api.replicate.com", HOSTED_API),
    ("api.ai21.com", HOSTED_API),
    ("api.cerebras.ai", HOSTED_API),
    ("api.sambanova.ai", HOSTED_API),
    ("api.deepinfra.com", HOSTED_API),
    ("api.novita.ai", HOSTED_API),
    ("api.hyperbolic.xyz", HOSTED_API),
    ("api.lambdalabs.com", HOSTED_API),
    ("generativelanguage.googleapis.com", HOSTED_API),
    ("*.aiplatform.googleapis.com", HOSTED_API),
    ("metadata.google.internal", METADATA),
    ("metadata.goog", METADATA),
    ("instance-data", METADATA),
    ("instance-data.ec2.internal", METADATA),
)

DEFAULT_ALLOW_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
# Always denied, whatever allow_networks says: metadata services, some of
# which sit inside ranges an operator may allow.
BUILTIN_DENY_NETWORKS: tuple[str, ...] = (
    "169.254.169.254/32",
    "169.254.170.2/32",
    "169.254.169.123/32",
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",
    "100.100.100.200/32",
)
DEFAULT_ALLOW_HOSTS: tuple[str, ...] = ("localhost", "*.svc.cluster.local")

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_COMPATIBLE = ipaddress.IPv6Network("::/96")


class ResolutionError(Exception):
    """The injected resolver could not resolve a name."""


Resolve = Callable[[str], Sequence[IPAddress]]


@dataclass(frozen=True, slots=True)
class HostPattern:
    """An exact host name or a wildcard pattern, normalised at load."""

    pattern: str
    why: str = ""

    def matches(self, host: str) -> bool:
        return host_matches(self.pattern, host)


@dataclass(frozen=True, slots=True)
class Rules:
    """The effective policy, validated and normalised at load."""

    allow_networks: tuple[Network, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_ALLOW_NETWORKS)
    )
    deny_networks: tuple[Network, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in BUILTIN_DENY_NETWORKS)
    )
    allow_hosts: tuple[HostPattern, ...] = field(
        default_factory=lambda: tuple(HostPattern(h) for h in DEFAULT_ALLOW_HOSTS)
    )
    deny_hosts: tuple[HostPattern, ...] = field(
        default_factory=lambda: tuple(HostPattern(p, w) for p, w in BUILTIN_DENY_HOSTS)
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict, the human reason for it, and the rule that decided."""

    verdict: Verdict
    reason: str
    rule: Rule
    host: str = ""
    addresses: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        return self.verdict is Verdict.LOCAL


def host_matches(pattern: str, host: str) -> bool:
    """Match a normalised host against ``name``, ``*.suffix`` or ``a.*.c``.

    A leading ``*.`` matches one or more labels; any other ``*`` label matches
    exactly one label. Nothing matches partially inside a label.
    """
    if pattern == host:
        return True
    if "*" not in pattern:
        return False
    p_labels = pattern.split(".")
    h_labels = host.split(".")
    if p_labels[0] == "*" and "*" not in p_labels[1:]:
        suffix = p_labels[1:]
        return len(h_labels) > len(suffix) and h_labels[-len(suffix) :] == suffix
    if p_labels[0] == "*":
        # Leading multi-label wildcard followed by more wildcards: try every split.
        rest = p_labels[1:]
        return any(_labels_match(rest, h_labels[i:]) for i in range(1, len(h_labels) - len(rest) + 1))
    return _labels_match(p_labels, h_labels)


def _labels_match(pattern: Sequence[str], host: Sequence[str]) -> bool:
    return len(pattern) == len(host) and all(p in ("*", h) for p, h in zip(pattern, host, strict=False))


def validate_allow_pattern(raw: str) -> str:
    """Normalise an ``allow_hosts`` entry: an exact name or ``*.suffix`` only."""
    pattern = validate_host_pattern(raw)
    if "*" in pattern.split(".", 1)[-1] or ("*" in pattern and not pattern.startswith("*.")):
        raise ValueError("allow_hosts takes exact names or a leading '*.' wildcard only")
    return pattern


def validate_host_pattern(raw: str) -> str:
    """Normalise a host pattern (deny lists may also use inner ``*`` labels)."""
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a non-empty host name or '*.suffix'")
    text = raw.strip().lower()
    if text in {"*", "*."}:
        raise ValueError("a bare '*' would match every host")
    labels = text.split(".")
    wildcard = labels[0] == "*"
    body = ".".join(label if label != "*" else "x" for label in labels)
    if any(label != "*" and "*" in label for label in labels):
        raise ValueError("'*' must be a whole label ('*.example.com')")
    try:
        normalised = normalise_host(body)
    except TargetError as exc:
        raise ValueError(f"not a valid host pattern: {exc}") from None
    if ipaddress_or_none(normalised) is not None:
        raise ValueError("IP addresses belong in allow_networks / deny_networks")
    out_labels = normalised.split(".")
    for index, label in enumerate(labels):
        if label == "*":
            out_labels[index] = "*"
    if wildcard and len(out_labels) < 2:
        raise ValueError("wildcard needs a suffix ('*.example.com')")
    return ".".join(out_labels)


def ipaddress_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def effective_addresses(address: IPAddress) -> list[tuple[IPAddress, str]]:
    """Addresses a connection to ``address`` really reaches, with how.

    IPv4-mapped IPv6 (``::ffff:a.b.c.d``) reaches the embedded IPv4 directly:
    the kernel talks IPv4 on such a socket. Every other embedding form counts
    twice, the IPv6 address itself and what it embeds, and both must be allowed:

    - IPv4-compatible (``::a.b.c.d``, deprecated by RFC 4291) is routed by
      Linux as a plain IPv6 address, through the IPv6 default route, so
      ``[::127.0.0.1]`` leaves the host; its embedded IPv4 is checked as well
      in case a stack maps it;
    - NAT64 and 6to4 reach the embedded IPv4 through a gateway at the IPv6
      address.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return [(address, "")]
    mapped = address.ipv4_mapped
    if mapped is not None:
        return [(mapped, "IPv4-mapped")]
    if address in _NAT64 or address in _NAT64_LOCAL:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        return [(address, ""), (embedded, "NAT64")]
    sixtofour = address.sixtofour
    if sixtofour is not None:
        return [(address, ""), (sixtofour, "6to4")]
    if _is_compatible(address):
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        return [(embedded, "IPv4-compatible"), (address, "")]
    return [(address, "")]


def check_addresses(host: str, addresses: Iterable[IPAddress], rules: Rules) -> Decision:
    """Step 3 of the policy: every address must be allowed and none denied.

    1. No addresses: external.
    2. For each address and what it embeds: in ``deny_networks`` -> external.
    3. Not in ``allow_networks`` -> external.
    4. Otherwise local.
    """
    seen = list(addresses)
    if not seen:
        return Decision(Verdict.EXTERNAL, REASON_NO_ADDRESSES.format(host=host), Rule.UNRESOLVED, host)
    texts = tuple(a.compressed for a in seen)
    for address in seen:
        for candidate, kind in effective_addresses(address):
            shown = address.compressed
            denied = _first_containing(rules.deny_networks, candidate)
            if denied is not None:
                reason = REASON_DENY_NETWORK.format(address=candidate.compressed, host=host, network=denied)
                if kind:
                    reason += f" (embedded in {shown} as {kind})"
                return Decision(Verdict.EXTERNAL, reason, Rule.DENY_NETWORK, host, texts)
            if _first_containing(rules.allow_networks, candidate) is None:
                if kind:
                    reason = (
                        REASON_EMBEDDED.format(address=shown, host=host, embedded=candidate.compressed, kind=kind)
                        + ", which is not in allow_networks"
                    )
                elif _is_compatible(candidate):
                    reason = REASON_COMPATIBLE.format(address=shown, host=host)
                else:
                    reason = REASON_NOT_ALLOWED.format(address=shown, host=host)
                return Decision(Verdict.EXTERNAL, reason, Rule.NOT_ALLOWED_NETWORK, host, texts)
    reason = REASON_ALLOW_NETWORK.format(host=host, addresses=", ".join(texts))
    return Decision(Verdict.LOCAL, reason, Rule.ALLOW_NETWORK, host, texts)


def _is_compatible(address: IPAddress) -> bool:
    return isinstance(address, ipaddress.IPv6Address) and address in _COMPATIBLE and int(address) > 1


def _first_containing(networks: Sequence[Network], address: IPAddress) -> Network | None:
    for network in networks:
        if network.version == address.version and address in network:
            return network
    return None


def deny_host_match(host: str, rules: Rules) -> HostPattern | None:
    for pattern in rules.deny_hosts:
        if pattern.matches(host):
            return pattern
    return None


def allow_host_match(host: str, rules: Rules) -> HostPattern | None:
    for pattern in rules.allow_hosts:
        if pattern.matches(host):
            return pattern
    return None


def unresolved(host: str) -> Decision:
    """The verdict for a name that does not resolve: external (fail closed)."""
    return Decision(Verdict.EXTERNAL, REASON_UNRESOLVED.format(host=host), Rule.UNRESOLVED, host)


def classify_static(target: Target, rules: Rules) -> Decision | None:
    """Steps 1-3 that need no resolution; None means "resolve the name".

    1. A host on the deny list is external, whatever else matches.
    2. An IP literal is decided by :func:`check_addresses`; a zone id on an
       address that would be local is invalid (ambiguous interface scope).
    3. A name on ``allow_hosts`` is local without resolving.
    """
    host = target.host
    denied = deny_host_match(host, rules)
    if denied is not None:
        why = denied.why or "deny_hosts"
        return Decision(Verdict.EXTERNAL, REASON_DENY_HOST.format(host=host, why=why), Rule.DENY_HOST, host)
    if target.address is not None:
        decision = check_addresses(host, [target.address], rules)
        if target.zone is not None and decision.is_local:
            return Decision(Verdict.INVALID, REASON_ZONE.format(address=host), Rule.ZONE, host)
        return decision
    allowed = allow_host_match(host, rules)
    if allowed is not None:
        return Decision(
            Verdict.LOCAL, REASON_ALLOW_HOST.format(host=host, pattern=allowed.pattern), Rule.ALLOW_HOST, host
        )
    return None


def classify_target(target: Target, rules: Rules, resolve: Resolve | None) -> Decision:
    """Classify a parsed target; names not decided statically are resolved."""
    static = classify_static(target, rules)
    if static is not None:
        return static
    if resolve is None:
        return unresolved(target.host)
    try:
        addresses = list(resolve(target.host))
    except ResolutionError:
        return unresolved(target.host)
    return check_addresses(target.host, addresses, rules)


def classify(url: str, rules: Rules, resolve: Resolve | None = None) -> Decision:
    """Classify a URL string. Never raises: unparseable input is ``invalid``."""
    try:
        target = parse_target(url)
    except TargetError as exc:
        return Decision(Verdict.INVALID, REASON_INVALID.format(detail=exc), Rule.PARSE)
    except Exception as exc:  # noqa: BLE001 - fail closed on any parser surprise
        return Decision(Verdict.INVALID, REASON_INVALID.format(detail=type(exc).__name__), Rule.PARSE)
    return classify_target(target, rules, resolve)
