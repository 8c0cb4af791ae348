"""The operator's upstreams: :mod:`.routing` (pure) picks candidates for a
model, :mod:`.health` (pure) keeps each one's state, :mod:`.pool` holds the
live runtimes and probes them through the egress client. This is its public
face.
"""

from airgap_proxy.upstreams.pool import (
    MAX_PROBE_BODY,
    PROBE_PATHS,
    ROUTE_CACHE,
    Probe,
    UpstreamPool,
    UpstreamRuntime,
    models_from_probe,
    probe_all,
    probe_endpoint,
    probe_loop,
    probe_once,
    probe_url,
)

__all__ = [
    "MAX_PROBE_BODY",
    "PROBE_PATHS",
    "ROUTE_CACHE",
    "Probe",
    "UpstreamPool",
    "UpstreamRuntime",
    "models_from_probe",
    "probe_all",
    "probe_endpoint",
    "probe_loop",
    "probe_once",
    "probe_url",
]
