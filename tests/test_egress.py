"""The single egress path: connect-time pinning, rebinding, redirects, proxy variables."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import warnings
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy import policy
from airgap_proxy.app import create_app
from airgap_proxy.egress import EgressClient
from airgap_proxy.errors import AirgapViolation
from airgap_proxy.policy.targets import IPAddress
from tests.conftest import BlackHole, FakeResolver, make_config
from tests.fakes import FakeUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ONLY_127_0_0_1 = policy.Rules(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),), allow_hosts=())


def sync_resolve(resolver: FakeResolver) -> policy.Resolve:
    def resolve(host: str) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(a) for a in resolver.lookup(host)]
        except OSError as exc:
            raise policy.ResolutionError(host) from exc

    return resolve


async def test_dns_rebinding_cannot_reach_outside(aiohttp_client: Any, aiohttp_server: Any, recorder: Any) -> None:
    """Local at classification time, outside at connect time: no connection to the outside."""
    local = FakeUpstream()
    await aiohttp_server(local.app())
    outside = await recorder("127.0.0.2")
    resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    url = f"http://rebind.test:{outside.port}/v1"
    decision = policy.classify(url, ONLY_127_0_0_1, sync_resolve(resolver))
    assert decision.verdict is policy.Verdict.LOCAL  # the first answer looked fine

    rules = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}}
    client = await aiohttp_client(create_app(make_config(rules, {"LLM_BASE_URL": url}), resolver=resolver))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["code"] == "airgap_violation"
    assert body["error"]["message"] == "address 127.0.0.2 of host rebind.test is not in allow_networks"
    assert outside.connections == 0
    assert resolver.calls.count("rebind.test") >= 2  # classification, then connect (and probes)


async def test_allow_listed_name_is_still_pinned_at_connect(aiohttp_client: Any, recorder: Any) -> None:
    outside = await recorder("127.0.0.2")
    resolver = FakeResolver({"llm.trusted.internal": ["127.0.0.2"]})
    rules = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": ["*.trusted.internal"]}}
    config = make_config(rules, {"LLM_BASE_URL": f"http://llm.trusted.internal:{outside.port}/v1"})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    assert "127.0.0.2" in (await resp.json())["error"]["message"]
    assert outside.connections == 0


@pytest.mark.parametrize("answer", ["::7f00:1", "::a00:5", "::c0a8:101"])
async def test_allow_listed_name_resolving_ipv4_compatible_is_refused_at_connect(
    aiohttp_client: Any, recorder: Any, answer: str
) -> None:
    """``::a.b.c.d`` is routed as IPv6, off the host: the AAAA answer is judged as IPv6 too."""
    local = await recorder("127.0.0.1")
    resolver = FakeResolver({"llm.trusted.internal": [answer]})
    rules = {"policy": {"allow_hosts": ["*.trusted.internal"]}}
    config = make_config(rules, {"LLM_BASE_URL": f"http://llm.trusted.internal:{local.port}/v1"})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    message = (await resp.json())["error"]["message"]
    assert message == policy.REASON_COMPATIBLE.format(address=answer, host="llm.trusted.internal")
    assert local.connections == 0


@pytest.mark.parametrize("host", ["[::127.0.0.1]", "[::7f00:1]", "[0:0:0:0:0:0:127.0.0.1]"])
async def test_ipv4_compatible_upstream_literal_is_refused_before_connecting(
    aiohttp_client: Any, recorder: Any, host: str
) -> None:
    local = await recorder("127.0.0.1")
    raw = {"upstreams": [{"name": "compat", "base_url": f"http://{host}:{local.port}/v1", "models": ["m"]}]}
    client = await aiohttp_client(create_app(make_config(raw), resolver=FakeResolver({})))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    assert "IPv4-compatible" in (await resp.json())["error"]["message"]
    assert local.connections == 0


async def test_name_resolving_to_mixed_addresses_is_refused(aiohttp_client: Any, recorder: Any) -> None:
    outside = await recorder("127.0.0.2")
    resolver = FakeResolver({"mixed.test": ["127.0.0.1", "127.0.0.2"]})
    rules = {"policy": {"allow_networks": ["127.0.0.1/32"]}}
    config = make_config(rules, {"LLM_BASE_URL": f"http://mixed.test:{outside.port}/v1"})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    assert outside.connections == 0


async def test_unresolvable_name_is_an_airgap_violation(aiohttp_client: Any) -> None:
    resolver = FakeResolver({})
    config = make_config(None, {"LLM_BASE_URL": "http://nowhere.test:8000/v1"})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422
    assert (await resp.json())["error"]["message"] == "host nowhere.test does not resolve"


async def test_name_resolving_locally_is_forwarded(aiohttp_client: Any, upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    port = base.split(":")[2].split("/")[0]
    resolver = FakeResolver({"ollama": ["127.0.0.1"]})
    config = make_config(None, {"LLM_BASE_URL": f"http://ollama:{port}/v1"})
    client = await aiohttp_client(create_app(config, resolver=resolver))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert len(fake.received) == 1
    assert fake.received[0].headers["Host"] == f"ollama:{port}"


async def test_socket_factory_refuses_ip_literals_directly(recorder: Any) -> None:
    """Below the request-level verdict: the client itself refuses an outside address."""
    outside = await recorder("127.0.0.2")
    client = EgressClient(ONLY_127_0_0_1, enforce=True, connect_timeout_s=2, read_timeout_s=2)
    await client.start()
    try:
        for url in (
            f"http://127.0.0.2:{outside.port}/",
            f"http://[::ffff:127.0.0.2]:{outside.port}/",
            f"http://[::127.0.0.2]:{outside.port}/",
        ):
            with pytest.raises(AirgapViolation, match=r"127\.0\.0\.2"):
                await client.request("GET", url, headers={}, body=None)
    finally:
        await client.close()
    assert outside.connections == 0


async def test_report_only_client_connects_and_reports(recorder: Any) -> None:
    outside = await recorder("127.0.0.2")
    seen: list[policy.Decision] = []
    client = EgressClient(
        ONLY_127_0_0_1, enforce=False, connect_timeout_s=2, read_timeout_s=2, on_would_block=seen.append
    )
    await client.start()
    try:
        with pytest.raises(Exception):
            await client.request("GET", f"http://127.0.0.2:{outside.port}/", headers={}, body=None)
    finally:
        await client.close()
    assert outside.connections >= 1  # aiohttp retries an idempotent request once
    assert seen
    assert {d.verdict for d in seen} == {policy.Verdict.EXTERNAL}


async def test_proxy_environment_variables_are_ignored(
    aiohttp_client: Any, upstream: tuple[FakeUpstream, str], recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trap = await recorder("127.0.0.1")
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{trap.port}")
    fake, base = upstream
    client = await aiohttp_client(create_app(make_config(None, {"LLM_BASE_URL": base})))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert len(fake.received) == 1
    assert trap.connections == 0


async def test_deny_listed_names_are_refused_before_any_dns_lookup() -> None:
    resolver = FakeResolver({"api.openai.com": ["127.0.0.1"]})
    client = EgressClient(policy.Rules(), enforce=True, connect_timeout_s=2, read_timeout_s=2, resolver=resolver)
    await client.start()
    try:
        with pytest.raises(AirgapViolation, match="deny list"):
            await client.request("GET", "http://api.openai.com:1/", headers={}, body=None)
    finally:
        await client.close()
    assert resolver.calls == []


async def test_a_connect_time_refusal_is_a_compliance_finding_not_a_health_state(
    aiohttp_client: Any, recorder: Any
) -> None:
    """A name the probes find outside is refused (422) and reported non-compliant, never a canned 200."""
    outside = await recorder("127.0.0.2")
    # Outside for the two probes, then (for the status' own lookup, say) local again.
    resolver = FakeResolver({"drift.test": [["127.0.0.2"], ["127.0.0.2"], ["127.0.0.1"]]})
    url = f"http://drift.test:{outside.port}/v1"
    raw = {
        "policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []},
        "health": {"interval_s": 0.05, "unhealthy_after": 2},
    }
    client = await aiohttp_client(create_app(make_config(raw, {"LLM_BASE_URL": url}), resolver=resolver))
    for _ in range(100):
        if resolver.calls.count("drift.test") >= 3:
            break
        await asyncio.sleep(0.02)
    reason = "address 127.0.0.2 of host drift.test is not in allow_networks"
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 422, await resp.text()
    body = await resp.json()
    assert body["error"]["code"] == "airgap_violation"
    assert body["error"]["message"] == reason
    status = await (await client.get("/api/v1/llm/status")).json()
    assert status["airgap_compliant"] is False
    [detail] = status["upstreams"]
    assert detail["verdict"] == "external" and detail["reason"] == reason
    assert detail["permitted"] is False
    assert outside.connections == 0


async def test_a_connect_time_refusal_clears_once_a_probe_gets_through(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    local = FakeUpstream()
    server = await aiohttp_server(local.app())
    # Outside for the first probe, then local (DNS fixed): the next probe clears the finding.
    resolver = FakeResolver({"fixed.test": [["127.0.0.2"], ["127.0.0.1"]]})
    raw = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}, "health": {"interval_s": 0.05}}
    url = f"http://fixed.test:{server.port}/v1"
    client = await aiohttp_client(create_app(make_config(raw, {"LLM_BASE_URL": url}), resolver=resolver))
    for _ in range(100):
        status = await (await client.get("/api/v1/llm/status")).json()
        if resolver.calls.count("fixed.test") >= 3 and status["reachable"]:
            break
        await asyncio.sleep(0.02)
    assert status["airgap_compliant"] is True and status["upstreams"][0]["permitted"] is True
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and resp.headers["X-Airgap-Upstream"] == "default"


async def test_a_cancelled_connect_closes_its_socket(black_hole: BlackHole) -> None:
    """A client that goes away mid-connect must not leave the socket to the garbage collector."""
    port = black_hole.port
    client = EgressClient(policy.Rules(), enforce=True, connect_timeout_s=30, read_timeout_s=30)
    await client.start()
    try:
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            for _ in range(5):
                task = asyncio.ensure_future(
                    client.request("GET", f"http://127.0.0.1:{port}/v1/models", headers={}, body=None)
                )
                await asyncio.sleep(0.05)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Closed when cancelled, not whenever the collector gets to it.
            assert len(os.listdir("/proc/self/fd")) <= before
            del task
            gc.collect()
    finally:
        await client.close()


async def test_report_only_audits_a_connect_time_would_block_on_every_request(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """The decision made at connect travels with each request, keep-alive reuse included."""
    outside = FakeUpstream()
    server = await aiohttp_server(outside.app(), host="127.0.0.2")
    resolver = FakeResolver({"drift.test": ["127.0.0.2"]})
    raw = {"policy": {"allow_networks": ["127.0.0.1/32"], "allow_hosts": []}, "health": {"interval_s": 60}}
    env = {"LLM_BASE_URL": f"http://drift.test:{server.port}/v1", "AISOC_AIRGAPPED": "false"}
    client = await aiohttp_client(create_app(make_config(raw, env), resolver=resolver))
    with capture_logs() as logs:
        for _ in range(3):  # the second and third reuse the pooled connection
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 200
    assert len(outside.received) == 3
    audits = [e for e in logs if e["event"] == "request"]
    reason = "address 127.0.0.2 of host drift.test is not in allow_networks"
    assert [(a["decision"], a["verdict"], a["reason"]) for a in audits] == [("would_block", "external", reason)] * 3
    assert {a["rule"] for a in audits} == {"not_allowed_network"}
