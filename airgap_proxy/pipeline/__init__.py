"""One pipeline for every API surface (DESIGN §6).

:mod:`.handle` (identify, read, parse, plan, execute), :mod:`.plan` (pure:
request facts -> one outcome), :mod:`.forward` (the attempts), :mod:`.relay`
(the upstream's answer to the client), :mod:`.answer` (the deterministic
fallback), :mod:`.intake` (the body and the path), :mod:`.exchange` (the
request on its way through).
"""

from __future__ import annotations

from airgap_proxy.pipeline.handle import MODE_HEADER, handle
from airgap_proxy.pipeline.intake import endpoint_of, read_body

__all__ = ["MODE_HEADER", "endpoint_of", "handle", "read_body"]
