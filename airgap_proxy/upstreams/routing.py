"""Routing: which upstreams may serve a request's model (pure).

1. ``default`` or no model maps to the configured default model (``LLM_MODEL``).
2. An alias on an upstream maps the model to that upstream's real name: an
   exact alias first, then the first glob alias that matches
   (``"claude-*": qwen2.5-coder:7b``).
3. Only upstreams that speak the request's API surface (``apis``) serve it.
4. An upstream serves a model when its ``models`` list is empty (serves
   anything) or one of its exact names / globs matches.
5. Candidates are ordered by priority (lower first), then by configuration
   order. None configured: 503 ``no_healthy_upstream``; none serving the
   model: 404 ``model_not_found``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from airgap_proxy import policy
from airgap_proxy.config import UpstreamConfig
from airgap_proxy.errors import ModelNotFound, NoHealthyUpstream

DEFAULT_MODEL_NAMES = frozenset({"", "default"})


@dataclass(frozen=True, slots=True)
class Candidate:
    """An upstream that can serve the request, and the model name to send it."""

    upstream: UpstreamConfig
    model: str | None


def requested_model(model: str | None, default_model: str | None) -> str | None:
    """The model a request asks for after the default is applied."""
    if model is None or model in DEFAULT_MODEL_NAMES:
        return default_model if default_model is not None else model
    return model


def serves(upstream: UpstreamConfig, model: str) -> str | None:
    """The model name ``upstream`` would receive for ``model``, or None."""
    for alias, target in upstream.aliases:
        if alias == model:
            return target
    for alias, target in upstream.aliases:
        if _is_glob(alias) and fnmatchcase(model, alias):
            return target
    if not upstream.models:
        return model
    for pattern in upstream.models:
        if pattern == model or fnmatchcase(model, pattern):
            return model
    return None


def _is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern or "[" in pattern


def route(upstreams: tuple[UpstreamConfig, ...], model: str | None, api: str = "openai") -> list[Candidate]:
    """Candidates for ``model`` on the ``api`` surface, in the order they should be tried."""
    if not upstreams:
        raise NoHealthyUpstream("no upstream is configured (set LLM_BASE_URL or upstreams in the config file)")
    ordered = sorted((u for u in upstreams if u.speaks(api)), key=lambda u: u.priority)
    if not ordered:
        return []  # none speaks this surface: the fallback answers in its shape
    if model is None:
        return [Candidate(u, None) for u in ordered]
    found = []
    for upstream in ordered:
        name = serves(upstream, model)
        if name is not None:
            found.append(Candidate(upstream, name))
    if not found:
        raise ModelNotFound(f"The model `{model}` does not exist or is not served by any upstream", param="model")
    return found


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """What the planner needs to know about an upstream right now."""

    permitted: bool
    available: bool
    in_flight: int


MAX_ATTEMPTS = 2


def plan(candidates: list[Candidate], view: Callable[[str], UpstreamView]) -> list[Candidate]:
    """The upstreams to try, in order, at most :data:`MAX_ATTEMPTS`.

    1. Upstreams the policy refuses are never tried (the caller answers 422
       when that leaves none).
    2. Unavailable (unhealthy) upstreams are skipped; an empty plan means
       "fall back".
    3. Lower priority first; within a priority, fewest requests in flight;
       then configuration order.
    """
    ranked = []
    for index, candidate in enumerate(candidates):
        state = view(candidate.upstream.name)
        if state.permitted and state.available:
            ranked.append((candidate.upstream.priority, state.in_flight, index, candidate))
    ranked.sort(key=lambda item: item[:3])
    return [item[3] for item in ranked[:MAX_ATTEMPTS]]


REASON_HOSTED_TYPE = "provider_type {provider_type} is a hosted LLM API"


def static_decision(upstream: UpstreamConfig, rules: policy.Rules) -> policy.Decision | None:
    """The load-time verdict of an upstream; None means "check at connect time".

    1. A hosted ``provider_type`` is external whatever its URL.
    2. A base URL the parser rejects is invalid.
    3. Otherwise the policy's static steps (deny list, IP literal, allow_hosts).
    """
    if upstream.provider_type.is_hosted:
        return policy.Decision(
            policy.Verdict.EXTERNAL,
            REASON_HOSTED_TYPE.format(provider_type=upstream.provider_type.value),
            policy.Rule.PROVIDER_TYPE,
        )
    if upstream.target is None:
        return policy.Decision(
            policy.Verdict.INVALID,
            policy.REASON_INVALID.format(detail=upstream.target_error),
            policy.Rule.PARSE,
        )
    return policy.classify_static(upstream.target, rules)


def full_decision(upstream: UpstreamConfig, rules: policy.Rules, resolve: policy.Resolve | None) -> policy.Decision:
    """The verdict of an upstream including name resolution (for reports)."""
    decision = static_decision(upstream, rules)
    if decision is not None:
        return decision
    assert upstream.target is not None
    return policy.classify_target(upstream.target, rules, resolve)
