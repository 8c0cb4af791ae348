"""The pipeline's planner (pure): request facts and the upstreams' state -> one outcome."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from airgap_proxy import policy
from airgap_proxy.config import Config, FallbackMode
from airgap_proxy.errors import ModelNotFound
from airgap_proxy.pipeline.plan import Answer, Attempt, Busy, Facts, Forward, Local, Refuse, Tenant, Unavailable, plan
from airgap_proxy.upstreams import routing
from tests.conftest import make_config

LOCAL = {"name": "local", "base_url": "http://127.0.0.1:11434/v1", "provider_type": "local-ollama"}
SECOND = {"name": "second", "base_url": "http://127.0.0.1:8000/v1", "provider_type": "local-vllm", "priority": 1}
PLAIN = {"name": "plain", "base_url": "http://127.0.0.1:9000/v1"}
HOSTED = {"name": "hosted", "base_url": "https://api.openai.com/v1"}
CAPPED = {"name": "capped", "base_url": "http://127.0.0.1:9001/v1", "max_in_flight": 1}


class FakeUpstreams:
    """The planner's view of a pool, with the health and load each test sets."""

    def __init__(self, *items: dict[str, Any], down: tuple[str, ...] = (), full: tuple[str, ...] = ()) -> None:
        self.config: Config = make_config({"upstreams": list(items)})
        self.down, self.busy = set(down), set(full)
        self.decisions = {u.name: routing.static_decision(u, self.config.rules) for u in self.config.upstreams}

    @property
    def configured(self) -> bool:
        return bool(self.config.upstreams)

    def permitted(self, name: str) -> bool:
        decision = self.decisions[name]
        return decision is None or decision.is_local or not self.config.airgapped

    def route(self, model: str | None, api: str) -> tuple[list[routing.Candidate], list[routing.Candidate]]:
        candidates = routing.route(self.config.upstreams, model, api)
        return candidates, [c for c in candidates if self.permitted(c.upstream.name)]

    def view(self, name: str) -> routing.UpstreamView:
        return routing.UpstreamView(self.permitted(name), name not in self.down, 0)

    def full(self, name: str) -> bool:
        return name in self.busy

    def verdict(self, name: str) -> policy.Decision | None:
        return self.decisions[name]

    def health_error(self, name: str) -> str:
        return "connection refused"


def facts(**changes: Any) -> Facts:
    base = Facts(
        api="openai",
        path="/v1/chat/completions",
        model="llama3",
        forced=False,
        tenant=None,
        local=False,
        answerable=True,
        fallback_mode=FallbackMode.DETERMINISTIC,
        airgapped=True,
    )
    return dataclasses.replace(base, **changes)


def names(outcome: object) -> list[tuple[str, str | None]]:
    assert isinstance(outcome, Forward), outcome
    return [(a.name, a.model) for a in outcome.attempts]


def test_a_healthy_local_upstream_is_forwarded_to_with_the_fallback_behind_it() -> None:
    outcome = plan(facts(), FakeUpstreams(LOCAL, SECOND))
    assert names(outcome) == [("local", "llama3"), ("second", "llama3")]
    assert isinstance(outcome, Forward) and outcome.fallback
    assert all(isinstance(a, Attempt) and a.upstream is not None for a in outcome.attempts)


def test_the_forced_fallback_header_wins_over_everything() -> None:
    assert plan(facts(forced=True), FakeUpstreams(LOCAL)) == Answer(None)
    # ... even with fallback.mode: error
    assert plan(facts(forced=True, fallback_mode=FallbackMode.ERROR), FakeUpstreams(LOCAL)) == Answer(None)


def test_no_upstream_configured_answers_from_the_fallback_or_503() -> None:
    assert plan(facts(), FakeUpstreams()) == Answer(None)
    outcome = plan(facts(fallback_mode=FallbackMode.ERROR), FakeUpstreams())
    assert isinstance(outcome, Unavailable) and "fallback.mode: error" in outcome.message
    outcome = plan(facts(answerable=False, path="/v1/audio/speech"), FakeUpstreams())
    assert isinstance(outcome, Unavailable) and "/v1/audio/speech" in outcome.message


def test_a_model_list_is_answered_locally_before_any_routing() -> None:
    assert plan(facts(local=True, model=None), FakeUpstreams(LOCAL)) == Local()


def test_an_external_upstream_while_air_gapped_is_refused_with_its_decision() -> None:
    outcome = plan(facts(), FakeUpstreams(HOSTED))
    assert isinstance(outcome, Refuse) and outcome.upstream == "hosted"
    assert outcome.decision.verdict is policy.Verdict.EXTERNAL


def test_report_only_mode_forwards_to_the_external_upstream_with_its_decision() -> None:
    ups = FakeUpstreams(HOSTED)
    ups.config = dataclasses.replace(ups.config, airgapped=False)
    outcome = plan(facts(airgapped=False), ups)
    assert names(outcome) == [("hosted", "llama3")]
    assert isinstance(outcome, Forward)
    decision = outcome.attempts[0].decision
    assert decision is not None and not decision.is_local


def test_all_down_answers_from_the_fallback_saying_why() -> None:
    outcome = plan(facts(), FakeUpstreams(LOCAL, SECOND, down=("local", "second")))
    assert isinstance(outcome, Answer)
    assert outcome.cause == "no upstream available (local: connection refused; second: connection refused)"
    outcome = plan(facts(fallback_mode=FallbackMode.ERROR), FakeUpstreams(LOCAL, down=("local",)))
    assert isinstance(outcome, Unavailable) and outcome.upstream == "local"


def test_a_down_upstream_is_skipped() -> None:
    assert names(plan(facts(), FakeUpstreams(LOCAL, SECOND, down=("local",)))) == [("second", "llama3")]


def test_busy_is_not_down() -> None:
    outcome = plan(facts(), FakeUpstreams(CAPPED, full=("capped",)))
    assert isinstance(outcome, Busy) and outcome.upstream.name == "capped"
    # A full upstream passes the request on to the next one.
    assert names(plan(facts(), FakeUpstreams(CAPPED, LOCAL, full=("capped",)))) == [("local", "llama3")]


def test_an_unknown_model_is_404() -> None:
    only_llama = dict(LOCAL, models=["llama*"])
    with pytest.raises(ModelNotFound):
        plan(facts(model="mistral"), FakeUpstreams(only_llama))


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        pytest.param("openai", ["local", "plain"], id="openai: every type, priority first"),
        pytest.param("responses", ["local", "second"], id="responses: not a plain openai-compatible server"),
        pytest.param("anthropic", ["local", "second"], id="anthropic: ollama, vllm"),
        pytest.param("ollama", ["local"], id="ollama: only ollama"),
    ],
)
def test_only_upstreams_that_speak_the_surface_are_candidates(api: str, expected: list[str]) -> None:
    outcome = plan(facts(api=api), FakeUpstreams(LOCAL, SECOND, PLAIN))
    assert [name for name, _ in names(outcome)] == expected


def test_explicit_apis_override_the_provider_type() -> None:
    speaks_ollama = dict(PLAIN, apis=["ollama", "openai"])
    assert names(plan(facts(api="ollama"), FakeUpstreams(speaks_ollama))) == [("plain", "llama3")]
    no_anthropic = dict(LOCAL, apis=["openai"])
    outcome = plan(facts(api="anthropic"), FakeUpstreams(no_anthropic))
    assert outcome == Answer("no configured upstream speaks the anthropic API (upstreams[].apis)")


def test_a_tenant_gets_its_own_provider_and_no_fallback() -> None:
    local = policy.Decision(policy.Verdict.LOCAL, "loopback", policy.Rule.ALLOW_NETWORK)
    outcome = plan(facts(tenant=Tenant("tenant:acme", "m", local)), FakeUpstreams(LOCAL))
    assert isinstance(outcome, Forward) and not outcome.fallback
    assert outcome.attempts == (Attempt("tenant:acme", "m", local, None),)


def test_an_external_tenant_provider_is_refused_and_reported_when_not_air_gapped() -> None:
    external = policy.Decision(policy.Verdict.EXTERNAL, "public address", policy.Rule.NOT_ALLOWED_NETWORK)
    outcome = plan(facts(tenant=Tenant("tenant:acme", "m", external)), FakeUpstreams(LOCAL))
    assert outcome == Refuse("tenant:acme", external)
    outcome = plan(facts(airgapped=False, tenant=Tenant("tenant:acme", "m", external)), FakeUpstreams(LOCAL))
    assert isinstance(outcome, Forward) and outcome.attempts[0].decision == external
    invalid = policy.Decision(policy.Verdict.INVALID, "not a URL", policy.Rule.PARSE)
    outcome = plan(facts(airgapped=False, tenant=Tenant("tenant:acme", "m", invalid)), FakeUpstreams(LOCAL))
    assert isinstance(outcome, Refuse)
