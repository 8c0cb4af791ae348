"""``airgap-proxy serve`` as a real process: the README's quick start, logs, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import PROXY_ENV_VARS

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("proxy did not start listening")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    return {**env, **extra}


@pytest.fixture
def served() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "airgap_proxy", "serve", "--port", str(port)],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_no_config_serves_the_fallback_then_stops_cleanly(served: tuple[int, subprocess.Popen[str]]) -> None:
    port, process = served
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    prompt = "PROMPT-MUST-NOT-BE-LOGGED-5521"
    chat = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}])
    assert chat.system_fingerprint == "fp_airgap_deterministic"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode in (0, -signal.SIGTERM)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e["event"] == "starting" and e["airgapped"] is True for e in events)
    [audit] = [e for e in events if e["event"] == "request"]
    assert audit["decision"] == "fallback" and audit["status"] == 200
    assert prompt not in err and prompt not in out


def test_port_in_use_is_a_clean_error(served: tuple[int, subprocess.Popen[str]]) -> None:
    port, _process = served
    result = subprocess.run(
        [sys.executable, "-m", "airgap_proxy", "serve", "--port", str(port)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_environment_exits_2_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airgap_proxy", "serve"],
        env=clean_env(AISOC_AIRGAPPED="maybe"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "airgap-proxy: config error: AISOC_AIRGAPPED: expected true or false, got 'maybe'"
