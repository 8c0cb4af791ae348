"""Parse and normalise an upstream URL into a :class:`Target` (pure, no I/O).

The parser is deliberately stricter than any browser or HTTP library: where two
well-known parsers (WHATWG URL and RFC 3986 / ``urllib``) could disagree about
which host a string names, the string is rejected (:class:`TargetError`), so
the host we classify is always the host we would connect to.

Host normalisation, in order:

1. Control characters, whitespace, backslashes and percent-encoding anywhere
   in the authority are rejected (parser-differential tricks).
2. Non-ASCII hosts are mapped with UTS #46 (full-width forms, Unicode dots,
   case) exactly as a browser would, then IDNA-encoded.
3. A trailing dot is removed; empty labels are rejected.
4. If the last label is numeric, the host is an IPv4 literal in one of the
   notations ``inet_aton`` accepts (decimal, octal, hex, 1-4 parts);
   anything else numeric-looking is rejected as ambiguous.
5. Bracketed hosts are IPv6 literals, with an optional zone id.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 2048

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_NAME_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL_RE = re.compile(r"^(?:0[xX][0-9A-Fa-f]*|[0-9]+)$")
_ZONE_RE = re.compile(r"^[A-Za-z0-9_.\-~]{1,64}$")
# Characters that end the authority in every URL parser we care about.
_AUTHORITY_END = re.compile(r"[/?#]")


QUERY_IN_BASE_URL = "URL has a query string or fragment (a key belongs in api_key, not the URL)"


class TargetError(ValueError):
    """The string is not a URL we can name a single host for (verdict: invalid)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised upstream URL.

    ``host`` is canonical: lower-case ASCII name without trailing dot, or the
    compressed text of an IP address (``address`` is then set). ``url`` is the
    URL rebuilt from the canonical parts; the egress client connects to it, never
    to the string the operator typed.
    """

    scheme: str
    host: str
    port: int
    path: str
    address: IPAddress | None
    zone: str | None = None

    @property
    def is_ip(self) -> bool:
        return self.address is not None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, ipaddress.IPv6Address) else self.host
        if DEFAULT_PORTS[self.scheme] == self.port:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def parse_target(raw: str) -> Target:
    """Parse ``raw`` into a :class:`Target` or raise :class:`TargetError` with a reason."""
    if not isinstance(raw, str):
        raise TargetError("URL is not a string")
    if not raw:
        raise TargetError("URL is empty")
    if len(raw) > MAX_URL_LENGTH:
        raise TargetError(f"URL is longer than {MAX_URL_LENGTH} characters")
    for ch in raw:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or ch.isspace():
            raise TargetError(f"URL contains a control or whitespace character (U+{ord(ch):04X})")
    if "\\" in raw:
        raise TargetError("URL contains a backslash (parsers disagree on where the host ends)")

    match = _SCHEME_RE.match(raw)
    if match is None:
        raise TargetError("URL has no scheme (expected http:// or https://)")
    scheme = match.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise TargetError(f"scheme {scheme!r} is not allowed (only http and https)")
    rest = raw[match.end() :]
    if not rest.startswith("//"):
        raise TargetError("URL must have '//' after the scheme")
    rest = rest[2:]

    end = _AUTHORITY_END.search(rest)
    authority = rest if end is None else rest[: end.start()]
    remainder = "" if end is None else rest[end.start() :]
    path = remainder.split("#", 1)[0]
    if path.startswith("?"):
        path = "/" + path

    if "@" in authority:
        raise TargetError("URL contains userinfo ('user@host' can hide the real host)")
    if not authority:
        raise TargetError("URL has an empty host")
    if "%" in authority and not authority.startswith("["):
        raise TargetError("host is percent-encoded (parsers disagree on its meaning)")

    host_text, port = _split_host_port(authority, scheme)
    if host_text.startswith("["):
        address, zone = _parse_ipv6_literal(host_text)
        return Target(scheme, address.compressed, port, path, address, zone)
    host = _normalise_name(host_text)
    address4 = _parse_ipv4_if_numeric(host)
    if address4 is not None:
        return Target(scheme, address4.compressed, port, path, address4)
    return Target(scheme, host, port, path, None)


def parse_base_url(raw: str) -> Target:
    """Parse an upstream base URL: a target with no query string or fragment.

    Request paths are appended to a base URL, so a query would land in the
    middle of every URL sent (``/v1?api_key=K/chat/completions``), and a key
    in it would be shown wherever the URL is. Credentials belong in ``api_key``.
    """
    if "?" in raw or "#" in raw:
        raise TargetError(QUERY_IN_BASE_URL)
    return parse_target(raw)


def normalise_host(raw: str) -> str:
    """Normalise a bare host name or IP literal as :func:`parse_target` would."""
    target = parse_target(f"http://{raw}/")
    return target.host


def _split_host_port(authority: str, scheme: str) -> tuple[str, int]:
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise TargetError("IPv6 literal is missing its closing ']'")
        host, tail = authority[: close + 1], authority[close + 1 :]
        if tail and not tail.startswith(":"):
            raise TargetError("unexpected characters after the IPv6 literal")
        port_text = tail[1:] if tail else None
    else:
        if authority.count(":") > 1:
            raise TargetError("host contains ':' (IPv6 literals must be in brackets)")
        host, sep, port_text_raw = authority.partition(":")
        port_text = port_text_raw if sep else None
    if port_text is None or port_text == "":
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise TargetError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise TargetError(f"port {port} is out of range 1-65535")
    return host, port


def _parse_ipv6_literal(text: str) -> tuple[ipaddress.IPv6Address, str | None]:
    inner = text[1:-1]
    zone: str | None = None
    if "%" in inner:
        inner, _, zone = inner.partition("%")
        if zone.startswith("25"):
            zone = zone[2:]
        if not _ZONE_RE.match(zone):
            raise TargetError("IPv6 zone id is malformed")
    if not inner or not all(c in "0123456789abcdefABCDEF:." for c in inner):
        raise TargetError("IPv6 literal is malformed")
    try:
        return ipaddress.IPv6Address(inner), zone
    except ValueError as exc:
        raise TargetError("IPv6 literal is malformed") from exc


def _normalise_name(text: str) -> str:
    if not text.isascii():
        try:
            text = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise TargetError("host has characters IDNA does not allow") from exc
        if "%" in text or "@" in text or ":" in text or "/" in text:
            raise TargetError("host maps to URL delimiters after Unicode normalisation")
    text = text.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise TargetError("URL has an empty host")
    labels = text.split(".")
    if any(label == "" for label in labels):
        raise TargetError("host has an empty label ('..')")
    ascii_labels = []
    for label in labels:
        if label.isascii():
            ascii_labels.append(label)
            continue
        try:
            ascii_labels.append(idna.encode(label, uts46=False).decode("ascii"))
        except (idna.IDNAError, UnicodeError) as exc:
            raise TargetError(f"host label {label!r} is not valid IDNA") from exc
    host = ".".join(ascii_labels)
    if len(host) > 253:
        raise TargetError("host is longer than 253 characters")
    last = ascii_labels[-1]
    if _NUMERIC_LABEL_RE.match(last):
        return host  # an IPv4 literal candidate; validated by the caller
    for label in ascii_labels:
        if not _NAME_LABEL_RE.match(label):
            raise TargetError(f"host label {label!r} has characters not allowed in a host name")
    return host


def _parse_ipv4_if_numeric(host: str) -> ipaddress.IPv4Address | None:
    """Parse an IPv4 literal in any ``inet_aton`` notation, or None for names.

    A host whose last label is numeric is an IPv4 literal for WHATWG parsers, so
    it must parse as one here too; if it does not, the string is ambiguous.
    """
    parts = host.split(".")
    if not _NUMERIC_LABEL_RE.match(parts[-1]):
        return None
    if len(parts) > 4:
        raise TargetError(f"host {host!r} looks like an IPv4 address with too many parts")
    numbers = []
    for part in parts:
        numbers.append(_parse_ipv4_number(part, host))
    limit_last = 256 ** (5 - len(numbers))
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= limit_last:
        raise TargetError(f"host {host!r} is an out-of-range IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str, host: str) -> int:
    # int() also accepts '_', '+' and '-' ('1_27', '+1', '11.-256.0.1'), which no
    # other IPv4 parser does: every part must be plain digits or 0x-hex.
    if not _NUMERIC_LABEL_RE.fullmatch(part):
        raise TargetError(f"host {host!r} is not a valid IPv4 address")
    try:
        if part[:2] in ("0x", "0X"):
            if len(part) == 2:
                raise ValueError(part)
            return int(part[2:], 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10)
    except ValueError as exc:
        raise TargetError(f"host {host!r} is not a valid IPv4 address") from exc
