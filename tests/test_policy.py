"""Tests for :mod:`airgap_proxy.policy`: every verdict with its reason and rule.

Resolution is a fake: a table of names to addresses. Names not in the table
raise :class:`policy.ResolutionError`. No test here touches real DNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap_proxy import policy
from airgap_proxy.policy import Rule, Rules, Verdict
from airgap_proxy.policy.targets import IPAddress, TargetError, parse_target

RULES = Rules()


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def net(text: str) -> policy.Network:
    return ipaddress.ip_network(text)


def fake_resolver(table: Mapping[str, Sequence[str]]) -> Callable[[str], Sequence[IPAddress]]:
    answers = {name: [ip(a) for a in addresses] for name, addresses in table.items()}

    def resolve(name: str) -> Sequence[IPAddress]:
        if name not in answers:
            raise policy.ResolutionError(name)
        return answers[name]

    return resolve


DNS: dict[str, list[str]] = {
    # legitimate local services
    "ollama": ["172.18.0.5"],
    "litellm": ["10.0.0.7"],
    "llama_cpp": ["192.168.50.2"],
    "gpu-box.lan": ["192.168.1.50"],
    "ipv6-only.lan": ["fd00:1::5"],
    "dual.lan": ["10.0.0.8", "fd00::8"],
    "mapped.lan": ["::ffff:10.0.0.9"],
    "loopback.lan": ["127.0.0.1", "::1"],
    # public or dangerous answers
    "ollama.attacker.example": ["203.0.113.10"],
    "vllm.evil.com": ["198.51.100.7"],
    "evil.com": ["203.0.113.66"],
    "evilsvc.cluster.local": ["203.0.113.5"],
    "mixed.example": ["10.0.0.1", "93.184.216.34"],
    "mixed-order.example": ["93.184.216.34", "10.0.0.1"],
    "rebind.example": ["127.0.0.1", "169.254.169.254"],
    "metadata-alias.lan": ["169.254.169.254"],
    "link-local.lan": ["169.254.10.10"],
    "cgnat.lan": ["100.64.1.1"],
    "zero.lan": ["0.0.0.0"],
    "ec2-meta6.lan": ["fd00:ec2::254"],
    "mapped-public.lan": ["::ffff:8.8.8.8"],
    "mapped-metadata.lan": ["::ffff:169.254.169.254"],
    "nat64.lan": ["64:ff9b::a00:1"],
    "public6.lan": ["2001:4860:4860::8888"],
    "empty.lan": [],
    # deny-listed names that a hostile resolver maps to local addresses
    "api.openai.com": ["127.0.0.1"],
    "api.anthropic.com": ["10.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    # allow-listed name with a public answer: decided without resolving
    "localhost": ["8.8.8.8"],
}
resolve = fake_resolver(DNS)


def v6(text: str) -> str:
    """Canonical text of an IPv6 address (the form reasons use)."""
    return ipaddress.IPv6Address(text).compressed


# Expected reasons, built from the templates the module exports.
def deny_host(host: str, why: str = policy.HOSTED_API) -> str:
    return policy.REASON_DENY_HOST.format(host=host, why=why)


def deny_net(address: str, host: str, network: str, embedded_in: str = "", kind: str = "") -> str:
    reason = policy.REASON_DENY_NETWORK.format(address=address, host=host, network=network)
    return f"{reason} (embedded in {embedded_in} as {kind})" if kind else reason


def not_allowed(address: str, host: str) -> str:
    return policy.REASON_NOT_ALLOWED.format(address=address, host=host)


def embeds(address: str, host: str, embedded: str, kind: str) -> str:
    reason = policy.REASON_EMBEDDED.format(address=address, host=host, embedded=embedded, kind=kind)
    return reason + ", which is not in allow_networks"


def allow_net(host: str, *addresses: str) -> str:
    return policy.REASON_ALLOW_NETWORK.format(host=host, addresses=", ".join(addresses or (host,)))


def allow_host(host: str, pattern: str) -> str:
    return policy.REASON_ALLOW_HOST.format(host=host, pattern=pattern)


def unresolved(host: str) -> str:
    return policy.REASON_UNRESOLVED.format(host=host)


def zone(address: str) -> str:
    return policy.REASON_ZONE.format(address=address)


L, E, INV = Verdict.LOCAL, Verdict.EXTERNAL, Verdict.INVALID
CLUSTER = "*.svc.cluster.local"
META = "169.254.169.254"
META_NET = "169.254.169.254/32"

# --------------------------------------------------------------------------- #
# Legitimate local upstreams: a classifier that blocks everything fails these.
# --------------------------------------------------------------------------- #

LOCAL_CASES = [
    pytest.param(
        "http://localhost:11434/v1", L, Rule.ALLOW_HOST, allow_host("localhost", "localhost"), id="ollama localhost"
    ),
    pytest.param(
        "http://LOCALHOST:11434", L, Rule.ALLOW_HOST, allow_host("localhost", "localhost"), id="localhost upper"
    ),
    pytest.param("http://localhost./v1", L, Rule.ALLOW_HOST, allow_host("localhost", "localhost"), id="localhost dot"),
    pytest.param(
        "https://localhost:8443/v1", L, Rule.ALLOW_HOST, allow_host("localhost", "localhost"), id="localhost https"
    ),
    pytest.param(
        "http://localhost:80/v1", L, Rule.ALLOW_HOST, allow_host("localhost", "localhost"), id="localhost :80"
    ),
    pytest.param(
        "http://localhost:11434/", L, Rule.ALLOW_HOST, allow_host("localhost", "localhost"), id="localhost slash"
    ),
    pytest.param("http://[::1]:8000", L, Rule.ALLOW_NETWORK, allow_net("::1"), id="ipv6 loopback"),
    pytest.param("http://[0:0:0:0:0:0:0:1]/v1", L, Rule.ALLOW_NETWORK, allow_net("::1"), id="ipv6 loopback long"),
    pytest.param("http://127.0.0.1:8000/v1", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="127.0.0.1"),
    pytest.param("https://127.0.0.1:443/v1", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="127.0.0.1 https :443"),
    pytest.param("http://127.0.0.2", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.2"), id="127.0.0.2"),
    pytest.param("http://127.255.255.254", L, Rule.ALLOW_NETWORK, allow_net("127.255.255.254"), id="top of 127/8"),
    pytest.param("http://10.1.2.3:8000/v1", L, Rule.ALLOW_NETWORK, allow_net("10.1.2.3"), id="10/8"),
    pytest.param("http://172.16.0.1", L, Rule.ALLOW_NETWORK, allow_net("172.16.0.1"), id="bottom of 172.16/12"),
    pytest.param("http://172.31.255.255", L, Rule.ALLOW_NETWORK, allow_net("172.31.255.255"), id="top of 172.16/12"),
    pytest.param("http://192.168.1.10:11434", L, Rule.ALLOW_NETWORK, allow_net("192.168.1.10"), id="192.168/16"),
    pytest.param("http://192.168.0.1:65535", L, Rule.ALLOW_NETWORK, allow_net("192.168.0.1"), id="highest port"),
    pytest.param("http://[fd12:3456::1]:8000", L, Rule.ALLOW_NETWORK, allow_net("fd12:3456::1"), id="ULA"),
    pytest.param("https://[fc00::1]/v1", L, Rule.ALLOW_NETWORK, allow_net("fc00::1"), id="fc00::/7 bottom"),
    pytest.param(
        "http://127.0.0.1:8000/v1?api-version=2024-02-01#frag",
        L,
        Rule.ALLOW_NETWORK,
        allow_net("127.0.0.1"),
        id="query and fragment",
    ),
    pytest.param(
        "http://[::ffff:127.0.0.1]:8000",
        L,
        Rule.ALLOW_NETWORK,
        allow_net(v6("::ffff:127.0.0.1")),
        id="ipv4-mapped loopback",
    ),
    pytest.param("http://[::ffff:10.0.0.1]", L, Rule.ALLOW_NETWORK, allow_net(v6("::ffff:10.0.0.1")), id="mapped 10/8"),
    pytest.param(
        "http://vllm.llm.svc.cluster.local:8000/v1",
        L,
        Rule.ALLOW_HOST,
        allow_host("vllm.llm.svc.cluster.local", CLUSTER),
        id="vllm in cluster",
    ),
    pytest.param(
        "http://ollama.llm-infra.svc.cluster.local:11434/v1",
        L,
        Rule.ALLOW_HOST,
        allow_host("ollama.llm-infra.svc.cluster.local", CLUSTER),
        id="ollama in cluster",
    ),
    pytest.param(
        "https://TGI.Default.SVC.cluster.local./v1",
        L,
        Rule.ALLOW_HOST,
        allow_host("tgi.default.svc.cluster.local", CLUSTER),
        id="cluster https case dot",
    ),
    pytest.param(
        "http://ollama:11434/v1", L, Rule.ALLOW_NETWORK, allow_net("ollama", "172.18.0.5"), id="compose ollama"
    ),
    pytest.param(
        "HTTP://Ollama.:11434/V1", L, Rule.ALLOW_NETWORK, allow_net("ollama", "172.18.0.5"), id="ollama case dot"
    ),
    pytest.param("http://litellm:4000", L, Rule.ALLOW_NETWORK, allow_net("litellm", "10.0.0.7"), id="compose litellm"),
    pytest.param(
        "http://llama_cpp:8080/v1", L, Rule.ALLOW_NETWORK, allow_net("llama_cpp", "192.168.50.2"), id="underscore name"
    ),
    pytest.param(
        "http://gpu-box.lan:8000/v1/chat/completions?stream=true",
        L,
        Rule.ALLOW_NETWORK,
        allow_net("gpu-box.lan", "192.168.1.50"),
        id="lan name with query",
    ),
    pytest.param(
        "http://ipv6-only.lan", L, Rule.ALLOW_NETWORK, allow_net("ipv6-only.lan", "fd00:1::5"), id="name to ULA"
    ),
    pytest.param(
        "http://dual.lan", L, Rule.ALLOW_NETWORK, allow_net("dual.lan", "10.0.0.8", "fd00::8"), id="name dual stack"
    ),
    pytest.param(
        "http://mapped.lan", L, Rule.ALLOW_NETWORK, allow_net("mapped.lan", v6("::ffff:10.0.0.9")), id="name to mapped"
    ),
    pytest.param(
        "http://loopback.lan", L, Rule.ALLOW_NETWORK, allow_net("loopback.lan", "127.0.0.1", "::1"), id="name loopback"
    ),
]

# --------------------------------------------------------------------------- #
# IPv4 notations: local ones stay local, metadata and public stay external.
# --------------------------------------------------------------------------- #

NOTATION_CASES = [
    pytest.param("http://2130706433", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="decimal loopback"),
    pytest.param("http://0177.0.0.1", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="octal loopback"),
    pytest.param("http://0x7f.0.0.1", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="hex octet loopback"),
    pytest.param("http://0x7f000001", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="hex loopback"),
    pytest.param("http://127.1", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="short loopback"),
    pytest.param("http://10.1", L, Rule.ALLOW_NETWORK, allow_net("10.0.0.1"), id="short 10.1"),
    pytest.param("http://0x7f.0.0.01", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="mixed hex octal"),
    pytest.param("http://0x7f.1:8000/v1", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="hex short with port"),
    pytest.param("http://012.1", L, Rule.ALLOW_NETWORK, allow_net("10.0.0.1"), id="octal short 10"),
    pytest.param("http://192.168.257", L, Rule.ALLOW_NETWORK, allow_net("192.168.1.1"), id="three parts"),
    pytest.param("http://0300.0250.1.1", L, Rule.ALLOW_NETWORK, allow_net("192.168.1.1"), id="octal 192.168"),
    pytest.param("http://127.0.0.1.", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="ipv4 trailing dot"),
    pytest.param("http://１２７．０．０．１", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="full-width digits"),
    pytest.param(
        "http://１２７。０。０。１:8000", L, Rule.ALLOW_NETWORK, allow_net("127.0.0.1"), id="ideographic dots"
    ),
    pytest.param("http://2852039166", E, Rule.DENY_NETWORK, deny_net(META, META, META_NET), id="decimal metadata"),
    pytest.param("http://0xa9fea9fe", E, Rule.DENY_NETWORK, deny_net(META, META, META_NET), id="hex metadata"),
    pytest.param(
        "http://0251.0376.0251.0376", E, Rule.DENY_NETWORK, deny_net(META, META, META_NET), id="octal metadata"
    ),
    pytest.param("http://169.254.43518", E, Rule.DENY_NETWORK, deny_net(META, META, META_NET), id="short metadata"),
    pytest.param(
        "http://134744072", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("8.8.8.8", "8.8.8.8"), id="decimal public"
    ),
    pytest.param("http://0x08080808", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("8.8.8.8", "8.8.8.8"), id="hex public"),
    pytest.param("http://8.8.2056", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("8.8.8.8", "8.8.8.8"), id="short public"),
    pytest.param("http://0", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("0.0.0.0", "0.0.0.0"), id="zero decimal"),
    pytest.param("http://08.0.0.1", INV, Rule.PARSE, "not a valid IPv4 address", id="invalid octal 08"),
    pytest.param("http://0x7f.0.0.08", INV, Rule.PARSE, "not a valid IPv4 address", id="invalid octal last"),
    pytest.param("http://256.0.0.1", INV, Rule.PARSE, "out-of-range", id="out of range octet"),
    pytest.param("http://127.16777216", INV, Rule.PARSE, "out-of-range", id="out of range short"),
    pytest.param("http://4294967296", INV, Rule.PARSE, "out-of-range", id="out of range decimal"),
    pytest.param("http://1.2.3.4.5", INV, Rule.PARSE, "too many parts", id="too many parts"),
    pytest.param("http://127.0.0.1.1", INV, Rule.PARSE, "too many parts", id="too many parts loopback"),
    pytest.param("http://0x", INV, Rule.PARSE, "not a valid IPv4 address", id="bare 0x"),
    pytest.param("http://evil.127", INV, Rule.PARSE, "not a valid IPv4 address", id="name ending in number"),
    pytest.param("http://1_27.0.0.1", INV, Rule.PARSE, "not a valid IPv4 address", id="underscore number"),
    pytest.param("http://11.-256.0.1", INV, Rule.PARSE, "not a valid IPv4 address", id="negative part"),
    pytest.param("http://+127.0.0.1", INV, Rule.PARSE, "not a valid IPv4 address", id="plus sign"),
]

# --------------------------------------------------------------------------- #
# Addresses that are never local: link-local, metadata, 0/8, CGNAT, public.
# --------------------------------------------------------------------------- #

ADDRESS_CASES = [
    pytest.param(
        "http://169.254.169.254/latest/meta-data/", E, Rule.DENY_NETWORK, deny_net(META, META, META_NET), id="metadata"
    ),
    pytest.param(
        "http://169.254.170.2/v2/credentials",
        E,
        Rule.DENY_NETWORK,
        deny_net("169.254.170.2", "169.254.170.2", "169.254.170.2/32"),
        id="ecs credentials",
    ),
    pytest.param(
        "http://100.100.100.200",
        E,
        Rule.DENY_NETWORK,
        deny_net("100.100.100.200", "100.100.100.200", "100.100.100.200/32"),
        id="alibaba metadata",
    ),
    pytest.param(
        "http://169.254.1.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("169.254.1.1", "169.254.1.1"), id="link-local v4"
    ),
    pytest.param(
        "http://169.254.255.255",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("169.254.255.255", "169.254.255.255"),
        id="top 169.254",
    ),
    pytest.param("http://0.0.0.0:8000", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("0.0.0.0", "0.0.0.0"), id="0.0.0.0"),
    pytest.param("http://0.1.2.3", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("0.1.2.3", "0.1.2.3"), id="0/8"),
    pytest.param(
        "http://100.64.0.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("100.64.0.1", "100.64.0.1"), id="CGNAT bottom"
    ),
    pytest.param(
        "http://100.127.255.254",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("100.127.255.254", "100.127.255.254"),
        id="CGNAT top",
    ),
    pytest.param("http://8.8.8.8", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("8.8.8.8", "8.8.8.8"), id="public v4"),
    pytest.param(
        "https://1.1.1.1/v1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("1.1.1.1", "1.1.1.1"), id="public https"
    ),
    pytest.param(
        "http://172.32.0.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("172.32.0.1", "172.32.0.1"), id="above 172.16/12"
    ),
    pytest.param(
        "http://172.15.255.255",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("172.15.255.255", "172.15.255.255"),
        id="below 172.16/12",
    ),
    pytest.param(
        "http://192.169.0.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("192.169.0.1", "192.169.0.1"), id="above 192.168"
    ),
    pytest.param("http://11.0.0.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("11.0.0.1", "11.0.0.1"), id="above 10/8"),
    pytest.param(
        "http://128.0.0.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("128.0.0.1", "128.0.0.1"), id="above 127/8"
    ),
    pytest.param(
        "http://224.0.0.1", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("224.0.0.1", "224.0.0.1"), id="multicast"
    ),
    pytest.param(
        "http://255.255.255.255",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("255.255.255.255", "255.255.255.255"),
        id="broadcast",
    ),
    pytest.param("http://[::]", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("::", "::"), id="ipv6 unspecified"),
    pytest.param(
        "http://[fe80::1]", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("fe80::1", "fe80::1"), id="link-local v6"
    ),
    pytest.param(
        "http://[febf::1]", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("febf::1", "febf::1"), id="top of fe80::/10"
    ),
    pytest.param(
        "http://[fe80::1%25eth0]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("fe80::1", "fe80::1"),
        id="link-local with zone",
    ),
    pytest.param(
        "http://[fe80::1%eth0]:8080", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("fe80::1", "fe80::1"), id="raw zone"
    ),
    pytest.param("http://[::1%25lo]", INV, Rule.ZONE, zone("::1"), id="zone on loopback"),
    pytest.param("http://[fd12::1%25eth0]", INV, Rule.ZONE, zone("fd12::1"), id="zone on ULA"),
    pytest.param(
        "http://[::ffff:127.0.0.1%25lo]", INV, Rule.ZONE, zone(v6("::ffff:127.0.0.1")), id="zone on mapped loopback"
    ),
    pytest.param("http://[fe80::1%25]", INV, Rule.PARSE, "zone id is malformed", id="empty zone"),
    pytest.param(
        "http://[fd00:ec2::254]",
        E,
        Rule.DENY_NETWORK,
        deny_net("fd00:ec2::254", "fd00:ec2::254", "fd00:ec2::254/128"),
        id="aws metadata v6 inside fc00::/7",
    ),
    pytest.param(
        "http://[FD00:EC2:0::254]:80/latest",
        E,
        Rule.DENY_NETWORK,
        deny_net("fd00:ec2::254", "fd00:ec2::254", "fd00:ec2::254/128"),
        id="aws metadata v6 spelled out",
    ),
    pytest.param(
        "http://[::ffff:169.254.169.254]",
        E,
        Rule.DENY_NETWORK,
        deny_net(META, v6("::ffff:a9fe:a9fe"), META_NET, v6("::ffff:a9fe:a9fe"), "IPv4-mapped"),
        id="mapped metadata",
    ),
    pytest.param(
        "http://[::ffff:8.8.8.8]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        embeds(v6("::ffff:8.8.8.8"), v6("::ffff:8.8.8.8"), "8.8.8.8", "IPv4-mapped"),
        id="mapped public",
    ),
    pytest.param(
        "http://[::ffff:169.254.1.1]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        embeds(v6("::ffff:169.254.1.1"), v6("::ffff:169.254.1.1"), "169.254.1.1", "IPv4-mapped"),
        id="mapped link-local",
    ),
    pytest.param(
        "http://[::169.254.169.254]",
        E,
        Rule.DENY_NETWORK,
        deny_net(META, v6("::a9fe:a9fe"), META_NET, v6("::a9fe:a9fe"), "IPv4-compatible"),
        id="compatible metadata",
    ),
    pytest.param(
        "http://[::127.0.0.1]:8000",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        policy.REASON_COMPATIBLE.format(address="::7f00:1", host="::7f00:1"),
        id="compatible loopback leaves the host",
    ),
    pytest.param(
        "http://[::10.0.0.5]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        policy.REASON_COMPATIBLE.format(address="::a00:5", host="::a00:5"),
        id="compatible 10/8",
    ),
    pytest.param(
        "http://[0:0:0:0:0:0:192.168.1.1]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        policy.REASON_COMPATIBLE.format(address="::c0a8:101", host="::c0a8:101"),
        id="compatible 192.168 exploded",
    ),
    pytest.param(
        "http://[::8.8.8.8]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        embeds(v6("::8.8.8.8"), v6("::8.8.8.8"), "8.8.8.8", "IPv4-compatible"),
        id="compatible public",
    ),
    pytest.param(
        "http://[64:ff9b::a9fe:a9fe]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe"),
        id="NAT64 metadata",
    ),
    pytest.param(
        "http://[64:ff9b::127.0.0.1]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("64:ff9b::7f00:1", "64:ff9b::7f00:1"),
        id="NAT64 loopback is a public gateway",
    ),
    pytest.param(
        "http://[2002:a9fe:a9fe::]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("2002:a9fe:a9fe::", "2002:a9fe:a9fe::"),
        id="6to4 metadata",
    ),
    pytest.param(
        "http://[2002:7f00:1::1]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("2002:7f00:1::1", "2002:7f00:1::1"),
        id="6to4 loopback",
    ),
    pytest.param(
        "http://[2001:4860:4860::8888]",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("2001:4860:4860::8888", "2001:4860:4860::8888"),
        id="public v6",
    ),
    pytest.param("http://[ff02::1]", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("ff02::1", "ff02::1"), id="multicast v6"),
]

# --------------------------------------------------------------------------- #
# The built-in deny list, with port / path / case / trailing-dot variations.
# --------------------------------------------------------------------------- #

DENIED_HOSTS = [
    ("api.openai.com", policy.HOSTED_API),
    ("x.openai.azure.com", policy.HOSTED_API),
    ("foo.azure.com", policy.HOSTED_API),
    ("generativelanguage.googleapis.com", policy.HOSTED_API),
    ("api.anthropic.com", policy.HOSTED_API),
    ("bedrock-runtime.us-east-1.amazonaws.com", policy.HOSTED_API),
    ("api.mistral.ai", policy.HOSTED_API),
    ("api.cohere.com", policy.HOSTED_API),
    ("api.groq.com", policy.HOSTED_API),
    ("api.together.xyz", policy.HOSTED_API),
    ("openrouter.ai", policy.HOSTED_API),
    ("api.deepseek.com", policy.HOSTED_API),
    ("api.x.ai", policy.HOSTED_API),
    ("api.fireworks.ai", policy.HOSTED_API),
    ("api.perplexity.ai", policy.HOSTED_API),
    ("metadata.google.internal", policy.METADATA),
]


def mixed_case(host: str) -> str:
    """Upper-case the first three letters of every label ('API.OPEnai.COM')."""
    return ".".join(label[:3].upper() + label[3:] for label in host.split("."))


DENY_LIST_CASES = [
    pytest.param(url, E, Rule.DENY_HOST, deny_host(host, why), id=f"{host} {variant}")
    for host, why in DENIED_HOSTS
    for variant, url in (
        ("https /v1", f"https://{host}/v1"),
        ("case and port", f"http://{mixed_case(host)}:8080/v1/chat/completions"),
        ("trailing dot and :443", f"https://{host}.:443/v1?x=1"),
        ("upper and dot", f"HTTPS://{host.upper()}./"),
    )
]

EXTRA_DENY_CASES = [
    pytest.param(
        "http://ａｐｉ．ｏｐｅｎａｉ．ｃｏｍ/v1", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="full-width openai"
    ),
    pytest.param("http://api\u3002openai\u3002com", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="U+3002 dots"),
    pytest.param("http://api\uff0eopenai\uff0ecom", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="U+FF0E dots"),
    pytest.param(
        "http://api\uff61openai\uff61com\uff61", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="U+FF61 dots"
    ),
    pytest.param("http://api.open\u00adai.com", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="soft hyphen"),
    pytest.param("http://api.open\u200bai.com", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="zero width space"),
    pytest.param("http://\u24d0pi.openai.com", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="circled letter"),
    pytest.param("https://API.OpenAI.com", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="mixed case"),
    pytest.param("https://api.openai.com.", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="trailing dot"),
    pytest.param(
        "http://api.openai.com/ollama/v1", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="ollama in path of openai"
    ),
    pytest.param(
        "http://api.openai.com?h=localhost", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="local word in query"
    ),
    pytest.param("https://openai.com", E, Rule.DENY_HOST, deny_host("openai.com"), id="bare openai.com"),
    pytest.param("https://chat.openai.com", E, Rule.DENY_HOST, deny_host("chat.openai.com"), id="any openai subdomain"),
    pytest.param("https://azure.com", E, Rule.DENY_HOST, deny_host("azure.com"), id="bare azure.com"),
    pytest.param(
        "https://my.cognitiveservices.azure.com",
        E,
        Rule.DENY_HOST,
        deny_host("my.cognitiveservices.azure.com"),
        id="cognitive",
    ),
    pytest.param(
        "https://storage.googleapis.com", E, Rule.DENY_HOST, deny_host("storage.googleapis.com"), id="googleapis"
    ),
    pytest.param(
        "https://bedrock-runtime.eu-west-3.amazonaws.com",
        E,
        Rule.DENY_HOST,
        deny_host("bedrock-runtime.eu-west-3.amazonaws.com"),
        id="bedrock other region",
    ),
    pytest.param(
        "https://console.anthropic.com", E, Rule.DENY_HOST, deny_host("console.anthropic.com"), id="anthropic sub"
    ),
    pytest.param(
        "http://metadata.google.internal./computeMetadata/v1/",
        E,
        Rule.DENY_HOST,
        deny_host("metadata.google.internal", policy.METADATA),
        id="gce metadata path",
    ),
    pytest.param(
        "http://instance-data", E, Rule.DENY_HOST, deny_host("instance-data", policy.METADATA), id="ec2 instance-data"
    ),
    pytest.param(
        "http://api.anthropic.com:8000/v1",
        E,
        Rule.DENY_HOST,
        deny_host("api.anthropic.com"),
        id="deny wins over a local answer",
    ),
]

# --------------------------------------------------------------------------- #
# Names: resolution, substring tricks that defeat naive allow-lists.
# --------------------------------------------------------------------------- #

NAME_CASES = [
    pytest.param(
        "http://ollama.attacker.example:11434/v1",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("203.0.113.10", "ollama.attacker.example"),
        id="ollama prefix on a public name",
    ),
    pytest.param(
        "http://vllm.evil.com/v1",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("198.51.100.7", "vllm.evil.com"),
        id="vllm prefix",
    ),
    pytest.param(
        "http://evil.com/localhost",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("203.0.113.66", "evil.com"),
        id="localhost in path of public name",
    ),
    pytest.param(
        "http://evil.com#@localhost",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("203.0.113.66", "evil.com"),
        id="at in fragment",
    ),
    pytest.param(
        "http://evil.com?@127.0.0.1",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("203.0.113.66", "evil.com"),
        id="at in query",
    ),
    pytest.param(
        "http://evilsvc.cluster.local",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("203.0.113.5", "evilsvc.cluster.local"),
        id="suffix inside a label",
    ),
    pytest.param("http://svc.cluster.local", E, Rule.UNRESOLVED, unresolved("svc.cluster.local"), id="bare suffix"),
    pytest.param(
        "http://svc.cluster.local.evil.com",
        E,
        Rule.UNRESOLVED,
        unresolved("svc.cluster.local.evil.com"),
        id="suffix as prefix",
    ),
    pytest.param(
        "http://localhost.evil.com", E, Rule.UNRESOLVED, unresolved("localhost.evil.com"), id="localhost prefix"
    ),
    pytest.param("http://evil-localhost", E, Rule.UNRESOLVED, unresolved("evil-localhost"), id="localhost suffix"),
    pytest.param("http://127.0.0.1.nip.io", E, Rule.UNRESOLVED, unresolved("127.0.0.1.nip.io"), id="ip in a name"),
    pytest.param(
        "http://10.0.0.1.evil.com", E, Rule.UNRESOLVED, unresolved("10.0.0.1.evil.com"), id="private ip prefix"
    ),
    pytest.param(
        "http://does-not-exist.example", E, Rule.UNRESOLVED, unresolved("does-not-exist.example"), id="nxdomain"
    ),
    pytest.param(
        "http://bücher.example", E, Rule.UNRESOLVED, unresolved("xn--bcher-kva.example"), id="idna unresolved"
    ),
    pytest.param(
        "http://empty.lan", E, Rule.UNRESOLVED, policy.REASON_NO_ADDRESSES.format(host="empty.lan"), id="no addresses"
    ),
    pytest.param(
        "http://mixed.example",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("93.184.216.34", "mixed.example"),
        id="mixed answers",
    ),
    pytest.param(
        "http://mixed-order.example",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("93.184.216.34", "mixed-order.example"),
        id="mixed answers public first",
    ),
    pytest.param(
        "http://rebind.example",
        E,
        Rule.DENY_NETWORK,
        deny_net(META, "rebind.example", META_NET),
        id="loopback and metadata",
    ),
    pytest.param(
        "http://metadata-alias.lan",
        E,
        Rule.DENY_NETWORK,
        deny_net(META, "metadata-alias.lan", META_NET),
        id="name to metadata",
    ),
    pytest.param(
        "http://link-local.lan",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("169.254.10.10", "link-local.lan"),
        id="name to link-local",
    ),
    pytest.param(
        "http://cgnat.lan", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("100.64.1.1", "cgnat.lan"), id="name to CGNAT"
    ),
    pytest.param(
        "http://zero.lan", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("0.0.0.0", "zero.lan"), id="name to 0.0.0.0"
    ),
    pytest.param(
        "http://ec2-meta6.lan",
        E,
        Rule.DENY_NETWORK,
        deny_net("fd00:ec2::254", "ec2-meta6.lan", "fd00:ec2::254/128"),
        id="name to v6 metadata",
    ),
    pytest.param(
        "http://mapped-public.lan",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        embeds(v6("::ffff:8.8.8.8"), "mapped-public.lan", "8.8.8.8", "IPv4-mapped"),
        id="name to mapped public",
    ),
    pytest.param(
        "http://mapped-metadata.lan",
        E,
        Rule.DENY_NETWORK,
        deny_net(META, "mapped-metadata.lan", META_NET, v6("::ffff:169.254.169.254"), "IPv4-mapped"),
        id="name to mapped metadata",
    ),
    pytest.param(
        "http://nat64.lan", E, Rule.NOT_ALLOWED_NETWORK, not_allowed("64:ff9b::a00:1", "nat64.lan"), id="name to NAT64"
    ),
    pytest.param(
        "http://public6.lan",
        E,
        Rule.NOT_ALLOWED_NETWORK,
        not_allowed("2001:4860:4860::8888", "public6.lan"),
        id="name to public v6",
    ),
]

# --------------------------------------------------------------------------- #
# Unparseable or ambiguous: invalid, with the parser's reason.
# --------------------------------------------------------------------------- #

INVALID_CASES = [
    pytest.param("ftp://localhost/", INV, Rule.PARSE, "scheme 'ftp' is not allowed", id="ftp"),
    pytest.param("file:///etc/passwd", INV, Rule.PARSE, "scheme 'file' is not allowed", id="file"),
    pytest.param("javascript:alert(1)", INV, Rule.PARSE, "scheme 'javascript' is not allowed", id="javascript"),
    pytest.param("gopher://127.0.0.1:70/_x", INV, Rule.PARSE, "scheme 'gopher' is not allowed", id="gopher"),
    pytest.param("ws://localhost:8000", INV, Rule.PARSE, "scheme 'ws' is not allowed", id="websocket"),
    pytest.param(
        "localhost:11434", INV, Rule.PARSE, "scheme 'localhost' is not allowed", id="missing scheme host:port"
    ),
    pytest.param("localhost/v1", INV, Rule.PARSE, "has no scheme", id="missing scheme"),
    pytest.param("//localhost/v1", INV, Rule.PARSE, "has no scheme", id="scheme-relative"),
    pytest.param("http:/localhost", INV, Rule.PARSE, "'//' after the scheme", id="http:/host"),
    pytest.param("http:localhost", INV, Rule.PARSE, "'//' after the scheme", id="http:host"),
    pytest.param("http:///localhost", INV, Rule.PARSE, "empty host", id="http:///host"),
    pytest.param("", INV, Rule.PARSE, "URL is empty", id="empty"),
    pytest.param("http://localhost@evil.com", INV, Rule.PARSE, "userinfo", id="userinfo localhost@evil"),
    pytest.param("http://user:pw@localhost", INV, Rule.PARSE, "userinfo", id="userinfo password"),
    pytest.param("http://api.openai.com@127.0.0.1", INV, Rule.PARSE, "userinfo", id="userinfo openai@loopback"),
    pytest.param("http://127.0.0.1:80@api.openai.com", INV, Rule.PARSE, "userinfo", id="userinfo with port"),
    pytest.param("http://[::1]@evil.com", INV, Rule.PARSE, "userinfo", id="userinfo ipv6"),
    pytest.param("http://evil.com\\@localhost", INV, Rule.PARSE, "backslash", id="backslash userinfo"),
    pytest.param("http://127.0.0.1\\@api.openai.com", INV, Rule.PARSE, "backslash", id="backslash loopback"),
    pytest.param("http:\\\\localhost\\v1", INV, Rule.PARSE, "backslash", id="backslash slashes"),
    pytest.param("http://localhost\\.evil.com", INV, Rule.PARSE, "backslash", id="backslash host"),
    pytest.param("http://evil.com:80:80", INV, Rule.PARSE, "host contains ':'", id="two ports"),
    pytest.param("http://localhost:11434.evil.com", INV, Rule.PARSE, "is not a number", id="port with name"),
    pytest.param("http://localhost:0", INV, Rule.PARSE, "out of range", id="port zero"),
    pytest.param("http://localhost:65536", INV, Rule.PARSE, "out of range", id="port too big"),
    pytest.param("http://[::1]evil.com", INV, Rule.PARSE, "after the IPv6 literal", id="junk after bracket"),
    pytest.param("http://[127.0.0.1]", INV, Rule.PARSE, "IPv6 literal is malformed", id="ipv4 in brackets"),
    pytest.param("http://local\thost", INV, Rule.PARSE, "(U+0009)", id="tab"),
    pytest.param("http://localhost\n.evil.com", INV, Rule.PARSE, "(U+000A)", id="newline"),
    pytest.param("http://localhost\x00.evil.com", INV, Rule.PARSE, "(U+0000)", id="NUL"),
    pytest.param("http://localhost\u00a0:8000", INV, Rule.PARSE, "(U+00A0)", id="NBSP"),
    pytest.param("http://local\u3000host", INV, Rule.PARSE, "(U+3000)", id="ideographic space"),
    pytest.param("http://api.openai.com\r\n.localhost", INV, Rule.PARSE, "(U+000D)", id="CRLF"),
    pytest.param(" http://localhost", INV, Rule.PARSE, "(U+0020)", id="leading space"),
    pytest.param("http://%6c%6f%63%61%6c%68%6f%73%74", INV, Rule.PARSE, "percent-encoded", id="percent localhost"),
    pytest.param("http://api%2eopenai.com", INV, Rule.PARSE, "percent-encoded", id="percent dot"),
    pytest.param("http://127%2E0%2E0%2E1", INV, Rule.PARSE, "percent-encoded", id="percent loopback"),
    pytest.param("http://localhost\uff0fevil.com", INV, Rule.PARSE, "URL delimiters", id="full-width slash"),
    pytest.param("http://evil.com\uff20localhost", INV, Rule.PARSE, "URL delimiters", id="full-width at"),
    pytest.param("http://localhost\uff1a11434", INV, Rule.PARSE, "URL delimiters", id="full-width colon"),
    pytest.param("http://api\ufe52openai.com", INV, Rule.PARSE, "IDNA does not allow", id="small full stop"),
    pytest.param("http://a..b", INV, Rule.PARSE, "empty label", id="empty label"),
    pytest.param("http://*.svc.cluster.local", INV, Rule.PARSE, "not allowed in a host name", id="wildcard host"),
]

POLICY_CASES = (
    LOCAL_CASES + NOTATION_CASES + ADDRESS_CASES + DENY_LIST_CASES + EXTRA_DENY_CASES + NAME_CASES + INVALID_CASES
)


@pytest.mark.parametrize(("url", "verdict", "rule", "reason"), POLICY_CASES)
def test_policy_table(url: str, verdict: Verdict, rule: Rule, reason: str) -> None:
    decision = policy.classify(url, RULES, resolve)
    assert (decision.verdict, decision.rule) == (verdict, rule), decision.reason
    if rule is Rule.PARSE:
        assert decision.reason.startswith("invalid URL: ")
        assert reason in decision.reason
    else:
        assert decision.reason == reason


def test_tables_are_big_enough() -> None:
    assert len(POLICY_CASES) >= 150
    assert sum(1 for case in LOCAL_CASES if case.values[1] is Verdict.LOCAL) >= 25


# --------------------------------------------------------------------------- #
# Precedence with custom rules
# --------------------------------------------------------------------------- #


def rules_with(
    allow_networks: Sequence[str] | None = None,
    deny_networks: Sequence[str] | None = None,
    allow_hosts: Sequence[str] | None = None,
    deny_hosts: Sequence[tuple[str, str]] | None = None,
) -> Rules:
    base = Rules()
    return Rules(
        allow_networks=base.allow_networks if allow_networks is None else tuple(net(n) for n in allow_networks),
        deny_networks=base.deny_networks if deny_networks is None else tuple(net(n) for n in deny_networks),
        allow_hosts=base.allow_hosts
        if allow_hosts is None
        else tuple(policy.HostPattern(policy.validate_host_pattern(h)) for h in allow_hosts),
        deny_hosts=base.deny_hosts
        if deny_hosts is None
        else base.deny_hosts + tuple(policy.HostPattern(policy.validate_host_pattern(p), w) for p, w in deny_hosts),
    )


LINK_LOCAL_ALLOWED = rules_with(
    allow_networks=[*policy.DEFAULT_ALLOW_NETWORKS, "169.254.0.0/16", "fe80::/10"],
    deny_networks=[*policy.BUILTIN_DENY_NETWORKS, "10.9.0.0/16"],
    allow_hosts=["localhost", "*.svc.cluster.local", "api.openai.com", "*.internal.example", "gpu-box.lan"],
    deny_hosts=[("*.corp.example", "corporate SaaS"), ("blocked.lan", "")],
)

CUSTOM_CASES = [
    pytest.param(
        "https://api.openai.com/v1", E, Rule.DENY_HOST, deny_host("api.openai.com"), id="deny host beats allow_hosts"
    ),
    pytest.param(
        "http://169.254.169.254", E, Rule.DENY_NETWORK, deny_net(META, META, META_NET), id="deny network beats allow"
    ),
    pytest.param("http://169.254.1.1", L, Rule.ALLOW_NETWORK, allow_net("169.254.1.1"), id="allowed link-local"),
    pytest.param("http://[fe80::1]", L, Rule.ALLOW_NETWORK, allow_net("fe80::1"), id="allowed link-local v6"),
    pytest.param("http://[fe80::1%25eth0]", INV, Rule.ZONE, zone("fe80::1"), id="zone never local"),
    pytest.param(
        "http://10.9.1.1",
        E,
        Rule.DENY_NETWORK,
        deny_net("10.9.1.1", "10.9.1.1", "10.9.0.0/16"),
        id="custom deny network",
    ),
    pytest.param("http://10.8.1.1", L, Rule.ALLOW_NETWORK, allow_net("10.8.1.1"), id="outside custom deny network"),
    pytest.param(
        "http://a.internal.example",
        L,
        Rule.ALLOW_HOST,
        allow_host("a.internal.example", "*.internal.example"),
        id="allow suffix",
    ),
    pytest.param(
        "http://a.b.internal.example",
        L,
        Rule.ALLOW_HOST,
        allow_host("a.b.internal.example", "*.internal.example"),
        id="allow suffix deep",
    ),
    pytest.param("http://internal.example", E, Rule.UNRESOLVED, unresolved("internal.example"), id="suffix itself"),
    pytest.param(
        "http://evilinternal.example", E, Rule.UNRESOLVED, unresolved("evilinternal.example"), id="suffix inside label"
    ),
    pytest.param(
        "http://gpu-box.lan", L, Rule.ALLOW_HOST, allow_host("gpu-box.lan", "gpu-box.lan"), id="exact allow host"
    ),
    pytest.param("http://x.gpu-box.lan", E, Rule.UNRESOLVED, unresolved("x.gpu-box.lan"), id="exact is not a suffix"),
    pytest.param(
        "http://crm.corp.example",
        E,
        Rule.DENY_HOST,
        deny_host("crm.corp.example", "corporate SaaS"),
        id="custom deny host",
    ),
    pytest.param(
        "http://blocked.lan", E, Rule.DENY_HOST, deny_host("blocked.lan", "deny_hosts"), id="deny without why"
    ),
]


@pytest.mark.parametrize(("url", "verdict", "rule", "reason"), CUSTOM_CASES)
def test_custom_rules_precedence(url: str, verdict: Verdict, rule: Rule, reason: str) -> None:
    decision = policy.classify(url, LINK_LOCAL_ALLOWED, resolve)
    assert (decision.verdict, decision.rule, decision.reason) == (verdict, rule, reason)


def test_deny_host_wins_even_if_allow_listed_and_resolving_locally() -> None:
    rules = rules_with(allow_hosts=["localhost", "api.openai.com"])
    decision = policy.classify(
        "http://api.openai.com:11434/v1", rules, fake_resolver({"api.openai.com": ["127.0.0.1"]})
    )
    assert (decision.verdict, decision.rule) == (Verdict.EXTERNAL, Rule.DENY_HOST)


def test_empty_allow_networks_makes_every_address_external() -> None:
    rules = rules_with(allow_networks=[])
    for url in ("http://127.0.0.1", "http://[::1]", "http://ollama", "http://10.0.0.1"):
        decision = policy.classify(url, rules, resolve)
        assert (decision.verdict, decision.rule) == (Verdict.EXTERNAL, Rule.NOT_ALLOWED_NETWORK), url
    assert policy.classify("http://localhost", rules, resolve).verdict is Verdict.LOCAL


def test_allow_hosts_are_not_resolved() -> None:
    calls: list[str] = []

    def recording(name: str) -> Sequence[IPAddress]:
        calls.append(name)
        return resolve(name)

    assert policy.classify("http://localhost:11434/v1", RULES, recording).rule is Rule.ALLOW_HOST
    assert policy.classify("http://a.ns.svc.cluster.local", RULES, recording).rule is Rule.ALLOW_HOST
    assert policy.classify("http://127.0.0.1", RULES, recording).rule is Rule.ALLOW_NETWORK
    assert policy.classify("https://api.openai.com", RULES, recording).rule is Rule.DENY_HOST
    assert calls == []
    assert policy.classify("http://ollama", RULES, recording).verdict is Verdict.LOCAL
    assert calls == ["ollama"]


@pytest.mark.parametrize(
    ("url", "verdict", "rule"),
    [
        pytest.param("http://ollama:11434", E, Rule.UNRESOLVED, id="private name"),
        pytest.param("http://vllm.evil.com", E, Rule.UNRESOLVED, id="public name"),
        pytest.param("http://localhost", L, Rule.ALLOW_HOST, id="allow host"),
        pytest.param("http://x.svc.cluster.local", L, Rule.ALLOW_HOST, id="allow suffix"),
        pytest.param("http://10.0.0.1", L, Rule.ALLOW_NETWORK, id="literal"),
        pytest.param("http://api.openai.com", E, Rule.DENY_HOST, id="deny host"),
    ],
)
def test_without_resolver(url: str, verdict: Verdict, rule: Rule) -> None:
    decision = policy.classify(url, RULES, None)
    assert (decision.verdict, decision.rule) == (verdict, rule)
    if rule is Rule.UNRESOLVED:
        assert decision.reason == unresolved(parse_target(url).host)


def test_decision_carries_host_and_addresses() -> None:
    decision = policy.classify("http://dual.lan:8000", RULES, resolve)
    assert decision.host == "dual.lan"
    assert decision.addresses == ("10.0.0.8", "fd00::8")
    assert decision.is_local
    assert not policy.classify("http://8.8.8.8", RULES, resolve).is_local


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        pytest.param("localhost", "localhost", True, id="exact"),
        pytest.param("localhost", "localhost.evil.com", False, id="exact is not prefix"),
        pytest.param("*.svc.cluster.local", "a.svc.cluster.local", True, id="suffix one label"),
        pytest.param("*.svc.cluster.local", "a.b.svc.cluster.local", True, id="suffix many labels"),
        pytest.param("*.svc.cluster.local", "svc.cluster.local", False, id="suffix itself"),
        pytest.param("*.svc.cluster.local", "evilsvc.cluster.local", False, id="suffix inside label"),
        pytest.param("*.svc.cluster.local", "a.svc.cluster.local.evil.com", False, id="suffix not at end"),
        pytest.param("bedrock-runtime.*.amazonaws.com", "bedrock-runtime.us-east-1.amazonaws.com", True, id="middle"),
        pytest.param(
            "bedrock-runtime.*.amazonaws.com", "bedrock-runtime.amazonaws.com", False, id="middle needs label"
        ),
        pytest.param(
            "bedrock-runtime.*.amazonaws.com", "bedrock-runtime.a.b.amazonaws.com", False, id="middle one label"
        ),
        pytest.param("*.x.*.com", "a.b.x.c.com", True, id="leading and middle"),
        pytest.param("*.x.*.com", "x.c.com", False, id="leading needs label"),
    ],
)
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    assert policy.host_matches(pattern, host) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("LocalHost.", "localhost", id="case and dot"),
        pytest.param("*.SVC.cluster.local", "*.svc.cluster.local", id="wildcard"),
        pytest.param("*.bücher.example", "*.xn--bcher-kva.example", id="idna wildcard"),
        pytest.param("bedrock.*.amazonaws.com", "bedrock.*.amazonaws.com", id="middle wildcard"),
    ],
)
def test_validate_host_pattern(raw: str, expected: str) -> None:
    assert policy.validate_host_pattern(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param("*", "every host", id="star"),
        pytest.param("*.", "every host", id="star dot"),
        pytest.param("a*.example.com", "whole label", id="partial wildcard"),
        pytest.param("127.0.0.1", "allow_networks", id="ip address"),
        pytest.param("0x7f.1", "allow_networks", id="ip notation"),
        pytest.param("user@host", "not a valid host pattern", id="userinfo"),
        pytest.param("a..b", "not a valid host pattern", id="empty label"),
    ],
)
def test_validate_host_pattern_rejects(raw: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        policy.validate_host_pattern(raw)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("10.0.0.1", [("10.0.0.1", "")], id="ipv4"),
        pytest.param("::1", [("::1", "")], id="loopback"),
        pytest.param("::", [("::", "")], id="unspecified"),
        pytest.param("::ffff:127.0.0.1", [("127.0.0.1", "IPv4-mapped")], id="mapped"),
        pytest.param("::127.0.0.1", [("127.0.0.1", "IPv4-compatible"), ("::7f00:1", "")], id="compatible"),
        pytest.param("64:ff9b::a9fe:a9fe", [("64:ff9b::a9fe:a9fe", ""), (META, "NAT64")], id="nat64"),
        pytest.param("2002:a9fe:a9fe::", [("2002:a9fe:a9fe::", ""), (META, "6to4")], id="6to4"),
        pytest.param("fd00:ec2::254", [("fd00:ec2::254", "")], id="ula"),
    ],
)
def test_effective_addresses(address: str, expected: list[tuple[str, str]]) -> None:
    assert policy.effective_addresses(ip(address)) == [(ip(a), kind) for a, kind in expected]


def test_check_addresses_with_no_addresses() -> None:
    decision = policy.check_addresses("x.lan", [], RULES)
    assert (decision.verdict, decision.rule) == (Verdict.EXTERNAL, Rule.UNRESOLVED)
    assert decision.reason == policy.REASON_NO_ADDRESSES.format(host="x.lan")


def test_ipaddress_is_private_is_not_local() -> None:
    # The trap the design warns about: is_private is true for these, local is not.
    for url in ("http://169.254.169.254", "http://0.0.0.0", "http://[fe80::1]", "http://169.254.1.1"):
        assert ipaddress.ip_address(parse_target(url).host).is_private
        assert policy.classify(url, RULES, resolve).verdict is Verdict.EXTERNAL, url


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #

SCHEMES = st.sampled_from(["http", "https", "HTTP", "hTTps", "ftp", "file", "", "http:", "http:/"])
HOSTS = st.one_of(
    st.sampled_from(sorted(DNS)),
    st.sampled_from([h for h, _ in DENIED_HOSTS]),
    st.sampled_from(
        [
            "127.0.0.1",
            "0x7f.1",
            "2130706433",
            "[::1]",
            "[fe80::1%25eth0]",
            "[::ffff:127.0.0.1]",
            "ａｐｉ．ｏｐｅｎａｉ．ｃｏｍ",
            "１２７．０．０．１",
            "user@localhost",
            "localhost\\@evil",
            "%6c",
            "[",
            "",
            "bücher.example",
        ]
    ),
    st.text(max_size=20),
)
PORTS = st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"), st.text(max_size=4).map(lambda s: ":" + s))
PATHS = st.one_of(st.just(""), st.text(max_size=20).map(lambda s: "/" + s), st.sampled_from(["?x=@evil", "#@evil"]))


@st.composite
def urlish(draw: st.DrawFn) -> str:
    return f"{draw(SCHEMES)}://{draw(HOSTS)}{draw(PORTS)}{draw(PATHS)}"


def hostile_resolver(name: str) -> Sequence[IPAddress]:
    """Every name resolves to loopback: only the deny list can keep it external."""
    return [ip("127.0.0.1")]


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(), urlish()))
def test_classify_never_raises(url: str) -> None:
    decision = policy.classify(url, RULES, resolve)
    assert isinstance(decision.verdict, Verdict)
    assert isinstance(decision.rule, Rule)
    assert decision.reason
    assert (decision.verdict is Verdict.INVALID) == (decision.rule in (Rule.PARSE, Rule.ZONE))


def random_case(draw: st.DrawFn, text: str) -> str:
    flags = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flags, strict=True))


def full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@st.composite
def deny_listed_urls(draw: st.DrawFn) -> tuple[str, bool]:
    host = draw(st.sampled_from([h for h, _ in DENIED_HOSTS] + ["chat.openai.com", "x.y.googleapis.com"]))
    host = random_case(draw, host)
    if draw(st.booleans()):
        host += draw(st.sampled_from([".", "\u3002", "\uff0e", "\uff61"]))
    if draw(st.integers(0, 4)) == 0:
        host = full_width(host)
    scheme = random_case(draw, draw(st.sampled_from(["http", "https"])))
    userinfo = draw(st.sampled_from(["", "", "", "user@", "user:pw@", "localhost@", "127.0.0.1:80@"]))
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    path = draw(
        st.sampled_from(["", "/", "/v1", "/v1/chat/completions?stream=true", "/ollama/v1", "?@localhost", "#x"])
    )
    return f"{scheme}://{userinfo}{host}{port}{path}", bool(userinfo)


# An operator who allows everything still cannot reach a deny-listed host.
ALLOW_EVERYTHING = rules_with(
    allow_networks=["0.0.0.0/0", "::/0"],
    deny_networks=[],
    allow_hosts=["localhost", "api.openai.com", "*.com", "*.ai", "*.xyz", "*.internal"],
)


@settings(max_examples=400, deadline=None)
@given(deny_listed_urls(), st.sampled_from([RULES, ALLOW_EVERYTHING]))
def test_deny_listed_hosts_are_never_local(case: tuple[str, bool], rules: Rules) -> None:
    url, has_userinfo = case
    decision = policy.classify(url, rules, hostile_resolver)
    assert decision.verdict is not Verdict.LOCAL, decision.reason
    assert decision.rule is (Rule.PARSE if has_userinfo else Rule.DENY_HOST), decision.reason


# Addresses from every interesting range, for literals and resolver answers.
INTERESTING_NETWORKS = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "169.254.169.254/32",
    "0.0.0.0/8",
    "100.64.0.0/10",
    "100.100.100.200/32",
    "0.0.0.0/0",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fd00:ec2::254/128",
    "fe80::/10",
    "::ffff:0:0/96",
    "::/96",
    "64:ff9b::/96",
    "2002::/16",
    "::/0",
]
ADDRESSES = st.sampled_from(INTERESTING_NETWORKS).flatmap(lambda n: st.ip_addresses(network=n))


def render_literal(address: IPAddress, notation: int) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address.exploded if notation % 2 else address.compressed}]"
    value = int(address)
    return (str(address), str(value), hex(value), "0" + format(value, "o"), f"{value >> 24}.{value & 0xFFFFFF}")[
        notation % 5
    ]


def reaches(address: IPAddress) -> list[IPAddress]:
    """What a connection to ``address`` reaches (independent of effective_addresses)."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d: routed as IPv6
        return [ipaddress.IPv4Address(int(address)), address]
    out: list[IPAddress] = [address]
    if address in ipaddress.IPv6Network("64:ff9b::/96"):
        out.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        out.append(address.sixtofour)
    return out


def is_allowed(address: IPAddress, rules: Rules) -> bool:
    inside = any(address.version == n.version and address in n for n in rules.allow_networks)
    denied = any(address.version == n.version and address in n for n in rules.deny_networks)
    return inside and not denied


RULE_SETS = st.sampled_from([RULES, LINK_LOCAL_ALLOWED, rules_with(allow_networks=["10.0.0.0/8", "::/0"])])


# Names next to an allow_hosts pattern that must not match it.
NEAR_MISSES = [
    "svc.cluster.local",
    "evilsvc.cluster.local",
    "svc.cluster.local.evil",
    "internal.example",
    "evilinternal.example",
    "x.gpu-box.lan",
    "localhost.evil",
    "evil-localhost",
]


def allowed_name(host: str, rules: Rules) -> bool:
    """Independent re-statement of allow_hosts matching (exact or '*.suffix')."""
    for pattern in (p.pattern for p in rules.allow_hosts):
        if pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


@st.composite
def targets_and_dns(draw: st.DrawFn) -> tuple[str, dict[str, list[IPAddress]]]:
    kind = draw(st.sampled_from(["literal", "name", "name", "allow"]))
    dns: dict[str, list[IPAddress]] = {}
    if kind == "literal":
        host = render_literal(draw(ADDRESSES), draw(st.integers(0, 9)))
    else:
        labels = draw(
            st.lists(
                st.sampled_from(["ollama", "svc", "cluster", "local", "evil", "internal", "example", "gpu-box", "lan"]),
                min_size=1,
                max_size=4,
            )
        )
        if kind == "allow":
            labels += ["svc", "cluster", "local"]
        host = draw(st.sampled_from([".".join(labels), *NEAR_MISSES]))
        if draw(st.booleans()):
            dns[host] = draw(st.lists(ADDRESSES, max_size=3))
    return f"http://{host}:{draw(st.integers(1, 65535))}/v1", dns


@settings(max_examples=500, deadline=None)
@given(targets_and_dns(), RULE_SETS)
def test_nothing_but_allowed_addresses_and_names_is_local(
    case: tuple[str, dict[str, list[IPAddress]]], rules: Rules
) -> None:
    url, dns = case

    def lookup(name: str) -> Sequence[IPAddress]:
        if name not in dns:
            raise policy.ResolutionError(name)
        return dns[name]

    decision = policy.classify(url, rules, lookup)
    if decision.verdict is not Verdict.LOCAL:
        return
    target = parse_target(url)
    assert not any(p.matches(target.host) for p in rules.deny_hosts)
    if decision.rule is Rule.ALLOW_HOST:
        assert target.address is None
        assert allowed_name(target.host, rules)
        return
    assert decision.rule is Rule.ALLOW_NETWORK
    addresses = [target.address] if target.address is not None else dns[target.host]
    assert addresses
    assert target.zone is None
    for address in addresses:
        assert all(is_allowed(a, rules) for a in reaches(address)), address


def test_target_error_is_only_parse_failure() -> None:
    # classify() must translate every parser error into a Decision, never raise it.
    with pytest.raises(TargetError):
        parse_target("http://user@localhost")
    assert policy.classify("http://user@localhost", RULES).verdict is Verdict.INVALID
