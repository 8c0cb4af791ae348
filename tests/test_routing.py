"""Routing and attempt planning (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from airgap_proxy import policy
from airgap_proxy.errors import ModelNotFound, NoHealthyUpstream
from airgap_proxy.upstreams import routing
from tests.conftest import make_config


def upstreams(*items: dict[str, Any]) -> Any:
    return make_config({"upstreams": list(items)}).upstreams


A = {"name": "a", "base_url": "http://127.0.0.1:1/v1", "models": ["llama3*", "qwen2.5:7b"], "priority": 0}
B = {"name": "b", "base_url": "http://127.0.0.1:2/v1", "models": ["llama3*"], "priority": 0}
C = {"name": "c", "base_url": "http://127.0.0.1:3/v1", "priority": 1, "aliases": {"gpt-4o": "llama3.1:70b"}}


@pytest.mark.parametrize(
    ("model", "default", "expected"),
    [
        pytest.param(None, "llama3", "llama3", id="missing model uses default"),
        pytest.param("default", "llama3", "llama3", id="default keyword"),
        pytest.param("", "llama3", "llama3", id="empty model"),
        pytest.param("qwen", "llama3", "qwen", id="explicit model kept"),
        pytest.param(None, None, None, id="no default stays none"),
        pytest.param("default", None, "default", id="default without LLM_MODEL passes through"),
    ],
)
def test_requested_model(model: str | None, default: str | None, expected: str | None) -> None:
    assert routing.requested_model(model, default) == expected


def test_route_by_exact_glob_alias_and_catch_all() -> None:
    ups = upstreams(A, B, C)
    assert [(c.upstream.name, c.model) for c in routing.route(ups, "llama3.2:3b")] == [
        ("a", "llama3.2:3b"),
        ("b", "llama3.2:3b"),
        ("c", "llama3.2:3b"),
    ]
    assert [c.upstream.name for c in routing.route(ups, "qwen2.5:7b")] == ["a", "c"]
    assert [(c.upstream.name, c.model) for c in routing.route(ups, "gpt-4o")] == [("c", "llama3.1:70b")]


def test_route_errors() -> None:
    with pytest.raises(NoHealthyUpstream):
        routing.route((), "x")
    with pytest.raises(ModelNotFound) as info:
        routing.route(upstreams(A, B), "mistral")
    assert info.value.status == 404 and info.value.code == "model_not_found" and info.value.param == "model"


def test_glob_does_not_match_partially() -> None:
    assert routing.serves(upstreams(A)[0], "my-llama3") is None
    assert routing.serves(upstreams(A)[0], "llama3") == "llama3"


def view_of(table: dict[str, tuple[bool, bool, int]]) -> Any:
    def view(name: str) -> routing.UpstreamView:
        permitted, available, in_flight = table[name]
        return routing.UpstreamView(permitted=permitted, available=available, in_flight=in_flight)

    return view


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param({"a": (1, 1, 0), "b": (1, 1, 0), "c": (1, 1, 0)}, ["a", "b"], id="config order on a tie"),
        pytest.param({"a": (1, 1, 3), "b": (1, 1, 1), "c": (1, 1, 0)}, ["b", "a"], id="least in flight first"),
        pytest.param({"a": (1, 0, 0), "b": (1, 1, 5), "c": (1, 1, 0)}, ["b", "c"], id="unhealthy skipped"),
        pytest.param({"a": (1, 0, 0), "b": (1, 0, 0), "c": (1, 1, 0)}, ["c"], id="lower priority takes over"),
        pytest.param({"a": (0, 1, 0), "b": (0, 1, 0), "c": (1, 1, 0)}, ["c"], id="refused never tried"),
        pytest.param({"a": (0, 1, 0), "b": (1, 0, 0), "c": (0, 1, 0)}, [], id="nothing available"),
    ],
)
def test_plan(table: dict[str, tuple[bool, bool, int]], expected: list[str]) -> None:
    candidates = routing.route(upstreams(A, B, C), "llama3")
    assert [c.upstream.name for c in routing.plan(candidates, view_of(table))] == expected


@pytest.mark.parametrize(
    ("item", "verdict", "fragment"),
    [
        pytest.param({"provider_type": "openai", "base_url": "http://127.0.0.1/v1"}, "external", "hosted", id="hosted"),
        pytest.param({"base_url": "http://user@127.0.0.1/v1"}, "invalid", "userinfo", id="invalid url"),
        pytest.param({"base_url": "https://api.groq.com/openai/v1"}, "external", "deny list", id="deny list"),
        pytest.param({"base_url": "http://10.0.0.8:8000/v1"}, "local", "allow_networks", id="private ip"),
        pytest.param({"base_url": "http://vllm.ml.svc.cluster.local/v1"}, "local", "allow_hosts", id="cluster name"),
    ],
)
def test_static_decision(item: dict[str, Any], verdict: str, fragment: str) -> None:
    [upstream] = upstreams({"name": "u", **item})
    decision = routing.static_decision(upstream, make_config().rules)
    assert decision is not None
    assert decision.verdict.value == verdict
    assert fragment in decision.reason


def test_names_are_left_to_connect_time() -> None:
    [upstream] = upstreams({"name": "u", "base_url": "http://ollama:11434/v1"})
    assert routing.static_decision(upstream, make_config().rules) is None
    decision = routing.full_decision(upstream, make_config().rules, lambda host: [policy.ipaddress_or_none("10.1.1.1")])  # type: ignore[list-item]
    assert decision.verdict is policy.Verdict.LOCAL
