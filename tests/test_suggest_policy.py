"""``airgap-proxy suggest-policy``: a report-only run's audit log -> the policy that enforces it."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from airgap_proxy import policy
from airgap_proxy.app import create_app
from airgap_proxy.cli import main
from airgap_proxy.suggest_policy import read_events, suggest
from tests.conftest import FakeResolver, make_config
from tests.fakes import FakeUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# What a report-only run also sees, written as the audit event writes it.
RECORDED = [
    {"event": "request", "decision": "would_block", "host": "cdn.example.com", "addresses": ["93.184.215.14"],
     "rule": "not_allowed_network", "reason": "address 93.184.215.14 of host cdn.example.com is not in allow_networks"},
    {"event": "request", "decision": "would_block", "host": "169.254.169.254", "addresses": ["169.254.169.254"],
     "rule": "deny_network", "reason": "address 169.254.169.254 is in deny_networks (cloud metadata)"},
    {"event": "request", "decision": "would_block", "host": "gone.lan", "addresses": [],
     "rule": "unresolved", "reason": "host gone.lan does not resolve"},
    {"event": "request", "decision": "forward", "host": "127.0.0.1", "addresses": ["127.0.0.1"],
     "rule": "allow_network"},
]  # fmt: skip


async def report_only_run(aiohttp_server: Any, aiohttp_client: Any) -> list[str]:
    """Real traffic in report-only mode: a model box outside allow_networks and a hosted API name."""
    box, hosted = FakeUpstream(), FakeUpstream()
    box_server = await aiohttp_server(box.app(), host="127.0.0.2")
    hosted_server = await aiohttp_server(hosted.app(), host="127.0.0.3")
    raw = {
        "policy": {"allow_networks": ["127.0.0.1/32"]},
        "upstreams": [
            {"name": "gpu", "base_url": f"http://gpu-box.lan:{box_server.port}/v1", "models": ["llama*"]},
            {"name": "cloud", "base_url": f"http://api.openai.com:{hosted_server.port}/v1", "models": ["gpt*"]},
        ],
    }
    resolver = FakeResolver({"gpu-box.lan": ["127.0.0.2"], "api.openai.com": ["127.0.0.3"]})
    client = await aiohttp_client(create_app(make_config(raw, {"AISOC_AIRGAPPED": "false"}), resolver=resolver))
    with capture_logs() as logs:
        for model in ("llama3", "llama3", "gpt-4o"):
            assert (await client.post("/v1/chat/completions", json={**CHAT, "model": model})).status == 200
    assert len(box.received) == 2 and len(hosted.received) == 1
    return [f"2026-12-03 {json.dumps(e)}" for e in logs if e["event"] == "request"]


async def test_a_report_only_run_becomes_an_enforcing_policy(aiohttp_server: Any, aiohttp_client: Any) -> None:
    lines = await report_only_run(aiohttp_server, aiohttp_client) + [json.dumps(e) for e in RECORDED]
    rules = make_config({"policy": {"allow_networks": ["127.0.0.1/32"]}}).rules
    found = suggest(read_events(["not json", *lines]), rules)
    assert [str(n) for n in found.allow_networks] == ["127.0.0.2/32"]
    assert [(d.host, d.count) for d in found.kept] == [("gpu-box.lan", 2)]
    blocked = {d.host: d.count for d in found.blocked}
    assert blocked == {"api.openai.com": 1, "cdn.example.com": 1, "169.254.169.254": 1, "gone.lan": 1}
    assert found.would_block == 6
    # The hosted name is recorded as what it is, a deny-listed name, whatever it resolved to.
    [openai_host] = [d for d in found.blocked if d.host == "api.openai.com"]
    assert openai_host.rules == {"deny_host"} and openai_host.addresses == {"127.0.0.3"}
    # Enforcing with the suggestion keeps the model box local and still refuses the rest.
    enforced = make_config({"policy": {"allow_networks": ["127.0.0.1/32", *map(str, found.allow_networks)]}}).rules
    assert policy.check_addresses("gpu-box.lan", [ipaddress.ip_address("127.0.0.2")], enforced).is_local
    assert not policy.check_addresses("cdn.example.com", [ipaddress.ip_address("93.184.215.14")], enforced).is_local


async def test_the_command_prints_a_policy_snippet_that_loads(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit.log"
    log.write_text("\n".join(await report_only_run(aiohttp_server, aiohttp_client)) + "\n")
    config = tmp_path / "airgap-proxy.yaml"
    config.write_text(json.dumps({"version": 1, "policy": {"allow_networks": ["127.0.0.1/32"]}}))
    assert main(["suggest-policy", str(log), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert '- "127.0.0.2/32"  # added' in out and "api.openai.com: 1 requests" in out
    snippet = yaml.safe_load(out)
    loaded = make_config(snippet).rules
    assert [str(n) for n in loaded.allow_networks] == ["127.0.0.1/32", "127.0.0.2/32"]


def test_an_unreadable_log_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suggest-policy", str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_nothing_to_add_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("\n".join(json.dumps(e) for e in RECORDED))
    assert main(["suggest-policy", str(log)]) == 0
    out = capsys.readouterr().out
    assert "Nothing to add" in out and "cdn.example.com: 1 requests" in out
