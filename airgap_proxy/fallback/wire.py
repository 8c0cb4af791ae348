"""How fallback bodies are serialised: compact JSON and server-sent events (pure)."""

from __future__ import annotations

import json
from typing import Any

# Marks every chat and completion body the fallback makes (with the X-Airgap-Upstream header).
SYSTEM_FINGERPRINT = "fp_airgap_deterministic"
DONE_EVENT = b"data: [DONE]\n\n"


def dumps(value: Any) -> str:
    """Compact JSON text, UTF-8 friendly; NaN and infinities are refused."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(value: Any) -> bytes:
    """Compact JSON bytes.

    Text that cannot be UTF-8 encoded (lone surrogates a client sent, then
    echoed) is escaped instead, so the body is always valid UTF-8 JSON.
    """
    text = dumps(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def event(value: Any) -> bytes:
    """One server-sent event carrying ``value`` as compact JSON."""
    return b"data: " + encode(value) + b"\n\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_object(text: str) -> dict[str, Any] | None:
    """``text`` parsed as a JSON object, ``None`` if it is another JSON value; ``ValueError`` if not JSON."""
    value = json.loads(text, parse_constant=_reject_constant)
    return value if isinstance(value, dict) else None
