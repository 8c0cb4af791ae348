"""The self-egress guard (PEP 578 audit hook): in a process of its own, since a hook cannot be removed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.conftest import ThreadedServers
from tests.test_serve import ROOT, clean_env, free_port, wait_for_port

DRIVER = Path(__file__).with_name("guard_driver.py")


@pytest.fixture(scope="module")
def driven() -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, str(DRIVER)], capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean_env()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_importing_everything_and_a_full_request_cycle_make_no_stray_attempt(
    driven: tuple[dict[str, Any], str],
) -> None:
    result, _logs = driven
    assert result["imported"] > 50
    # forward, stream, failover past the dead upstream, forced fallback, reload, forward again
    assert result["cycle"]["statuses"] == [
        [200, "live"],
        [200, "live"],
        [200, "live"],
        [200, "deterministic"],
        [200, "live"],
    ]
    assert result["cycle"]["generation"] == 2
    assert result["counts_after_cycle"] == [0, 0]


@pytest.mark.parametrize(
    ("attempt", "fragment"),
    [
        ("create_connection", "address 127.0.0.2 of host 127.0.0.2 is not in allow_networks"),
        ("connect", "socket.connect to 127.0.0.2"),
        ("sendto", "socket.sendto to 127.0.0.2"),
        ("connect_short_form", "the name 127.2"),
        ("connect_hex_form", "the name 0x7f000002"),
        ("getaddrinfo_hosted", "api.openai.com is on the deny list"),
        ("thread", "socket.connect to 127.0.0.2"),
    ],
)
def test_a_stray_attempt_is_refused_before_the_system_call(
    driven: tuple[dict[str, Any], str], attempt: str, fragment: str
) -> None:
    result, _logs = driven
    assert result["strays"][attempt].startswith("refused: ") and fragment in result["strays"][attempt]


def test_the_canary_outside_saw_nothing_and_loopback_still_works(driven: tuple[dict[str, Any], str]) -> None:
    result, _logs = driven
    assert result["canary_hits"] == []
    assert result["strays"]["loopback_allowed"] == "not refused: ConnectionRefusedError"  # reached the kernel
    assert result["counts"] == [7, 0]


def test_each_refusal_is_logged_with_the_module_that_asked(driven: tuple[dict[str, Any], str]) -> None:
    _result, logs = driven
    refused = [line for line in logs.splitlines() if "self_egress_refused" in line]
    assert len(refused) == 7
    assert all("caller=__main__" in line for line in refused), refused


def test_serve_installs_it_and_serves_through_the_egress(threaded: ThreadedServers, tmp_path: Path) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat)
    upstream_port = threaded.start(upstream)
    config = tmp_path / "airgap-proxy.yaml"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "policy": {"allow_networks": ["127.0.0.1/32"]},
                "upstreams": [{"name": "local", "base_url": f"http://127.0.0.1:{upstream_port}/v1"}],
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "airgap_proxy", "serve", "--port", str(port), "--config", str(config)],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            assert client.post("/v1/chat/completions", json=body).headers["X-Airgap-Upstream"] == "local"
            metrics = client.get("/metrics").text
        assert 'airgap_proxy_self_egress_attempts_total{action="block"} 0.0' in metrics
    finally:
        process.terminate()
        out, err = process.communicate(timeout=15)
    assert '"self_egress_guard":true' in out + err
    assert "self_egress_refused" not in out + err
