"""Hash-derived choices: the only source of variety in the fallback (pure).

Every value the fallback invents comes from a :class:`Seed`, a SHA-256 digest
of the canonical request. Child seeds hash the parent digest with a label, so a
choice deep inside a JSON schema depends on the request and on where it is
made, never on the order in which other choices were made, the clock, the
process or the machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# ``created`` lies in [CREATED_BASE, CREATED_BASE + CREATED_SPAN): late 2023 to mid 2026.
CREATED_BASE = 1_700_000_000
CREATED_SPAN = 100_000_000
ID_HEX_CHARS = 24
TRANSPORT_KEYS = ("stream", "stream_options")


def canonical_json(value: Any) -> bytes:
    """The canonical form that is hashed: sorted keys, no spaces, UTF-8.

    Lone surrogates (which ``json.loads`` accepts) are kept as they are, so
    two bodies that differ only there still hash differently.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class Seed:
    """A 32-byte digest with helpers that turn it into deterministic choices."""

    digest: bytes

    @classmethod
    def of(cls, *parts: bytes) -> Seed:
        """The seed of ``parts``, each length-prefixed so boundaries count."""
        h = hashlib.sha256()
        for part in parts:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return cls(h.digest())

    def child(self, label: str | int) -> Seed:
        """An independent seed for the choice named ``label``."""
        return Seed(hashlib.sha256(self.digest + b"\x00" + str(label).encode("utf-8", "surrogatepass")).digest())

    @property
    def number(self) -> int:
        """A non-negative 64-bit integer."""
        return int.from_bytes(self.digest[:8], "big")

    def below(self, bound: int) -> int:
        """An integer in ``[0, bound)``; ``bound`` must be positive."""
        return self.number % bound

    def flag(self) -> bool:
        return self.digest[8] & 1 == 1

    def fraction(self) -> float:
        """A float in ``[0, 1)`` with 53 bits taken from the digest."""
        return (int.from_bytes(self.digest[8:16], "big") >> 11) / float(1 << 53)

    def hex_id(self) -> str:
        return self.digest.hex()[:ID_HEX_CHARS]

    def created(self) -> int:
        """A plausible, fixed Unix timestamp for the response's ``created``."""
        return CREATED_BASE + int.from_bytes(self.digest[16:24], "big") % CREATED_SPAN


def request_seed(data: dict[str, Any], model: str) -> Seed:
    """The seed of one request: its canonical JSON and the effective model.

    ``stream`` and ``stream_options`` only choose how the answer travels, so
    they are left out: a streamed answer reassembles to the same message, with
    the same id, as the non-streamed one.
    """
    if any(key in data for key in TRANSPORT_KEYS):
        data = {k: v for k, v in data.items() if k not in TRANSPORT_KEYS}
    return Seed.of(canonical_json(data), model.encode("utf-8", "surrogatepass"))
