"""``airgap-proxy env --client NAME``: every client's variables, parsed back from every format."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from airgap_proxy import client_env
from airgap_proxy.cli import main

ROOT = Path(__file__).resolve().parent.parent
# What each client must get: its base URL variable and value (the proxy at http://gw:8080).
EXPECTED = {
    "claude-code": ("ANTHROPIC_BASE_URL", "http://gw:8080"),
    "codex": ("OPENAI_BASE_URL", "http://gw:8080/v1"),
    "openai": ("OPENAI_BASE_URL", "http://gw:8080/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", "http://gw:8080"),
    "ollama": ("OLLAMA_HOST", "http://gw:8080"),
    "langchain": ("OPENAI_API_BASE", "http://gw:8080/v1"),
    "aider": ("OPENAI_API_BASE", "http://gw:8080/v1"),
    "openhands": ("LLM_BASE_URL", "http://gw:8080/v1"),
    "agent": ("LLM_BASE_URL", "http://gw:8080/v1"),
}


def run(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["env", *args]) == 0
    return capsys.readouterr().out


def parse_shell(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export"
        name, _, value = words[1].partition("=")
        out[name] = value
    return out


def parse_dotenv(text: str) -> dict[str, str]:
    return {name: json.loads(value) for name, _, value in (line.partition("=") for line in text.splitlines())}


@pytest.mark.parametrize("client", sorted(EXPECTED))
def test_every_client_in_every_format_says_the_same(client: str, capsys: pytest.CaptureFixture[str]) -> None:
    shell = parse_shell(run("--client", client, "--proxy-url", "http://gw:8080/", capsys=capsys))
    dotenv = parse_dotenv(run("--client", client, "--proxy-url", "http://gw:8080", "--format", "dotenv", capsys=capsys))
    compose = yaml.safe_load(
        run("--client", client, "--proxy-url", "http://gw:8080", "--format", "compose", capsys=capsys)
    )
    k8s = yaml.safe_load(run("--client", client, "--proxy-url", "http://gw:8080", "--format", "k8s", capsys=capsys))
    assert shell == dotenv == compose["environment"] == {e["name"]: e["value"] for e in k8s["env"]}
    name, value = EXPECTED[client]
    assert shell[name] == value
    # Hosted keys are blank or a placeholder: never a real key, never missing.
    for key in client_env.HOSTED_KEYS:
        assert shell[key] in ("", client_env.PLACEHOLDER_KEY), key
    # The backstop: every other HTTP(S) call goes to the proxy, but the proxy itself is reached directly.
    assert shell["HTTPS_PROXY"] == shell["HTTP_PROXY"] == shell["https_proxy"] == "http://gw:8080"
    assert shell["NO_PROXY"].split(",") == ["localhost", "127.0.0.1", "::1", "gw"]


def test_clients_with_a_switch_for_non_essential_traffic_get_it(capsys: pytest.CaptureFixture[str]) -> None:
    claude = parse_shell(run("--client", "claude-code", capsys=capsys))
    assert claude["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and claude["DISABLE_TELEMETRY"] == "1"
    assert claude["ANTHROPIC_AUTH_TOKEN"] and claude["ANTHROPIC_API_KEY"] == ""
    aider = parse_shell(run("--client", "aider", capsys=capsys))
    assert aider["AIDER_ANALYTICS_DISABLE"] == "true"
    langchain = parse_shell(run("--client", "langchain", capsys=capsys))
    assert langchain["LANGSMITH_TRACING"] == "false"


def test_without_the_backstop_and_on_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    plain = parse_shell(run("--client", "openai", "--no-forward-proxy", capsys=capsys))
    assert "HTTPS_PROXY" not in plain and plain["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert plain["OPENAI_API_KEY"] == client_env.PLACEHOLDER_KEY


def test_what_it_prints_works_in_a_real_shell_and_sdk(capsys: pytest.CaptureFixture[str]) -> None:
    exports = run("--client", "openai", "--proxy-url", "http://127.0.0.1:9", capsys=capsys)
    script = exports + 'python3 -c "import openai; c = openai.OpenAI(); print(c.base_url, repr(c.api_key))"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "http://127.0.0.1:9/v1/ 'airgap-proxy'"


@pytest.mark.parametrize("bad", ["ftp://gw", "gw:8080", "http://"])
def test_a_bad_proxy_url_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "--client", "openai", "--proxy-url", bad]) == 2
    assert "--proxy-url" in capsys.readouterr().err


def test_an_unknown_client_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airgap_proxy", "env", "--client", "cursor"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr


def k8s_agent_env() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "deploy/kubernetes/sidecar/deployment.yaml").read_text())
    deployment = next(d for d in docs if d and d.get("kind") == "Deployment")
    [agent] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    return {e["name"]: e.get("value") for e in agent["env"]}


def test_the_kubernetes_sidecar_and_the_compose_overlay_use_what_it_prints() -> None:
    sidecar = dict(client_env.variables("agent", "http://127.0.0.1:8080"))
    assert sidecar.items() <= k8s_agent_env().items()
    compose = yaml.safe_load((ROOT / "compose/docker-compose.airgap.yml").read_text())
    agents = compose["services"]["agents"]["environment"]
    assert dict(client_env.variables("agent", "http://airgap-proxy:8080")).items() <= agents.items()
