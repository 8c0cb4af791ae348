"""The one way out (I/O): :mod:`.client` resolves and checks every address
through the policy before a connection is opened; :mod:`.http1` speaks
HTTP/1.1 on it. This is its public face.
"""

from airgap_proxy.egress.client import (
    EgressClient,
    EgressRefused,
    PolicyResolver,
    resolved_addresses,
    system_resolve,
    translate_error,
)

__all__ = [
    "EgressClient",
    "EgressRefused",
    "PolicyResolver",
    "resolved_addresses",
    "system_resolve",
    "translate_error",
]
