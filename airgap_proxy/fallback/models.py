"""The deterministic ``/v1/models`` body (pure)."""

from __future__ import annotations

from airgap_proxy.fallback import wire
from airgap_proxy.fallback.seed import Seed

OWNER = "airgap-proxy"


def models_list(model_ids: list[str]) -> bytes:
    """A ``list`` of ``model`` objects, in the given order without repeats.

    ``created`` is derived from the id, so the body never changes for the same ids.
    """
    data = [
        {
            "id": model_id,
            "object": "model",
            "created": Seed.of(b"model", model_id.encode("utf-8", "surrogatepass")).created(),
            "owned_by": OWNER,
        }
        for model_id in dict.fromkeys(model_ids)
    ]
    return wire.encode({"object": "list", "data": data})
