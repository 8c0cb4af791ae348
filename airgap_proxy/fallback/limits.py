"""What one fallback answer may cost: CPU time, choices, embedding values, bytes (pure).

The CPU budget is cooperative: the synthesizer calls :func:`spend` at each
step of its loops (schema nodes, pattern walks, regex searches, choices,
embedding vectors), and the first call past the deadline raises
:class:`~airgap_proxy.errors.InvalidRequest`. The budget of the answer being
made is a context variable, so the deep generators need no extra argument;
the clock comes in with the :class:`Budget` (the caller passes the thread's
CPU clock), so this module reads none.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from airgap_proxy.errors import InvalidRequest

T = TypeVar("T")

DEFAULT_MAX_CPU_MS = 1000
DEFAULT_MAX_CHOICES = 8
DEFAULT_MAX_EMBEDDING_VALUES = 1 << 20
DEFAULT_MAX_ANSWER_BYTES = 32 << 20
_CHECK_EVERY = 64  # spend() calls between clock reads: reading a CPU clock is a system call


@dataclass(frozen=True, slots=True)
class Limits:
    """The ``fallback.max_*`` settings: choices per answer, embedding values, answer bytes."""

    max_choices: int = DEFAULT_MAX_CHOICES
    max_embedding_values: int = DEFAULT_MAX_EMBEDDING_VALUES
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES


DEFAULT_LIMITS = Limits()


class Budget:
    """``max_cpu_ms`` of ``clock`` (seconds) from now; :meth:`spend` raises once they are used."""

    def __init__(self, clock: Callable[[], float], max_cpu_ms: int):
        self.clock = clock
        self.max_cpu_ms = max_cpu_ms
        self.deadline = clock() + max_cpu_ms / 1000
        self.calls = 0

    def spend(self) -> None:
        self.calls += 1
        if self.calls % _CHECK_EVERY == 0 and self.clock() > self.deadline:
            raise InvalidRequest(
                f"the deterministic fallback stopped making this answer after its CPU budget "
                f"(fallback.max_cpu_ms: {self.max_cpu_ms}); ask for less (a smaller schema, fewer choices "
                "or inputs) or raise the limit"
            )


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("fallback_budget", default=None)


def spend() -> None:
    """One step of work for the answer being made; raises past its budget (no budget: no limit)."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.spend()


def within(budget: Budget, make: Callable[[], T]) -> T:
    """``make()`` with ``budget`` as the budget of the answer it makes."""
    token = _CURRENT.set(budget)
    try:
        return make()
    finally:
        _CURRENT.reset(token)


def check_choices(n: int, limits: Limits) -> None:
    if n > limits.max_choices:
        raise InvalidRequest(
            f"Invalid value for 'n': the deterministic fallback makes at most {limits.max_choices} choices "
            f"(fallback.max_choices), got {n}",
            param="n",
        )


def check_embedding_values(inputs: int, dimensions: int, limits: Limits) -> None:
    values = inputs * dimensions
    if values > limits.max_embedding_values:
        raise InvalidRequest(
            f"Invalid value for 'input': {inputs} inputs of {dimensions} dimensions are {values} values; the "
            f"deterministic fallback makes at most {limits.max_embedding_values} (fallback.max_embedding_values)",
            param="input",
        )


def check_answer_bytes(size: int, limits: Limits) -> None:
    """Refuse an answer of ``size`` bytes past ``max_answer_bytes`` (also used on a running total)."""
    if size > limits.max_answer_bytes:
        raise InvalidRequest(
            f"the deterministic fallback's answer would exceed {limits.max_answer_bytes} bytes "
            "(fallback.max_answer_bytes); ask for less (fewer or shorter choices, inputs or dimensions)"
        )
