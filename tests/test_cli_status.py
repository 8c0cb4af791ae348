"""``airgap-proxy status`` against a running proxy."""

from __future__ import annotations

import json
import time

import pytest

from airgap_proxy.cli import main
from tests.conftest import ThreadedServers, make_config


def test_status_table_for_a_fallback_only_proxy(threaded: ThreadedServers, capsys: pytest.CaptureFixture[str]) -> None:
    base = threaded.start_proxy(make_config())
    assert main(["status", "--url", base]) == 0
    out = capsys.readouterr().out
    assert "provider_type     deterministic" in out
    assert "airgap_compliant  True" in out


def test_status_json_and_noncompliant_exit(threaded: ThreadedServers, capsys: pytest.CaptureFixture[str]) -> None:
    base = threaded.start_proxy(make_config(None, {"LLM_BASE_URL": "https://api.openai.com/v1"}))
    assert main(["status", "--url", base, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["airgap_compliant"] is False
    assert report["upstreams"][0]["verdict"] == "external"
    assert main(["status", "--url", base]) == 1
    out = capsys.readouterr().out
    assert "default: host api.openai.com is on the deny list" in out


def test_status_of_an_unreachable_or_external_proxy(unused_tcp_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", f"http://127.0.0.1:{unused_tcp_port}"]) == 1
    assert "cannot read status" in capsys.readouterr().err
    assert main(["status", "--url", "https://api.openai.com"]) == 1  # the CLI obeys the policy too
    assert "deny list" in capsys.readouterr().err


def test_status_exits_1_while_the_local_server_is_down(
    threaded: ThreadedServers, capsys: pytest.CaptureFixture[str], unused_tcp_port: int
) -> None:
    # Nothing listens there: the local server "is not running". The fallback answers,
    # but a deployment check must not pass.
    config = make_config(
        {"health": {"interval_s": 0.05, "timeout_s": 0.5}},
        {"LLM_BASE_URL": f"http://127.0.0.1:{unused_tcp_port}/v1", "LLM_PROVIDER_TYPE": "local-ollama"},
    )
    base = threaded.start_proxy(config)
    for _ in range(100):
        code = main(["status", "--url", base, "--json"])
        report = json.loads(capsys.readouterr().out)
        if report["fallback_active"]:
            break
        time.sleep(0.05)
    assert code == 1
    assert report["provider_type"] == "local-ollama"
    assert report["reachable"] is False
    assert report["airgap_compliant"] is True
    assert main(["status", "--url", base]) == 1
    out = capsys.readouterr().out
    assert "reachable         False" in out
    assert "the deterministic fallback answers" in out
