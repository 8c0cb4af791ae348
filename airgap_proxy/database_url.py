"""PostgreSQL URLs for the tenant store, and keeping their passwords out of every message (pure).

A ``tenants.store`` value is a PostgreSQL store when it starts with
``postgresql://`` or ``postgres://``; anything else is a SQLite path. Before a
URL, or a message that may quote one, is logged or shown:

1. :func:`mask` replaces the password of any URL's userinfo (``user:secret@``,
   whatever the scheme, so a mistyped one is masked too) and any
   ``password=`` parameter with ``***``.
2. :func:`scrub` also masks every such URL inside a longer text, and every
   literal occurrence of the URL's password (raw and percent-decoded), so a
   driver message that quotes it is safe too.
"""

from __future__ import annotations

import re

SCHEMES = ("postgresql://", "postgres://")
MASK = "***"
# One slash too: a path library turns "scheme://" into "scheme:/".
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*:/{1,2})([^@/?#\s]*)@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&;\s]password=)([^&\s]*)")
_MIN_SCRUB_CHARS = 3  # a shorter password is not searched for in free text (it would mask ordinary words)


def is_postgres(store: str) -> bool:
    return store.strip().lower().startswith(SCHEMES)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match.group(2).partition(":")
    return f"{match.group(1)}{user}{':' + MASK if colon else ''}@"


def mask(text: str) -> str:
    """``text`` with every URL's password and ``password=`` value replaced by ``***``."""
    text = _USERINFO.sub(_mask_userinfo, text)
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def passwords(url: str) -> tuple[str, ...]:
    """The password(s) ``url`` carries, raw and percent-decoded (for :func:`scrub`)."""
    found: list[str] = []
    match = _USERINFO.search(url)
    if match and ":" in match.group(2):
        found.append(match.group(2).partition(":")[2])
    found.extend(m.group(2) for m in _QUERY_PASSWORD.finditer(url))
    decoded = [_percent_decoded(p) for p in found]
    return tuple(p for p in dict.fromkeys(found + decoded) if len(p) >= _MIN_SCRUB_CHARS)


def _percent_decoded(text: str) -> str:
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return raw.decode("utf-8", "replace")


def scrub(text: str, url: str) -> str:
    """A message about ``url`` made safe to show: URLs masked, the password nowhere."""
    text = mask(text)
    for secret in passwords(url):
        text = text.replace(secret, MASK)
    return text
