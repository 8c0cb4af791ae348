"""Deterministic ``/v1/embeddings`` bodies (pure).

Each input becomes a unit vector seeded by the model and the input alone (not
by its position or the rest of the batch), so the same text always embeds the
same way and identical texts are identical vectors:

- seed: SHA-256 of the model name and the canonical input (a string, or the
  token ids);
- components: block ``i`` (a 4-byte big-endian counter) is ``sha256(seed + i)``,
  read as eight little-endian int32; the first ``dimensions`` components are kept,
  so a shorter vector is a prefix of a longer one before normalisation (like
  OpenAI's shortened ``text-embedding-3`` vectors);
- the vector is scaled to L2 norm 1 and rounded to float32, the precision
  OpenAI returns. ``encoding_format: "float"`` lists those float32 values
  exactly; ``"base64"`` (what the OpenAI SDK asks for by default) is the same
  values as a little-endian float32 array, so both decode to equal vectors.

``dimensions`` defaults to 1536 (``text-embedding-3-small``,
``text-embedding-ada-002``) and may be 1 to 4096. ``usage`` counts tokens with
the same estimate as the other endpoints; token-id inputs count their ids.
"""

from __future__ import annotations

import base64
import hashlib
import math
import operator
import struct
from typing import Any

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import request, text, wire
from airgap_proxy.fallback.limits import DEFAULT_LIMITS, Limits, check_embedding_values, spend
from airgap_proxy.fallback.seed import Seed

DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048
_PER_BLOCK = 8  # uint32 per SHA-256 digest


def embeddings(data: dict[str, Any], model: str, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The embeddings list JSON body for ``data``, as bytes (at most ``caps.max_embedding_values`` values)."""
    inputs = _read_inputs(data)
    dimensions = _read_dimensions(data)
    as_base64 = _read_encoding(data)
    check_embedding_values(len(inputs), dimensions, caps)
    items = []
    prompt_tokens = 0
    for index, (key, tokens) in enumerate(inputs):
        spend()
        vector = unit_vector(Seed.of(b"embedding", model.encode("utf-8", "surrogatepass"), key), dimensions)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii") if as_base64 else vector
        )
        items.append({"object": "embedding", "index": index, "embedding": encoded})
        prompt_tokens += tokens
    return wire.encode(
        {
            "object": "list",
            "data": items,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def unit_vector(seed: Seed, dimensions: int) -> list[float]:
    """``dimensions`` float32-exact components with L2 norm 1, derived from ``seed``."""
    blocks = -(-dimensions // _PER_BLOCK)
    raw = b"".join(hashlib.sha256(seed.digest + i.to_bytes(4, "big")).digest() for i in range(blocks))
    components = struct.unpack(f"<{blocks * _PER_BLOCK}i", raw)[:dimensions]
    # Exact integer sum of squares, then one correctly rounded sqrt and divisions:
    # the same bits on every IEEE 754 machine, whatever its libm does.
    norm = math.sqrt(sum(map(operator.mul, components, components)))
    if norm == 0.0:  # only if every component is zero; keep the promise of a unit vector
        return [1.0] + [0.0] * (dimensions - 1)
    scaled = [c / norm for c in components]
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *scaled)))


def _read_inputs(data: dict[str, Any]) -> list[tuple[bytes, int]]:
    """Each input as ``(seed bytes, token count)``."""
    raw = data.get("input")
    if isinstance(raw, str) and raw:
        return [_text_input(raw)]
    if isinstance(raw, list) and 0 < len(raw) <= MAX_INPUTS:
        if all(isinstance(x, str) and x for x in raw):
            return [_text_input(x) for x in raw]
        if all(request.is_int(x) for x in raw):
            return [_token_input(raw)]
        if all(isinstance(x, list) and x and all(request.is_int(t) for t in x) for x in raw):
            return [_token_input(x) for x in raw]
    raise InvalidRequest(
        "Invalid value for 'input': expected a non-empty string, an array of non-empty strings, "
        f"an array of token ids or an array of arrays of token ids (at most {MAX_INPUTS} inputs)",
        param="input",
    )


def _text_input(value: str) -> tuple[bytes, int]:
    return b"s" + value.encode("utf-8", "surrogatepass"), text.count_tokens(value)


def _token_input(tokens: list[int]) -> tuple[bytes, int]:
    return b"t" + ",".join(map(str, tokens)).encode("ascii"), len(tokens)


def _read_dimensions(data: dict[str, Any]) -> int:
    dimensions = data.get("dimensions")
    if dimensions is None:
        return DEFAULT_DIMENSIONS
    if not request.is_int(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise InvalidRequest(
            f"Invalid value for 'dimensions': expected an integer from 1 to {MAX_DIMENSIONS}, got {dimensions!r}",
            param="dimensions",
        )
    return int(dimensions)


def _read_encoding(data: dict[str, Any]) -> bool:
    """Whether the vectors are sent as base64."""
    encoding = data.get("encoding_format")
    if encoding is None or encoding == "float":
        return False
    if encoding == "base64":
        return True
    raise InvalidRequest(
        f"Invalid value for 'encoding_format': expected 'float' or 'base64', got {encoding!r}", param="encoding_format"
    )
