"""The health state machine, as tables with an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from airgap_proxy.upstreams.health import HealthState, HealthStatus, Thresholds, observe

U, H, X = HealthStatus.UNKNOWN, HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


@pytest.mark.parametrize(
    ("thresholds", "events", "expected"),
    [
        pytest.param(Thresholds(2, 1), "", [], id="no events"),
        pytest.param(Thresholds(2, 1), "s", [H], id="first success makes healthy"),
        pytest.param(Thresholds(2, 1), "f", [U], id="one failure below threshold stays unknown"),
        pytest.param(Thresholds(2, 1), "ff", [U, X], id="two failures open the circuit"),
        pytest.param(Thresholds(1, 1), "f", [X], id="threshold one opens at once"),
        pytest.param(Thresholds(2, 1), "sfs", [H, H, H], id="a single failure is forgiven"),
        pytest.param(Thresholds(2, 1), "sff", [H, H, X], id="healthy to unhealthy"),
        pytest.param(Thresholds(2, 1), "sffs", [H, H, X, H], id="half-open probe closes the circuit"),
        pytest.param(Thresholds(2, 3), "ffsss", [U, X, X, X, H], id="three successes needed to recover"),
        pytest.param(Thresholds(2, 3), "ffssfsss", [U, X, X, X, X, X, X, H], id="failure resets recovery"),
        pytest.param(Thresholds(3, 1), "fsff", [U, H, H, H], id="failures must be consecutive"),
        pytest.param(Thresholds(3, 1), "fsfff", [U, H, H, H, X], id="three consecutive failures"),
    ],
)
def test_transitions(thresholds: Thresholds, events: str, expected: list[HealthStatus]) -> None:
    state = HealthState()
    seen = []
    for now, event in enumerate(events):
        state = observe(state, event == "s", float(now), thresholds, None if event == "s" else "boom")
        seen.append(state.status)
    assert seen == expected


def test_bookkeeping_with_injected_clock() -> None:
    t = Thresholds(2, 1)
    state = observe(HealthState(), False, 10.0, t, "refused")
    assert (state.failures, state.successes, state.last_check, state.last_error) == (1, 0, 10.0, "refused")
    assert state.last_change is None and state.available
    state = observe(state, False, 11.5, t, "refused")
    assert state.status is X and state.last_change == 11.5 and not state.available
    state = observe(state, True, 20.0, t)
    assert state.status is H and state.last_change == 20.0 and state.last_error is None
    assert (state.failures, state.successes) == (0, 1)
    unchanged = observe(state, True, 25.0, t)
    assert unchanged.last_change == 20.0 and unchanged.last_check == 25.0
