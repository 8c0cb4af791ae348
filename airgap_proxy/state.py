"""Typed application state shared by the handlers."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from airgap_proxy import fallback
from airgap_proxy.audit import Audit
from airgap_proxy.config import Config
from airgap_proxy.egress import EgressClient
from airgap_proxy.upstreams import UpstreamPool


@dataclass(slots=True)
class AppState:
    """What the handlers need: the config, the egress client, the upstream pool."""

    config: Config
    egress: EgressClient
    pool: UpstreamPool
    canned: fallback.Canned
    started: bool = False


STATE = web.AppKey("state", AppState)
AUDIT_KEY = web.RequestKey("audit", Audit)
