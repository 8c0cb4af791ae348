"""JSON Schema ``format``: deterministic example strings and checks (pure).

Each generator takes a seed and the wanted length range and returns a string
in that format, or ``None`` when the format cannot be that long or short.
Checks follow what ``jsonschema``'s ``FormatChecker`` accepts (RFC 3339 dates
and times, RFC 3986 URIs, RFC 1123 host names); they are used to pick a value
from an ``enum`` or ``const`` that must also have a format. Formats not listed
here are annotations: any string passes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from airgap_proxy.fallback.seed import Seed

_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]*")
_URI_REFERENCE = re.compile(r"[^\s<>\"{}|\\^`]*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DURATION = re.compile(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?")
_JSON_POINTER = re.compile(r"(/([^/~]|~[01])*)*")
_RELATIVE_JSON_POINTER = re.compile(r"(0|[1-9][0-9]*)(#|(/([^/~]|~[01])*)*)")
_URI_TEMPLATE = re.compile(r"([^{}\s]|\{[A-Za-z0-9_.,*:%]+\})*")


def _word(seed: Seed, label: str) -> str:
    return _WORDS[seed.child(label).below(len(_WORDS))]


def _filler(seed: Seed, n: int) -> str:
    digest = seed.child("filler").digest
    return "".join(_LABEL_CHARS[digest[i % 32] % 26 + (i // 32) % 10] for i in range(n))


def _fixed(text: str, lo: int, hi: int | None) -> str | None:
    return text if lo <= len(text) and (hi is None or len(text) <= hi) else None


def _date(seed: Seed) -> str:
    year = 2000 + seed.child("year").below(30)
    month = 1 + seed.child("month").below(12)
    day = 1 + seed.child("day").below(28)
    return f"{year:04d}-{month:02d}-{day:02d}"


def _time(seed: Seed) -> str:
    n = seed.child("time").below(86_400)
    return f"{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}"


def gen_date(seed: Seed, lo: int, hi: int | None) -> str | None:
    return _fixed(_date(seed), lo, hi)


def gen_time(seed: Seed, lo: int, hi: int | None) -> str | None:
    return _stretch_seconds(_time(seed), "Z", lo, hi)


def gen_date_time(seed: Seed, lo: int, hi: int | None) -> str | None:
    return _stretch_seconds(f"{_date(seed)}T{_time(seed)}", "Z", lo, hi)


def _stretch_seconds(stem: str, zone: str, lo: int, hi: int | None) -> str | None:
    """``stem + zone``, with fractional seconds (``.000...``) added to reach ``lo``."""
    text = stem + zone
    if len(text) < lo:
        digits = max(1, lo - len(text) - 1)
        text = f"{stem}.{'0' * digits}{zone}"
        if len(text) < lo:  # a longer zone: +00:00 instead of Z
            text = f"{stem}.{'0' * max(1, lo - len(stem) - 7)}+00:00"
    return _fixed(text, lo, hi)


def gen_email(seed: Seed, lo: int, hi: int | None) -> str | None:
    base = f"{_word(seed, 'user')}.{_word(seed, 'name')}"
    length = _target(len(base) + 12, lo, hi, 3, 64 + 1 + 253)
    if length is None:
        return None
    domain = "example.com" if length >= 14 else "x.io" if length >= 6 else "x"
    local_length = length - 1 - len(domain)
    if local_length > 64:
        domain = _padded_host(seed, domain, local_length - 64)
        local_length = 64
    local = (base + _filler(seed, 64))[:local_length]
    if local.endswith("."):
        local = local[:-1] + "x"
    return _fixed(f"{local}@{domain}", lo, hi)


def _padded_host(seed: Seed, host: str, extra: int) -> str:
    """``host`` with labels prepended so that it is ``extra`` characters longer."""
    labels: list[str] = []
    while extra >= 2:
        size = min(63, extra - 1)
        labels.append(_filler(seed.child(len(labels)), size))
        extra -= size + 1
    if extra == 1:
        if labels and len(labels[-1]) < 63:
            labels[-1] += "a"
        else:
            host = "a" + host
    return ".".join([*labels, host])


def gen_hostname(seed: Seed, lo: int, hi: int | None) -> str | None:
    host = f"{_word(seed, 'host')}-{seed.child('n').below(100)}.example.com"
    length = _target(len(host), lo, hi, 1, 253)
    if length is None:
        return None
    if length > len(host):
        host = _padded_host(seed, host, length - len(host))
    elif length < len(host):
        labels: list[str] = []
        left = length
        while left > 0:
            size = min(63, left)
            labels.append((_word(seed, "host") + _filler(seed.child(len(labels)), 63))[:size])
            left -= size + 1
        if left == 0:  # the last dot needs a character after it
            labels[-1] = labels[-1][:-1] if len(labels[-1]) > 1 else labels[-1]
            labels.append("a")
        host = ".".join(labels)
    return host if len(host) == length and check_hostname(host) else None


def gen_uri(seed: Seed, lo: int, hi: int | None) -> str | None:
    uri = f"https://example.com/{_word(seed, 'path')}/{seed.child('n').below(1000)}"
    if len(uri) < lo:
        uri += "/" + _filler(seed, lo - len(uri) - 1) if lo - len(uri) > 1 else "x"
    if hi is not None and len(uri) > hi:
        uri = ("urn:" + _filler(seed, 64))[:hi] if hi >= 5 else "x:" + "x" * (hi - 2)
    return uri if check_uri(uri) and _fixed(uri, lo, hi) else None


def gen_uri_reference(seed: Seed, lo: int, hi: int | None) -> str | None:
    ref = f"/{_word(seed, 'path')}/{seed.child('n').below(1000)}"
    if len(ref) < lo:
        ref += "/" + _filler(seed, lo - len(ref) - 1) if lo - len(ref) > 1 else "x"
    if hi is not None and len(ref) > hi:
        ref = ref[:hi]
    return _fixed(ref, lo, hi)


def gen_uuid(seed: Seed, lo: int, hi: int | None) -> str | None:
    h = seed.child("uuid").digest.hex()
    variant = "89ab"[int(h[16], 16) % 4]
    return _fixed(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}", lo, hi)


def _target(natural: int, lo: int, hi: int | None, shortest: int, longest: int | None) -> int | None:
    """The length to aim for: ``natural`` moved into ``lo..hi`` and the format's own range."""
    low = max(lo, shortest)
    high = min(x for x in (hi, longest, 1 << 30) if x is not None)
    return min(max(natural, low), high) if low <= high else None


def _widths(total: int, parts: int, widest: int) -> list[int]:
    """``parts`` widths of 1..``widest`` that add up to ``total`` (which must be feasible)."""
    widths = [1] * parts
    extra = total - parts
    for i in range(parts):
        grow = min(widest - 1, extra)
        widths[i] += grow
        extra -= grow
    return widths


def gen_ipv4(seed: Seed, lo: int, hi: int | None) -> str | None:
    """An address of the wanted length (7 to 15 characters), 203.0.113.x when that fits."""
    length = _target(12, lo, hi, 7, 15)
    if length is None:
        return None
    digest = seed.child("ip").digest
    if length in (11, 12, 13):
        last = (1, 10, 100)[length - 11] + digest[0] % (9, 90, 155)[length - 11]
        return f"203.0.113.{last}"  # TEST-NET-3 (RFC 5737): documentation addresses
    octets = []
    for i, width in enumerate(_widths(length - 3, 4, 3)):
        low = (1, 10, 100)[width - 1]
        octets.append(str(low + digest[i] % (9, 90, 156)[width - 1]))
    return ".".join(octets)


def gen_ipv6(seed: Seed, lo: int, hi: int | None) -> str | None:
    """An address of the wanted length (2 to 39 characters), in 2001:db8::/32 when that fits."""
    length = _target(14, lo, hi, 2, 39)
    if length is None:
        return None
    h = seed.child("ip6").digest.hex()
    if length >= 15:  # eight groups, no compression
        widths = _widths(length - 7, 8, 4)
        groups = ["2001", "db8"] if widths[0] == 4 and widths[1] == 3 else []
        at = 0
        for width in widths[len(groups) :]:
            groups.append(h[at : at + width].lstrip("0").rjust(width, "1"))
            at += width
        return ":".join(groups)
    if length >= 11:  # 2001:db8::x
        return "2001:db8::" + h[: length - 10].lstrip("0").rjust(length - 10, "1")
    if length >= 7:  # x::y
        a, c = _widths(length - 2, 2, 4)
        return f"{h[:a]}::{h[a : a + c]}"
    if length >= 3:
        return "::" + h[: length - 2].lstrip("0").rjust(length - 2, "1")
    return "::"


def gen_duration(seed: Seed, lo: int, hi: int | None) -> str | None:
    natural = f"P{1 + seed.child('d').below(30)}DT{seed.child('h').below(24)}H"
    length = _target(len(natural), lo, hi, 3, None if hi is None else max(hi, 3))
    if length is None:
        return None
    if length == len(natural):
        return natural
    return f"P{str(1 + seed.child('d').below(9)).rjust(length - 2, '0')}D"


def gen_json_pointer(seed: Seed, lo: int, hi: int | None) -> str | None:
    text = f"/{_word(seed, 'ptr')}/0"
    if len(text) < lo:
        text += "/" + _filler(seed, lo - len(text) - 1) if lo - len(text) > 1 else "0"
    return _fixed(text, lo, hi)


def gen_relative_json_pointer(seed: Seed, lo: int, hi: int | None) -> str | None:
    text = f"{seed.child('up').below(3)}/{_word(seed, 'ptr')}"
    if len(text) < lo:
        text += "/" + _filler(seed, lo - len(text) - 1) if lo - len(text) > 1 else "0"
    elif hi is not None and len(text) > hi:
        text = "0/" + "a" * (hi - 2) if hi >= 2 else "0"
    return _fixed(text, lo, hi)


def gen_uri_template(seed: Seed, lo: int, hi: int | None) -> str | None:
    text = f"https://example.com/{_word(seed, 'path')}/{{id}}"
    if len(text) < lo:
        text += "/" + _filler(seed, lo - len(text) - 1) if lo - len(text) > 1 else "x"
    elif hi is not None and len(text) > hi:
        text = "{" + "x" * max(1, hi - 2) + "}" if hi >= 3 else "x" * hi
    return _fixed(text, lo, hi)


def gen_regex(seed: Seed, lo: int, hi: int | None) -> str | None:
    text = f"^{_word(seed, 're')}[0-9]*$"
    if len(text) < lo:
        text = text[:-1] + "x" * (lo - len(text)) + "$"
    elif hi is not None and len(text) > hi:
        text = "x" * max(lo, 0) if lo <= hi else text
    return _fixed(text, lo, hi)


def check_date(text: str) -> bool:
    match = _DATE.fullmatch(text)
    if match is None:
        return False
    year, month, day = (int(g) for g in match.groups())
    if not 1 <= month <= 12 or day < 1:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    limit = 28 if month == 2 and not leap else _DAYS_IN_MONTH[month - 1]
    return day <= limit


def check_time(text: str) -> bool:
    match = _TIME.fullmatch(text)
    if match is None:
        return False
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if hour > 23 or minute > 59 or second > 60:
        return False
    return match.group(6) is None or (int(match.group(6)) <= 23 and int(match.group(7)) <= 59)


def check_date_time(text: str) -> bool:
    date, sep, time = text.partition("T") if "T" in text else text.partition("t")
    return bool(sep) and check_date(date) and check_time(time)


def check_email(text: str) -> bool:
    return "@" in text


def check_hostname(text: str) -> bool:
    host = text[:-1] if text.endswith(".") else text
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def check_uri(text: str) -> bool:
    return _URI.fullmatch(text) is not None


def check_uri_reference(text: str) -> bool:
    return _URI_REFERENCE.fullmatch(text) is not None


def check_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def check_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def check_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_duration(text: str) -> bool:
    return _DURATION.fullmatch(text) is not None and not text.endswith("T")


def check_json_pointer(text: str) -> bool:
    return _JSON_POINTER.fullmatch(text) is not None


def check_relative_json_pointer(text: str) -> bool:
    return _RELATIVE_JSON_POINTER.fullmatch(text) is not None


def check_uri_template(text: str) -> bool:
    return _URI_TEMPLATE.fullmatch(text) is not None


def check_regex(text: str) -> bool:
    try:
        re.compile(text)
    except (re.error, OverflowError, RecursionError):
        return False
    return True


Generator = Callable[[Seed, int, "int | None"], "str | None"]

GENERATORS: dict[str, Generator] = {
    "date": gen_date,
    "time": gen_time,
    "date-time": gen_date_time,
    "email": gen_email,
    "idn-email": gen_email,
    "hostname": gen_hostname,
    "idn-hostname": gen_hostname,
    "uri": gen_uri,
    "iri": gen_uri,
    "uri-reference": gen_uri_reference,
    "iri-reference": gen_uri_reference,
    "uuid": gen_uuid,
    "ipv4": gen_ipv4,
    "ipv6": gen_ipv6,
    "duration": gen_duration,
    "json-pointer": gen_json_pointer,
    "relative-json-pointer": gen_relative_json_pointer,
    "uri-template": gen_uri_template,
    "regex": gen_regex,
}

CHECKS: dict[str, Callable[[str], bool]] = {
    "date": check_date,
    "time": check_time,
    "date-time": check_date_time,
    "email": check_email,
    "idn-email": check_email,
    "hostname": check_hostname,
    "idn-hostname": check_hostname,
    "uri": check_uri,
    "iri": check_uri,
    "uri-reference": check_uri_reference,
    "iri-reference": check_uri_reference,
    "uuid": check_uuid,
    "ipv4": check_ipv4,
    "ipv6": check_ipv6,
    "duration": check_duration,
    "json-pointer": check_json_pointer,
    "relative-json-pointer": check_relative_json_pointer,
    "uri-template": check_uri_template,
    "regex": check_regex,
}


def generate(name: str, seed: Seed, lo: int, hi: int | None) -> str | None:
    """A string in format ``name`` with length in ``lo..hi``; ``None`` if none fits."""
    return GENERATORS[name](seed, lo, hi)


def conforms(name: str, text: str) -> bool:
    """Whether ``text`` is in format ``name``; unknown formats accept anything."""
    check = CHECKS.get(name)
    return check is None or check(text)
