"""Fuzzing the policy and the request path (Hypothesis; atheris when installed).

1. URL parsing and classification, with one invariant checked by an oracle
   that does not reuse the policy's code: nothing that is not an allowed
   address or an allowed name is ever ``local``. For a ``local`` verdict the
   URL the egress client will open names exactly the classified host; every
   address it reaches (embedded IPv4 included) is in ``allow_networks`` and
   in no ``deny_networks``; the C library's own parser (``inet_aton`` /
   ``inet_pton``) reads the same address from the text; or the name is on
   ``allow_hosts`` and not denied, or everything it resolves to is allowed.
2. The request path: arbitrary bytes, methods, paths, headers and bodies sent
   over a real socket to the real application never produce a 500, never log
   an internal error, and a normal request still succeeds afterwards.

Findings are kept in ``tests/fuzz_corpus/*.txt`` and replayed by
:func:`test_corpus`. Run the atheris harness by hand with
``python -m tests.test_fuzz -runs=1000000`` (libFuzzer flags).
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from yarl import URL

from airgap_proxy import policy
from airgap_proxy.app import create_app
from airgap_proxy.policy.targets import IPAddress, TargetError, parse_target
from tests.conftest import ThreadedServers, make_config
from tests.fakes import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
# FUZZ_SCALE=10 runs ten times as many examples (a longer run by hand).
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
URL_EXAMPLES = 1500 * SCALE
REQUEST_EXAMPLES = 600 * SCALE
JSON_EXAMPLES = 600 * SCALE
ATHERIS_RUNS = 20_000
ADMIN_TOKEN = "fuzz-admin-token-0123456789"
SECRET_KEY = "fuzz-secret-key-0123456789abcdef"

# --------------------------------------------------------------------------- the oracle

NARROW = policy.Rules(
    allow_networks=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")),
    deny_networks=(ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("169.254.169.254/32")),
    allow_hosts=(policy.HostPattern("*.internal.test"), policy.HostPattern("localhost")),
    deny_hosts=(*policy.Rules().deny_hosts, policy.HostPattern("bad.internal.test", "deny_hosts")),
)
RULES = {"default": policy.Rules(), "narrow": NARROW}


def reached(address: IPAddress) -> list[IPAddress]:
    """Every address a connection to ``address`` can end up at (written apart from the policy)."""
    if address.version == 4:
        return [address]
    value = int(address)
    if value >> 32 == 0xFFFF:  # ::ffff:0:0/96, IPv4-mapped: the socket talks IPv4
        return [ipaddress.IPv4Address(value & 0xFFFFFFFF)]
    if value >> 32 == 0 and value > 1:  # ::/96, IPv4-compatible: Linux routes it as IPv6, off the host
        return [ipaddress.IPv4Address(value & 0xFFFFFFFF), address]
    out: list[IPAddress] = [address]
    if value >> 32 == 0x0064FF9B << 64 or value >> 80 == 0x0064FF9B0001:  # NAT64 64:ff9b::/96, 64:ff9b:1::/48
        out.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if value >> 112 == 0x2002:  # 6to4
        out.append(ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))
    return out


def allowed(address: IPAddress, rules: policy.Rules) -> bool:
    def inside(networks: Sequence[policy.Network], a: IPAddress) -> bool:
        return any(n.version == a.version and a in n for n in networks)

    return all(inside(rules.allow_networks, a) and not inside(rules.deny_networks, a) for a in reached(address))


def raw_host(url: str) -> str:
    """The host text as written, cut out without any URL library."""
    rest = url.split("//", 1)[1]
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def libc_address(text: str) -> IPAddress | None:
    """The address the C library reads from ``text``, if it reads one."""
    if ":" in text:
        try:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text.split("%", 1)[0]))
        except (OSError, ValueError):
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
    except (OSError, ValueError, UnicodeError):
        return None


def check_never_local_unless_allowed(url: str, rules: policy.Rules, table: Mapping[str, Sequence[str]]) -> None:
    """The fuzzing invariant, for one URL, one policy and one DNS table."""

    def resolve(host: str) -> list[IPAddress]:
        if host not in table:
            raise policy.ResolutionError(host)
        return [ipaddress.ip_address(a) for a in table[host]]

    decision = policy.classify(url, rules, resolve)  # never raises
    if decision.verdict is not policy.Verdict.LOCAL:
        return
    target = parse_target(url)  # a local verdict means the URL parsed
    assert policy.deny_host_match(target.host, rules) is None, (url, decision)
    # The egress client opens target.url: it must name the very host that was classified.
    opened = URL(target.url, encoded=True)
    assert opened.scheme in ("http", "https") and opened.port == target.port, url
    assert not opened.user and not opened.password, url
    if target.address is not None:
        assert opened.raw_host is not None and ipaddress.ip_address(opened.raw_host) == target.address, (url, opened)
        assert allowed(target.address, rules), (url, decision)
        assert target.zone is None, (url, decision)
        written = raw_host(url)
        if written.isascii():
            libc = libc_address(written)
            assert libc is None or libc == target.address, (url, libc, target.address)
        return
    assert opened.raw_host == target.host, (url, opened)
    if policy.allow_host_match(target.host, rules) is not None:
        return
    assert target.host in table, (url, decision)
    assert table[target.host] and all(allowed(ipaddress.ip_address(a), rules) for a in table[target.host]), (
        url,
        decision,
    )


# --------------------------------------------------------------------------- URL strategies

INTERESTING_V4 = (
    "127.0.0.1",
    "127.255.255.255",
    "0.0.0.0",
    "10.0.0.5",
    "10.255.255.255",
    "11.0.0.0",
    "9.255.255.255",
    "169.254.169.254",
    "172.15.255.255",
    "172.16.0.0",
    "172.31.255.255",
    "172.32.0.0",
    "192.168.0.1",
    "192.169.0.1",
    "100.64.0.1",
    "100.100.100.200",
    "203.0.113.10",
    "255.255.255.255",
)
V4_VALUES = st.one_of(
    st.sampled_from([int(ipaddress.IPv4Address(a)) for a in INTERESTING_V4]), st.integers(0, 2**32 - 1)
)


def _number(value: int, style: str, width: int) -> str:
    if style == "hex":
        return hex(value)
    if style == "HEX":
        return "0X" + format(value, "X")
    if style == "oct":
        return "0" + format(value, "o")
    if style == "pad":
        return str(value).zfill(width + 1)
    return str(value)


@st.composite
def ipv4_text(draw: st.DrawFn) -> str:
    value = draw(V4_VALUES)
    parts = draw(st.sampled_from([1, 2, 3, 4]))
    octets = list(ipaddress.IPv4Address(value).packed)
    if parts == 1:
        numbers = [value]
    elif parts == 2:
        numbers = [octets[0], value & 0xFFFFFF]
    elif parts == 3:
        numbers = [octets[0], octets[1], value & 0xFFFF]
    else:
        numbers = octets
    styles = st.sampled_from(["dec", "hex", "HEX", "oct", "pad"])
    text = ".".join(_number(n, draw(styles), 3) for n in numbers)
    if draw(st.booleans()):
        # Perturb: out-of-range parts, signs, underscores, extra dots.
        text = draw(
            st.sampled_from([text, text + ".", text + "..", "+" + text, text + "_1", text + ".256", text + "x"])
        )
    return text


@st.composite
def ipv6_text(draw: st.DrawFn) -> str:
    v4 = ipaddress.IPv4Address(draw(V4_VALUES))
    hi, lo = int(v4) >> 16, int(v4) & 0xFFFF
    form = draw(
        st.sampled_from(
            [
                f"::ffff:{v4}",
                f"::ffff:{hi:x}:{lo:x}",
                f"0:0:0:0:0:ffff:{v4}",
                f"64:ff9b::{v4}",
                f"64:ff9b::{hi:x}:{lo:x}",
                f"64:ff9b:1::{hi:x}:{lo:x}",
                f"2002:{hi:x}:{lo:x}::1",
                f"::{v4}",
                "::1",
                "::",
                "fe80::1",
                "fd00:ec2::254",
                "fc00::1",
                str(ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))),
            ]
        )
    )
    if draw(st.booleans()):
        form = form.upper()
    if draw(st.integers(0, 4)) == 0:
        form += draw(st.sampled_from(["%eth0", "%25lo", "%", "%1"]))
    return f"[{form}]"


LABELS = (
    "localhost",
    "svc",
    "cluster",
    "local",
    "ollama",
    "api",
    "openai",
    "com",
    "internal",
    "test",
    "bad",
    "metadata",
    "google",
    "xn--nxasmq6b",
    "x",
    "0x7f",
    "1",
    "LOCALHOST",
    "ｌｏｃａｌｈｏｓｔ",
    "a-b",
    "_srv",
)


@st.composite
def name_text(draw: st.DrawFn) -> str:
    labels = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=5))
    separator = draw(st.sampled_from([".", ".", ".", "。", "．", "｡"]))
    text = separator.join(labels)
    if draw(st.booleans()):
        text += draw(st.sampled_from([".", "..", "%2e", "\u200b"]))
    return text


HOSTS = st.one_of(ipv4_text(), ipv6_text(), name_text(), st.text(max_size=30))


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp", "file", "http:", ""]))
    slashes = draw(st.sampled_from(["//", "//", "//", "/", "///", "\\\\", ""]))
    userinfo = draw(st.sampled_from(["", "", "", "user@", "user:pw@", "127.0.0.1@", "a@b@"]))
    host = draw(HOSTS)
    port = draw(st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}"), st.sampled_from([":", ":0x50"])))
    path = draw(st.sampled_from(["", "/", "/v1", "/v1?x=1", "#frag", "?q", "/@evil.example", "\\@x"]))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=60))
    return f"{scheme}:{slashes}{userinfo}{host}{port}{path}"


@st.composite
def dns_tables(draw: st.DrawFn) -> dict[str, list[str]]:
    names = draw(st.lists(name_text(), max_size=3))
    table: dict[str, list[str]] = {}
    for name in names:
        try:
            host = parse_target(f"http://{name}/").host
        except TargetError:
            continue
        addresses = draw(
            st.lists(
                st.one_of(V4_VALUES.map(lambda v: str(ipaddress.IPv4Address(v))), ipv6_text().map(lambda t: t[1:-1])),
                max_size=3,
            )
        )
        table[host] = [a.split("%", 1)[0] for a in addresses if ipaddress_or_none(a.split("%", 1)[0])]
    return table


def ipaddress_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@settings(max_examples=URL_EXAMPLES, deadline=None)
@given(url=urls(), rules=st.sampled_from(sorted(RULES)), table=dns_tables())
def test_nothing_unallowed_is_ever_local(url: str, rules: str, table: dict[str, list[str]]) -> None:
    check_never_local_unless_allowed(url, RULES[rules], table)


@settings(max_examples=URL_EXAMPLES // 3, deadline=None)
@given(host=st.one_of(ipv4_text(), ipv6_text()))
def test_ip_literals_agree_with_the_c_library(host: str) -> None:
    """Whatever ``inet_aton``/``inet_pton`` read from a literal, the parser reads the same or refuses it."""
    try:
        target = parse_target(f"http://{host}:8000/v1")
    except TargetError:
        return
    written = host[1:-1] if host.startswith("[") else host
    libc = libc_address(written)
    if target.address is not None and libc is not None:
        assert target.address == libc, (host, target.address, libc)
    if target.address is None:
        # A name: the C library must not read it as an address either.
        assert libc is None, (host, libc)


# --------------------------------------------------------------------------- the request path


def echo_upstream() -> web.Application:
    """Answers 200 to anything without reading it: any 500 seen is then the proxy's own."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # aiohttp logs the requests its own HTTP parser refuses (it answers 400 itself): not ours.
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            return
        self.records.append(record)


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ErrorRecords]]:
    servers = ThreadedServers()
    records = ErrorRecords()
    aiohttp_logger = logging.getLogger("aiohttp")
    aiohttp_logger.addHandler(records)
    try:
        upstream_port = servers.start(echo_upstream())
        store = tmp_path_factory.mktemp("fuzz") / "tenants.db"
        config = make_config(
            {
                "upstreams": [
                    {"name": "echo", "base_url": f"http://127.0.0.1:{upstream_port}/v1", "models": ["up*"]},
                ],
                "tenants": {"store": str(store)},
                "limits": {"max_body_bytes": 64 * 1024},
                "health": {"interval_s": 3600},
            },
            {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN, "AIRGAP_PROXY_SECRET_KEY": SECRET_KEY},
        )
        port = servers.start(create_app(config))
        yield port, records
    finally:
        aiohttp_logger.removeHandler(records)
        servers.close()


def exchange(port: int, data: bytes, timeout: float = 2.0) -> int | None:
    """Send raw bytes; the status code of the answer, or None if the server just closed.

    Reads the whole answer (every request says ``Connection: close``): closing early would
    race the server's writes, a different test (see the report in docs/robustness.md).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        buffer = b""
        try:
            while len(buffer) < 4 * 1024 * 1024:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not buffer.startswith(b"HTTP/1."):
        return None
    return int(buffer.split(b" ", 2)[1])


def request_bytes(
    method: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes, length: str
) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: proxy", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if length == "correct":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    elif length == "short" and body:
        lines.append(b"Content-Length: " + str(len(body) // 2).encode())
    elif length == "garbage":
        lines.append(b"Content-Length: -1, 5")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


HEADER_NAMES = (
    b"Content-Type",
    b"Authorization",
    b"X-Tenant-ID",
    b"X-Request-ID",
    b"X-Airgap-Mode",
    b"Transfer-Encoding",
    b"Content-Encoding",
    b"Accept-Encoding",
    b"Expect",
    b"Upgrade",
    b"Cookie",
    b"X-Forwarded-For",
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"application/json; charset=latin-1",
            b"text/plain",
            b"multipart/form-data; boundary=x",
            b"Bearer " + ADMIN_TOKEN.encode(),
            b"Bearer wrong",
            b"deterministic",
            b"chunked",
            b"gzip",
            b"100-continue",
            b"websocket",
            b"tenant-a",
            b"../../etc",
            b"",
        ]
    ),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/v1/files/x",
            "/v1/../admin",
            "/v1/%2e%2e/x",
            "/v1//x",
            "/api/v1/llm/status",
            "/api/v1/llm/status?tenant=%00",
            "/api/v1/tenants",
            "/api/v1/tenants/tenant-a/llm-provider",
            "/api/v1/tenants/../llm-provider",
            "/healthz",
            "/readyz",
            "/metrics",
            "*",
            "http://127.0.0.1/v1/models",
        ]
    ),
    st.text(max_size=30).map(lambda t: "/v1/" + t),
    st.text(max_size=20).map(lambda t: f"/api/v1/tenants/{t}/llm-provider"),
).map(lambda p: p.encode("utf-8", "surrogatepass"))
METHODS = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE", b"CONNECT"]),
    st.binary(min_size=1, max_size=8).filter(lambda b: b" " not in b and b"\r" not in b and b"\n" not in b),
)
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
SCHEMAS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "string", "array", "integer", "number", "boolean", "null", "bogus"])},
        optional={
            "properties": st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
            "required": st.lists(st.text(max_size=5), max_size=3),
            "items": JSON_VALUES,
            "enum": st.lists(JSON_LEAVES, max_size=3),
            "minItems": st.integers(-5, 100),
            "maxLength": st.integers(-5, 100),
            "pattern": st.sampled_from(["^a+$", "(", "[0-9]{3}"]),
            "$ref": st.sampled_from(["#", "#/definitions/x", "http://127.0.0.1/schema"]),
        },
    ),
)
CHAT_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["up-1", "default", "", "other", "up"]), JSON_VALUES),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
                    optional={"content": st.one_of(st.text(max_size=40), JSON_VALUES)},
                ),
                max_size=3,
            ),
            JSON_VALUES,
        ),
        "prompt": st.one_of(st.text(max_size=20), st.lists(st.integers(-1, 70000), max_size=5), JSON_VALUES),
        "input": st.one_of(st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3), JSON_VALUES),
        "stream": st.one_of(st.booleans(), JSON_VALUES),
        "stream_options": st.one_of(st.just({"include_usage": True}), JSON_VALUES),
        "n": st.one_of(st.integers(-2, 5), JSON_VALUES),
        "max_tokens": st.one_of(st.integers(-2, 100), JSON_VALUES),
        "dimensions": st.one_of(st.integers(-2, 5000), JSON_VALUES),
        "encoding_format": st.sampled_from(["float", "base64", "x"]),
        "tools": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.just("function"),
                        "function": st.fixed_dictionaries(
                            {"name": st.text(max_size=8)}, optional={"parameters": SCHEMAS}
                        ),
                    }
                ),
                max_size=2,
            ),
            JSON_VALUES,
        ),
        "tool_choice": st.one_of(st.sampled_from(["auto", "required", "none"]), JSON_VALUES),
        "response_format": st.one_of(
            st.just({"type": "json_object"}),
            st.fixed_dictionaries(
                {
                    "type": st.just("json_schema"),
                    "json_schema": st.fixed_dictionaries({"name": st.just("x")}, optional={"schema": SCHEMAS}),
                }
            ),
            JSON_VALUES,
        ),
        "api_base": st.just("http://203.0.113.10/"),
    },
)
SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


def assert_no_internal_error(
    status: int | None, logs: Sequence[MutableMapping[str, Any]], records: ErrorRecords, sent: bytes
) -> None:
    assert status != 500, sent[:2000]
    internal = [e for e in logs if e.get("event") == "internal_error" or e.get("log_level") in ("error", "critical")]
    assert not internal, (internal, sent[:2000])
    assert not records.records, ([r.getMessage() for r in records.records], sent[:2000])


@settings(max_examples=REQUEST_EXAMPLES, deadline=None, suppress_health_check=SUPPRESS)
@given(
    method=METHODS,
    path=PATHS,
    headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES), max_size=5),
    body=st.one_of(st.binary(max_size=300), CHAT_BODIES.map(lambda d: json.dumps(d).encode())),
    length=st.sampled_from(["correct", "correct", "correct", "missing", "short", "garbage"]),
)
# An unsupported Expect with a body that does not decode: aiohttp used to fail draining it after the 417.
# A CONNECT (no route matches it) with an Expect that is not UTF-8: aiohttp's own handler answered 500.
# A request refused before its body was read, with a body that does not decode: aiohttp failed draining it.
@example(
    method=b"GET",
    path=b"/v1/chat/completions",
    headers=[(b"X-Tenant-ID", b"application/json"), (b"Content-Encoding", b"gzip")],
    body=b"\x00\x00",
    length="correct",
)
@example(method=b"CONNECT", path=b"/v1/chat/completions", headers=[(b"Expect", b"\x80")], body=b"", length="correct")
@example(
    method=b"GET",
    path=b"/v1/chat/completions",
    headers=[(b"Content-Encoding", b"gzip"), (b"Expect", b"application/json")],
    body=b"\x00\x00",
    length="correct",
)
def test_arbitrary_requests_never_500(
    served_app: tuple[int, ErrorRecords],
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    length: str,
) -> None:
    port, records = served_app
    sent = request_bytes(method, path, headers, body, length)
    records.records.clear()
    with capture_logs() as logs:
        status = exchange(port, sent)
    assert_no_internal_error(status, logs, records, sent)


@settings(max_examples=JSON_EXAMPLES, deadline=None, suppress_health_check=SUPPRESS)
@given(
    endpoint=st.sampled_from(["chat/completions", "completions", "embeddings", "responses"]),
    body=CHAT_BODIES,
    deterministic=st.booleans(),
    tenant=st.sampled_from([None, "tenant-a", "unknown"]),
)
def test_arbitrary_openai_bodies_never_500(
    served_app: tuple[int, ErrorRecords], endpoint: str, body: dict[str, Any], deterministic: bool, tenant: str | None
) -> None:
    """Well-framed requests with strange JSON: validation, routing and the fallback synthesizer."""
    port, records = served_app
    headers = [(b"Content-Type", b"application/json")]
    if deterministic:
        headers.append((b"X-Airgap-Mode", b"deterministic"))
    if tenant:
        headers.append((b"X-Tenant-ID", tenant.encode()))
    sent = request_bytes(b"POST", f"/v1/{endpoint}".encode(), headers, json.dumps(body).encode(), "correct")
    records.records.clear()
    with capture_logs() as logs:
        status = exchange(port, sent, timeout=5.0)
    assert status is not None, sent[:2000]
    assert_no_internal_error(status, logs, records, sent)


def test_undecodable_request_body_is_400(served_app: tuple[int, ErrorRecords]) -> None:
    """Found by the request fuzzer: aiohttp's RequestPayloadError is not translated."""
    port, records = served_app
    sent = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"
    )
    records.records.clear()
    with capture_logs() as logs:
        status = exchange(port, sent)
    assert status == 400
    assert_no_internal_error(status, logs, records, sent)


async def test_compressed_request_body_reaches_the_upstream_consistently(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Found with the request fuzzer: the upstream must get bytes that match their Content-Encoding."""
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    config = make_config(None, {"LLM_BASE_URL": f"http://127.0.0.1:{server.port}/v1"})
    client = await aiohttp_client(create_app(config))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    resp = await client.post(
        "/v1/chat/completions",
        data=gzip.compress(body),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert resp.status == 200
    [received] = fake.received
    encoding = {k.lower(): v for k, v in received.headers.items()}.get("content-encoding")
    sent_body = gzip.decompress(received.body) if encoding == "gzip" else received.body
    assert sent_body == body


def test_non_ascii_expect_header_is_not_a_500(served_app: tuple[int, ErrorRecords]) -> None:
    """Found by the request fuzzer: aiohttp's default expect handler runs before the middleware, on every route."""
    port, records = served_app
    for path in (b"/v1/chat/completions", b"/healthz"):
        sent = request_bytes(b"GET", path, [(b"Expect", b"\x80")], b"", "correct")
        records.records.clear()
        with capture_logs() as logs:
            status = exchange(port, sent)
        assert status == 417
        assert_no_internal_error(status, logs, records, sent)


def normal_request_succeeds(port: int) -> None:
    body = json.dumps({"model": "up-1", "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert exchange(port, request_bytes(b"POST", b"/v1/chat/completions", [], body, "correct")) == 200
    assert exchange(port, request_bytes(b"GET", b"/healthz", [], b"", "missing")) == 200


def test_still_serving_after_fuzzing(served_app: tuple[int, ErrorRecords]) -> None:
    """Runs after the fuzz tests above (same module-scoped app): the process is alive and serves."""
    port, records = served_app
    records.records.clear()
    normal_request_succeeds(port)
    assert not records.records


# --------------------------------------------------------------------------- the corpus


def corpus_cases() -> list[Any]:
    cases = []
    for path in sorted(CORPUS.glob("*.txt")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip() and not line.startswith("#"):
                cases.append(pytest.param(path.stem, line, id=f"{path.stem}:{number}"))
    return cases


@pytest.mark.parametrize(("kind", "line"), corpus_cases())
def test_corpus(served_app: tuple[int, ErrorRecords], kind: str, line: str) -> None:
    """``urls*.txt``: one URL a line; ``requests*.txt``: one Python bytes literal (a raw request) a line."""
    if kind.startswith("urls"):
        for rules in RULES.values():
            check_never_local_unless_allowed(line, rules, {})
        return
    port, records = served_app
    sent = ast.literal_eval(line)
    assert isinstance(sent, bytes)
    records.records.clear()
    with capture_logs() as logs:
        status = exchange(port, sent)
    assert_no_internal_error(status, logs, records, sent)
    normal_request_succeeds(port)


# --------------------------------------------------------------------------- atheris


def test_atheris_bounded_run(tmp_path: Path) -> None:
    """A coverage-guided run of the policy harness below, bounded in iterations."""
    pytest.importorskip("atheris")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "corpus").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.test_fuzz",
            f"-runs={ATHERIS_RUNS}",
            "-seed=7",
            "-max_len=200",
            f"-artifact_prefix={tmp_path}/",
            str(tmp_path / "corpus"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {ATHERIS_RUNS} runs" in result.stderr, result.stderr[-2000:]


def atheris_main(argv: list[str]) -> None:
    """libFuzzer over :func:`check_never_local_unless_allowed`, the policy modules instrumented."""
    import atheris

    # Re-import the policy under instrumentation so coverage guides the search.
    for name in [n for n in sys.modules if n.startswith("airgap_proxy")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["airgap_proxy", "idna"]):
        from airgap_proxy import policy as instrumented_policy
        from airgap_proxy.policy import targets as instrumented_targets
    globals().update(policy=instrumented_policy, parse_target=instrumented_targets.parse_target)
    globals().update(TargetError=instrumented_targets.TargetError)
    rules = [policy.Rules(), NARROW]
    prefixes = ["http://", "https://", "http://user@", "HTTP://", "http:/", ""]

    def one_input(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        rule = rules[provider.ConsumeIntInRange(0, 1)]
        prefix = prefixes[provider.ConsumeIntInRange(0, len(prefixes) - 1)]
        table: dict[str, list[str]] = {}
        if provider.ConsumeBool():
            name = provider.ConsumeUnicodeNoSurrogates(12).lower()
            table[name] = [str(ipaddress.IPv4Address(provider.ConsumeIntInRange(0, 2**32 - 1)))]
        check_never_local_unless_allowed(prefix + provider.ConsumeUnicodeNoSurrogates(120), rule, table)

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    atheris_main(sys.argv[1:])
