"""``airgap-proxy status`` against a running proxy."""

from __future__ import annotations

import json

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
