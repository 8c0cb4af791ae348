"""The plan: what to do with one request, decided from facts alone (pure).

:func:`plan` takes what the request asks (:class:`Facts`) and a view of the
upstreams (:class:`Upstreams`) and returns one :class:`Outcome`:

1. ``X-Airgap-Mode: deterministic``: :class:`Answer` from the fallback.
2. A tenant with its own provider: that provider and nothing else
   (:class:`Forward` with one attempt and no fallback), or :class:`Refuse`
   when the policy refuses it (report-only mode forwards, as ``would_block``).
3. A request the surface answers itself (a model list): :class:`Local`.
4. No upstream configured: :class:`Answer`.
5. Route by model and surface (404 when no upstream serves it); every
   candidate refused by the policy: :class:`Refuse`.
6. The available, permitted candidates below their ``max_in_flight``:
   :class:`Forward`. Available but all full: :class:`Busy` (busy is not
   down). None available: :class:`Answer`, saying why.

An :class:`Answer` the fallback may not give (``fallback.mode: error``, or an
endpoint it does not speak) is :class:`Unavailable` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from airgap_proxy import policy
from airgap_proxy.config import FallbackMode, UpstreamConfig
from airgap_proxy.upstreams import routing


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream to try: its name, the model it receives, its load-time decision.

    ``upstream`` is None for a tenant's provider (its key is opened when the
    attempt runs); ``decision`` None means "judged at connect time".
    """

    name: str
    model: str | None
    decision: policy.Decision | None
    upstream: UpstreamConfig | None


@dataclass(frozen=True, slots=True)
class Forward:
    """Try these attempts in order; ``fallback``: the fallback may answer when all fail."""

    attempts: tuple[Attempt, ...]
    fallback: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """The deterministic fallback answers; ``cause`` says why (for the audit)."""

    cause: str | None


@dataclass(frozen=True, slots=True)
class Local:
    """The surface answers this itself (a model list)."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """422: the policy refuses the upstream this request would go to."""

    upstream: str
    decision: policy.Decision


@dataclass(frozen=True, slots=True)
class Busy:
    """503 ``overloaded``: every available upstream is at its ``max_in_flight``."""

    upstream: UpstreamConfig


@dataclass(frozen=True, slots=True)
class Unavailable:
    """503 ``no_healthy_upstream``: nothing may answer (``upstream``: the one that is down)."""

    message: str
    upstream: str | None = None


Outcome = Forward | Answer | Local | Refuse | Busy | Unavailable


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant's own provider: its name as an upstream, its model, the policy's decision now."""

    name: str
    model: str | None
    decision: policy.Decision


@dataclass(frozen=True, slots=True)
class Facts:
    """What the planner needs to know about one request."""

    api: str
    path: str
    model: str | None
    forced: bool
    tenant: Tenant | None
    local: bool
    answerable: bool
    fallback_mode: FallbackMode
    airgapped: bool


class Upstreams(Protocol):
    """The planner's view of the upstream pool."""

    def route(self, model: str | None, api: str) -> tuple[list[routing.Candidate], list[routing.Candidate]]: ...

    def view(self, name: str) -> routing.UpstreamView: ...

    def full(self, name: str) -> bool: ...

    def verdict(self, name: str) -> policy.Decision | None: ...

    def health_error(self, name: str) -> str: ...

    @property
    def configured(self) -> bool: ...


def plan(facts: Facts, upstreams: Upstreams) -> Outcome:
    """The one outcome for this request (see the module docstring for the order)."""
    if facts.forced:
        return _answer(facts, None, None, forced=True)
    if facts.tenant is not None:
        return _tenant(facts, facts.tenant)
    if facts.local:
        return Local()
    if not upstreams.configured:
        return _answer(facts, None, None)
    candidates, permitted = upstreams.route(facts.model, facts.api)
    if not candidates:
        return _answer(facts, f"no configured upstream speaks the {facts.api} API (upstreams[].apis)", None)
    if not permitted:
        name = candidates[0].upstream.name
        decision = upstreams.verdict(name)
        assert decision is not None  # only a decision refuses
        return Refuse(name, decision)
    chosen = routing.plan([c for c in permitted if not upstreams.full(c.upstream.name)], upstreams.view)
    if not chosen:
        if routing.plan(permitted, upstreams.view):
            return Busy(permitted[0].upstream)
        causes = "; ".join(f"{c.upstream.name}: {upstreams.health_error(c.upstream.name)}" for c in permitted)
        return _answer(facts, f"no upstream available ({causes})", permitted[0].upstream.name)
    attempts = tuple(Attempt(c.upstream.name, c.model, upstreams.verdict(c.upstream.name), c.upstream) for c in chosen)
    return Forward(attempts, fallback=facts.fallback_mode is FallbackMode.DETERMINISTIC and facts.answerable)


def _tenant(facts: Facts, tenant: Tenant) -> Outcome:
    decision = tenant.decision
    if not decision.is_local and (facts.airgapped or decision.verdict is policy.Verdict.INVALID):
        return Refuse(tenant.name, decision)
    return Forward((Attempt(tenant.name, tenant.model, decision, None),), fallback=False)


def _answer(facts: Facts, cause: str | None, upstream: str | None, *, forced: bool = False) -> Answer | Unavailable:
    if not forced and facts.fallback_mode is FallbackMode.ERROR:
        return Unavailable(
            "no healthy upstream is available and the fallback is disabled (fallback.mode: error)", upstream
        )
    if not facts.answerable:
        return Unavailable(f"no healthy upstream is available for {facts.path}", upstream)
    return Answer(cause)
