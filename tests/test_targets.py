"""Tests for :mod:`airgap_proxy.policy.targets`: URL parsing and host normalisation."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airgap_proxy.policy.targets import MAX_URL_LENGTH, Target, TargetError, normalise_host, parse_target


def v4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def v6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(text)


# --------------------------------------------------------------------------- #
# Normalisation table: raw URL -> canonical (scheme, host, port, path, url, address)
# --------------------------------------------------------------------------- #

LOOPBACK = v4("127.0.0.1")

NORMALISATION_CASES = [
    # names
    pytest.param(
        "http://localhost:11434/v1",
        ("http", "localhost", 11434, "/v1", "http://localhost:11434/v1", None),
        id="plain name with port and path",
    ),
    pytest.param(
        "HTTP://LocalHost:11434/V1", ("http", "localhost", 11434, "/V1", "http://localhost:11434/V1", None), id="case"
    ),
    pytest.param(
        "http://localhost./v1", ("http", "localhost", 80, "/v1", "http://localhost/v1", None), id="trailing dot"
    ),
    pytest.param(
        "https://API.OpenAI.com./v1",
        ("https", "api.openai.com", 443, "/v1", "https://api.openai.com/v1", None),
        id="case and trailing dot",
    ),
    pytest.param("http://localhost", ("http", "localhost", 80, "", "http://localhost", None), id="no path"),
    pytest.param("http://localhost/", ("http", "localhost", 80, "/", "http://localhost/", None), id="root path"),
    pytest.param(
        "http://localhost:80/", ("http", "localhost", 80, "/", "http://localhost/", None), id="default port http"
    ),
    pytest.param(
        "https://localhost:443/v1",
        ("https", "localhost", 443, "/v1", "https://localhost/v1", None),
        id="default port https",
    ),
    pytest.param(
        "http://localhost:443/v1",
        ("http", "localhost", 443, "/v1", "http://localhost:443/v1", None),
        id="https port on http is kept",
    ),
    pytest.param(
        "https://localhost:80",
        ("https", "localhost", 80, "", "https://localhost:80", None),
        id="http port on https is kept",
    ),
    pytest.param(
        "http://localhost:/v1", ("http", "localhost", 80, "/v1", "http://localhost/v1", None), id="empty port"
    ),
    pytest.param(
        "http://localhost:08080",
        ("http", "localhost", 8080, "", "http://localhost:8080", None),
        id="port leading zeros",
    ),
    pytest.param(
        "http://localhost:65535", ("http", "localhost", 65535, "", "http://localhost:65535", None), id="highest port"
    ),
    pytest.param("http://localhost:1", ("http", "localhost", 1, "", "http://localhost:1", None), id="lowest port"),
    pytest.param(
        "http://localhost?x=1",
        ("http", "localhost", 80, "/?x=1", "http://localhost/?x=1", None),
        id="query without path gets a slash",
    ),
    pytest.param(
        "http://localhost/v1?x=1#frag",
        ("http", "localhost", 80, "/v1?x=1", "http://localhost/v1?x=1", None),
        id="fragment",
    ),
    pytest.param("http://localhost#x?y", ("http", "localhost", 80, "", "http://localhost", None), id="fragment only"),
    pytest.param(
        "http://localhost?@evil.com",
        ("http", "localhost", 80, "/?@evil.com", "http://localhost/?@evil.com", None),
        id="at sign in query is not userinfo",
    ),
    pytest.param(
        "http://localhost/@evil.com",
        ("http", "localhost", 80, "/@evil.com", "http://localhost/@evil.com", None),
        id="at sign in path is not userinfo",
    ),
    pytest.param(
        "http://vllm.llm.svc.cluster.local:8000/v1",
        ("http", "vllm.llm.svc.cluster.local", 8000, "/v1", "http://vllm.llm.svc.cluster.local:8000/v1", None),
        id="cluster name",
    ),
    pytest.param(
        "http://llama_cpp:8080", ("http", "llama_cpp", 8080, "", "http://llama_cpp:8080", None), id="underscore"
    ),
    pytest.param(
        "http://bücher.example/",
        ("http", "xn--bcher-kva.example", 80, "/", "http://xn--bcher-kva.example/", None),
        id="IDNA",
    ),
    pytest.param(
        "https://Bücher.Example:443/ü?ä#ö",
        ("https", "xn--bcher-kva.example", 443, "/ü?ä", "https://xn--bcher-kva.example/ü?ä", None),
        id="IDNA upper case, unicode path kept",
    ),
    pytest.param(
        "http://XN--BCHER-KVA.example",
        ("http", "xn--bcher-kva.example", 80, "", "http://xn--bcher-kva.example", None),
        id="punycode upper case",
    ),
    pytest.param(
        "http://ａｐｉ．ｏｐｅｎａｉ．ｃｏｍ/v1",
        ("http", "api.openai.com", 80, "/v1", "http://api.openai.com/v1", None),
        id="full-width name",
    ),
    pytest.param(
        "http://api\u3002openai\uff0ecom\uff61",
        ("http", "api.openai.com", 80, "", "http://api.openai.com", None),
        id="unicode dots and trailing unicode dot",
    ),
    pytest.param(
        "http://api.open\u00adai.com",
        ("http", "api.openai.com", 80, "", "http://api.openai.com", None),
        id="soft hyphen",
    ),
    pytest.param(
        "http://\u24dbocalhost", ("http", "localhost", 80, "", "http://localhost", None), id="circled letter maps"
    ),
    # IPv4 in every notation
    pytest.param(
        "http://127.0.0.1:8000/v1",
        ("http", "127.0.0.1", 8000, "/v1", "http://127.0.0.1:8000/v1", LOOPBACK),
        id="dotted",
    ),
    pytest.param("http://2130706433", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="decimal"),
    pytest.param("http://0177.0.0.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="octal"),
    pytest.param("http://0x7f.0.0.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="hex first part"),
    pytest.param("http://0X7F.0.0.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="hex upper"),
    pytest.param("http://0x7f000001", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="hex whole"),
    pytest.param("http://017700000001", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="octal whole"),
    pytest.param("http://127.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="short two parts"),
    pytest.param("http://127.0.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="short three parts"),
    pytest.param("http://0x7f.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="hex short"),
    pytest.param(
        "http://0x7f.0.0.01", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="mixed hex octal"
    ),
    pytest.param(
        "http://127.0.0.1.", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="ipv4 trailing dot"
    ),
    pytest.param("http://0000000177.1", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="octal zeros"),
    pytest.param("http://10.1", ("http", "10.0.0.1", 80, "", "http://10.0.0.1", v4("10.0.0.1")), id="short 10.1"),
    pytest.param(
        "http://192.168.257",
        ("http", "192.168.1.1", 80, "", "http://192.168.1.1", v4("192.168.1.1")),
        id="3 parts carry",
    ),
    pytest.param(
        "http://0300.0250.1.1",
        ("http", "192.168.1.1", 80, "", "http://192.168.1.1", v4("192.168.1.1")),
        id="octal 192.168",
    ),
    pytest.param(
        "http://2852039166",
        ("http", "169.254.169.254", 80, "", "http://169.254.169.254", v4("169.254.169.254")),
        id="decimal metadata",
    ),
    pytest.param(
        "http://0xa9fea9fe",
        ("http", "169.254.169.254", 80, "", "http://169.254.169.254", v4("169.254.169.254")),
        id="hex metadata",
    ),
    pytest.param("http://0", ("http", "0.0.0.0", 80, "", "http://0.0.0.0", v4("0.0.0.0")), id="zero"),
    pytest.param(
        "http://4294967295",
        ("http", "255.255.255.255", 80, "", "http://255.255.255.255", v4("255.255.255.255")),
        id="max decimal",
    ),
    pytest.param(
        "http://１２７．０．０．１", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="full-width digits"
    ),
    pytest.param(
        "http://０ｘ７ｆ．１", ("http", "127.0.0.1", 80, "", "http://127.0.0.1", LOOPBACK), id="full-width hex short"
    ),
    # IPv6
    pytest.param("http://[::1]:8000", ("http", "::1", 8000, "", "http://[::1]:8000", v6("::1")), id="ipv6 loopback"),
    pytest.param(
        "http://[0:0:0:0:0:0:0:1]/v1", ("http", "::1", 80, "/v1", "http://[::1]/v1", v6("::1")), id="ipv6 compression"
    ),
    pytest.param(
        "https://[2001:DB8:0:0:0:0:0:1]:443",
        ("https", "2001:db8::1", 443, "", "https://[2001:db8::1]", v6("2001:db8::1")),
        id="ipv6 upper case and default port",
    ),
    pytest.param(
        "http://[fd12:3456:0000::0001]:8000",
        ("http", "fd12:3456::1", 8000, "", "http://[fd12:3456::1]:8000", v6("fd12:3456::1")),
        id="ipv6 leading zeros",
    ),
    pytest.param(
        "http://[::ffff:127.0.0.1]",
        (
            "http",
            v6("::ffff:7f00:1").compressed,
            80,
            "",
            f"http://[{v6('::ffff:7f00:1').compressed}]",
            v6("::ffff:7f00:1"),
        ),
        id="ipv4-mapped",
    ),
    pytest.param(
        "http://[::127.0.0.1]",
        ("http", v6("::7f00:1").compressed, 80, "", f"http://[{v6('::7f00:1').compressed}]", v6("::7f00:1")),
        id="ipv4-compatible",
    ),
    pytest.param("http://[::]", ("http", "::", 80, "", "http://[::]", v6("::")), id="ipv6 unspecified"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISATION_CASES)
def test_parse_target_normalises(raw: str, expected: tuple[str, str, int, str, str, object]) -> None:
    scheme, host, port, path, url, address = expected
    target = parse_target(raw)
    assert (target.scheme, target.host, target.port, target.path, target.url) == (scheme, host, port, path, url)
    assert target.address == address
    assert target.is_ip is (address is not None)
    assert target.zone is None


@pytest.mark.parametrize(
    ("raw", "address", "zone"),
    [
        pytest.param("http://[fe80::1%25eth0]", "fe80::1", "eth0", id="percent-encoded zone"),
        pytest.param("http://[fe80::1%eth0]:8080/v1", "fe80::1", "eth0", id="raw zone"),
        pytest.param("http://[FE80::1%25Eth0.1]", "fe80::1", "Eth0.1", id="zone case kept"),
        pytest.param("http://[::1%25lo]", "::1", "lo", id="zone on loopback parses (policy rejects)"),
    ],
)
def test_parse_target_ipv6_zone(raw: str, address: str, zone: str) -> None:
    target = parse_target(raw)
    assert target.address == v6(address)
    assert target.host == address
    assert target.zone == zone


def test_target_properties() -> None:
    target = parse_target("https://[fd12::1]:8443/v1?x=1")
    assert target.netloc == "[fd12::1]:8443"
    assert target.origin == "https://[fd12::1]:8443"
    assert target.url == "https://[fd12::1]:8443/v1?x=1"
    name = parse_target("http://ollama:80/v1")
    assert (name.netloc, name.origin, name.is_ip) == ("ollama", "http://ollama", False)


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        pytest.param("LOCALHOST.", "localhost", id="name"),
        pytest.param("0x7f.1", "127.0.0.1", id="ipv4 notation"),
        pytest.param("[0::1]", "::1", id="ipv6"),
        pytest.param("Bücher.example", "xn--bcher-kva.example", id="idna"),
        pytest.param("ollama:11434", "ollama", id="port ignored"),
    ],
)
def test_normalise_host(raw: str, host: str) -> None:
    assert normalise_host(raw) == host


def test_normalise_host_rejects() -> None:
    with pytest.raises(TargetError, match="userinfo"):
        normalise_host("user@localhost")


# --------------------------------------------------------------------------- #
# Every TargetError, with the message fragment that explains it
# --------------------------------------------------------------------------- #

ERROR_CASES = [
    pytest.param("", "URL is empty", id="empty"),
    pytest.param("http://localhost/" + "a" * MAX_URL_LENGTH, f"longer than {MAX_URL_LENGTH}", id="too long"),
    pytest.param("http://local\thost", "(U+0009)", id="tab"),
    pytest.param("http://localhost\n.evil.com", "(U+000A)", id="newline"),
    pytest.param("http://localhost\r\n", "(U+000D)", id="CRLF"),
    pytest.param("http://localhost\x00.evil.com", "(U+0000)", id="NUL"),
    pytest.param("http://localhost\x7f", "(U+007F)", id="DEL"),
    pytest.param("http://localhost\u00a0", "(U+00A0)", id="NBSP"),
    pytest.param("http://local\u3000host", "(U+3000)", id="ideographic space"),
    pytest.param("http://localhost\u2028", "(U+2028)", id="line separator"),
    pytest.param("http://localhost\x85", "(U+0085)", id="NEL"),
    pytest.param(" http://localhost", "(U+0020)", id="leading space"),
    pytest.param("http://localhost/v1 ", "(U+0020)", id="trailing space in path"),
    pytest.param("http://evil.com\\@localhost", "backslash", id="backslash userinfo"),
    pytest.param("http:\\\\localhost", "backslash", id="backslash slashes"),
    pytest.param("http://localhost\\.evil.com", "backslash", id="backslash in host"),
    pytest.param("localhost/v1", "has no scheme", id="no scheme"),
    pytest.param("//localhost/v1", "has no scheme", id="scheme-relative"),
    pytest.param("127.0.0.1:8000", "has no scheme", id="no scheme ip port"),
    pytest.param("ftp://localhost/", "scheme 'ftp' is not allowed", id="ftp"),
    pytest.param("file:///etc/passwd", "scheme 'file' is not allowed", id="file"),
    pytest.param("javascript:alert(1)", "scheme 'javascript' is not allowed", id="javascript"),
    pytest.param("gopher://127.0.0.1:70/", "scheme 'gopher' is not allowed", id="gopher"),
    pytest.param("localhost:11434", "scheme 'localhost' is not allowed", id="host taken as scheme"),
    pytest.param("http:/localhost", "'//' after the scheme", id="one slash"),
    pytest.param("http:localhost", "'//' after the scheme", id="no slash"),
    pytest.param("http://localhost@evil.com", "userinfo", id="userinfo name"),
    pytest.param("http://user:pw@localhost", "userinfo", id="userinfo password"),
    pytest.param("http://@localhost", "userinfo", id="empty userinfo"),
    pytest.param("http://", "empty host", id="empty authority"),
    pytest.param("http:///localhost", "empty host", id="three slashes"),
    pytest.param("http://:8000/v1", "empty host", id="port only"),
    pytest.param("http://./", "empty host", id="dot only"),
    pytest.param("http://%6c%6f%63%61%6c%68%6f%73%74", "percent-encoded", id="percent host"),
    pytest.param("http://127%2E0%2E0%2E1", "percent-encoded", id="percent dots"),
    pytest.param("http://[::1", "missing its closing ']'", id="unclosed bracket"),
    pytest.param("http://[::1]evil.com", "unexpected characters after the IPv6 literal", id="junk after bracket"),
    pytest.param("http://evil.com:80:80", "host contains ':'", id="two colons"),
    pytest.param("http://::1/", "host contains ':'", id="unbracketed ipv6"),
    pytest.param("http://localhost:http", "port 'http' is not a number", id="named port"),
    pytest.param("http://localhost:11434.evil.com", "is not a number", id="port with name"),
    pytest.param("http://localhost:+80", "is not a number", id="signed port"),
    pytest.param("http://localhost:-1", "is not a number", id="negative port"),
    pytest.param("http://localhost:１１４３４", "is not a number", id="full-width port"),
    pytest.param("http://localhost:000080000", "is not a number", id="port too many digits"),
    pytest.param("http://localhost:0", "port 0 is out of range", id="port zero"),
    pytest.param("http://localhost:65536", "port 65536 is out of range", id="port too big"),
    pytest.param("http://[::1%25]", "zone id is malformed", id="empty zone"),
    pytest.param("http://[fe80::1%25eth0%2f]", "zone id is malformed", id="zone with percent"),
    pytest.param("http://[127.0.0.1]", "IPv6 literal is malformed", id="ipv4 in brackets"),
    pytest.param("http://[v1.fe80::a]", "IPv6 literal is malformed", id="ipvfuture"),
    pytest.param("http://[::ffff:127.1]", "IPv6 literal is malformed", id="short ipv4 in ipv6"),
    pytest.param("http://[]", "IPv6 literal is malformed", id="empty brackets"),
    pytest.param("http://[1:2:3:4:5:6:7:8:9]", "IPv6 literal is malformed", id="ipv6 too long"),
    pytest.param("http://api\ufe52openai.com", "characters IDNA does not allow", id="small full stop"),
    pytest.param("http://localhost\uff0fevil.com", "URL delimiters", id="full-width solidus"),
    pytest.param("http://evil.com\uff20localhost", "URL delimiters", id="full-width at"),
    pytest.param("http://localhost\uff1a11434", "URL delimiters", id="full-width colon"),
    pytest.param("http://local\uff05host", "URL delimiters", id="full-width percent"),
    pytest.param("http://a..b", "empty label", id="empty label"),
    pytest.param("http://localhost..", "empty label", id="two trailing dots"),
    pytest.param("http://\u0300a.com", "is not valid IDNA", id="leading combining mark"),
    pytest.param("http://a\u200db.com", "is not valid IDNA", id="zero width joiner"),
    pytest.param("http://" + ("a" * 63 + ".") * 4 + "com", "longer than 253", id="host too long"),
    pytest.param("http://" + "a" * 64 + ".com", "not allowed in a host name", id="label too long"),
    pytest.param("http://-evil.com", "not allowed in a host name", id="leading hyphen"),
    pytest.param("http://a.b-.com", "not allowed in a host name", id="trailing hyphen"),
    pytest.param("http://*.svc.cluster.local", "not allowed in a host name", id="wildcard"),
    pytest.param("http://evil.com\uff1f.x", "not allowed in a host name", id="full-width question mark"),
    pytest.param("http://1.2.3.4.5", "too many parts", id="five parts"),
    pytest.param("http://127.0.0.1.1", "too many parts", id="five parts loopback"),
    pytest.param("http://256.0.0.1", "out-of-range", id="octet too big"),
    pytest.param("http://127.0.0.256", "out-of-range", id="last octet too big"),
    pytest.param("http://127.16777216", "out-of-range", id="two parts too big"),
    pytest.param("http://4294967296", "out-of-range", id="decimal too big"),
    pytest.param("http://0x100000000", "out-of-range", id="hex too big"),
    pytest.param("http://0x100.0.0.1", "out-of-range", id="hex octet too big"),
    pytest.param("http://08.0.0.1", "not a valid IPv4 address", id="invalid octal 08"),
    pytest.param("http://09.0.0.1", "not a valid IPv4 address", id="invalid octal 09"),
    pytest.param("http://0x", "not a valid IPv4 address", id="bare 0x"),
    pytest.param("http://127.0.0.0x", "not a valid IPv4 address", id="bare 0x last"),
    pytest.param("http://0x7g.1", "not a valid IPv4 address", id="bad hex digit"),
    pytest.param("http://evil.127", "not a valid IPv4 address", id="name ending in number"),
    pytest.param("http://1_27.0.0.1", "not a valid IPv4 address", id="underscore in number"),
    pytest.param("http://0x7_f.1", "not a valid IPv4 address", id="underscore in hex"),
    pytest.param("http://+127.0.0.1", "not a valid IPv4 address", id="plus sign"),
    pytest.param("http://11.-256.0.1", "not a valid IPv4 address", id="negative part"),
    pytest.param("http://-1.0.0.1", "not a valid IPv4 address", id="negative first part"),
    pytest.param("http://\u2474.0.0.1", "not a valid IPv4 address", id="parenthesized digit"),
]


@pytest.mark.parametrize(("raw", "fragment"), ERROR_CASES)
def test_parse_target_rejects(raw: str, fragment: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(raw)
    assert fragment in str(info.value)


def test_parse_target_rejects_non_string() -> None:
    with pytest.raises(TargetError, match="not a string"):
        parse_target(b"http://localhost")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Properties
# --------------------------------------------------------------------------- #


def render_ipv4(address: ipaddress.IPv4Address, parts: int, bases: list[str], upper: bool) -> str:
    """Render ``address`` with ``parts`` numbers (1-4), each in decimal, octal or hex."""
    value = int(address)
    numbers = [(value >> (8 * (3 - i))) & 0xFF for i in range(parts - 1)]
    numbers.append(value & ((1 << (8 * (5 - parts))) - 1))
    out = []
    for number, base in zip(numbers, bases, strict=False):
        if base == "oct":
            text = "0" + format(number, "o")
        elif base == "hex":
            text = "0x" + format(number, "x")
        else:
            text = str(number)
        out.append(text.upper() if upper else text)
    return ".".join(out)


@st.composite
def ipv4_notations(draw: st.DrawFn) -> tuple[ipaddress.IPv4Address, str]:
    address = ipaddress.IPv4Address(int(draw(st.ip_addresses(v=4))))
    parts = draw(st.integers(1, 4))
    bases = draw(st.lists(st.sampled_from(["dec", "oct", "hex"]), min_size=parts, max_size=parts))
    return address, render_ipv4(address, parts, bases, draw(st.booleans()))


@st.composite
def ipv6_literals(draw: st.DrawFn) -> tuple[ipaddress.IPv6Address, str]:
    address = ipaddress.IPv6Address(int(draw(st.ip_addresses(v=6))))
    style = draw(st.sampled_from(["compressed", "exploded", "upper", "mapped"]))
    if style == "mapped":
        embedded = draw(st.ip_addresses(v=4))
        address = ipaddress.IPv6Address(f"::ffff:{embedded}")
        return address, f"::ffff:{embedded}"
    text = address.exploded if style == "exploded" else address.compressed
    return address, text.upper() if style == "upper" else text


LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=14).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
TLD = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=3).map(lambda s: s + "x")
PATH_SEGMENT = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~!$&'()*+,;=:@%-", max_size=8)
UNICODE_LABEL = st.sampled_from(["bücher", "ａｐｉ", "例え", "ÖSTERREICH", "straße", "münchen"])


@st.composite
def host_names(draw: st.DrawFn) -> str:
    labels = draw(st.lists(st.one_of(LABEL, UNICODE_LABEL), min_size=0, max_size=3))
    labels.append(draw(TLD))
    name = ".".join(labels)
    if draw(st.booleans()):
        name = name.upper()
    if draw(st.booleans()):
        name += "."
    return name


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    kind = draw(st.sampled_from(["name", "ipv4", "ipv6"]))
    if kind == "name":
        host = draw(host_names())
    elif kind == "ipv4":
        host = draw(ipv4_notations())[1]
    else:
        host = "[" + draw(ipv6_literals())[1] + "]"
    port = draw(st.one_of(st.none(), st.integers(1, 65535), st.sampled_from([80, 443])))
    path = "".join("/" + segment for segment in draw(st.lists(PATH_SEGMENT, max_size=3)))
    path += draw(st.sampled_from(["", "?", "?stream=true&x=/y?z", "#frag", "?a=1#b"]))
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"


def same(a: Target, b: Target) -> bool:
    return (a.scheme, a.host, a.port, a.path, a.address) == (b.scheme, b.host, b.port, b.path, b.address)


@settings(max_examples=500, deadline=None)
@given(urls())
def test_normalisation_is_idempotent(raw: str) -> None:
    target = parse_target(raw)  # every generated URL is well formed
    again = parse_target(target.url)
    assert same(again, target)
    assert again.url == target.url


@settings(max_examples=300, deadline=None)
@given(ipv4_notations(), st.booleans())
def test_every_ipv4_notation_denotes_its_address(case: tuple[ipaddress.IPv4Address, str], dot: bool) -> None:
    address, text = case
    target = parse_target(f"http://{text}{'.' if dot else ''}:8000/v1")
    assert target.address == address
    assert target.host == str(address)
    assert target.url == f"http://{address}:8000/v1"


@settings(max_examples=300, deadline=None)
@given(ipv6_literals())
def test_every_ipv6_literal_denotes_its_address(case: tuple[ipaddress.IPv6Address, str]) -> None:
    address, text = case
    target = parse_target(f"https://[{text}]/")
    assert target.address == address
    assert target.host == address.compressed


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.text(), st.text().map(lambda s: "http://" + s), urls().map(lambda u: u[:-1] + "\x00")))
def test_parse_target_raises_only_target_error(raw: str) -> None:
    try:
        target = parse_target(raw)
    except TargetError:
        return
    assert target.scheme in ("http", "https")
    assert same(parse_target(target.url), target)
