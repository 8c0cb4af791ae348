"""The health state machine of one upstream (pure; the clock is an argument).

Active probes and passive observations of real traffic feed the same
counters:

1. A success resets the failure count; ``healthy_after`` consecutive successes
   make an unhealthy upstream healthy again (the half-open probe closes the
   circuit).
2. A failure resets the success count; ``unhealthy_after`` consecutive failures
   make the upstream unhealthy (the circuit opens).
3. An upstream never checked yet is ``unknown`` and counts as available, so
   the first request after start-up is not refused while the first probe runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class HealthStatus(enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Thresholds:
    unhealthy_after: int = 2
    healthy_after: int = 1


@dataclass(frozen=True, slots=True)
class HealthState:
    status: HealthStatus = HealthStatus.UNKNOWN
    failures: int = 0
    successes: int = 0
    last_check: float | None = None
    last_change: float | None = None
    last_error: str | None = None

    @property
    def available(self) -> bool:
        return self.status is not HealthStatus.UNHEALTHY


def observe(state: HealthState, ok: bool, now: float, thresholds: Thresholds, error: str | None = None) -> HealthState:
    """The state after one probe result or one request outcome at time ``now``."""
    if ok:
        successes = state.successes + 1
        status = state.status
        if status is HealthStatus.UNKNOWN or (
            status is HealthStatus.UNHEALTHY and successes >= thresholds.healthy_after
        ):
            status = HealthStatus.HEALTHY
        return _changed(
            state, replace(state, status=status, failures=0, successes=successes, last_check=now, last_error=None), now
        )
    failures = state.failures + 1
    status = state.status
    if failures >= thresholds.unhealthy_after:
        status = HealthStatus.UNHEALTHY
    return _changed(
        state, replace(state, status=status, failures=failures, successes=0, last_check=now, last_error=error), now
    )


def _changed(before: HealthState, after: HealthState, now: float) -> HealthState:
    if before.status is not after.status:
        return replace(after, last_change=now)
    return after
