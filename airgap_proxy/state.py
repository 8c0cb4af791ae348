"""Typed application state shared by the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from airgap_proxy import policy
from airgap_proxy.audit import Audit
from airgap_proxy.config import Config
from airgap_proxy.egress import EgressClient


@dataclass(slots=True)
class AppState:
    """What the handlers need: the config, the egress client, load-time verdicts.

    ``decisions`` holds the verdict of each upstream computed at load; None
    means the upstream is a name whose addresses are checked at connect time.
    """

    config: Config
    egress: EgressClient
    decisions: dict[str, policy.Decision | None] = field(default_factory=dict)
    started: bool = False


STATE = web.AppKey("state", AppState)
AUDIT_KEY = web.RequestKey("audit", Audit)
