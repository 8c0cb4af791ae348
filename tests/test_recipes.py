"""docs/clients.md: every client recipe runs against a real proxy and does what the doc says.

Each block after a ``<!-- recipe: NAME -->`` comment is checked: Python
recipes run in a subprocess against ``airgap-proxy serve`` (no upstream, so
the fallback answers) with only the recipe's own settings, and the proxy's
audit log must show their requests on the right surface; proxy configs load
and route the client's model names; Codex's TOML and Claude Code's variables
are parsed. The ``real`` tests run the Claude Code and Codex CLIs, and the
recipes that need LangChain or the Agents SDK, from ``scripts/real-servers setup``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from airgap_proxy import config
from airgap_proxy.upstreams import routing
from tests.conftest import PROXY_ENV_VARS
from tests.real_servers import SETUP_COMMAND, free_port, in_ci, setup_dir, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "clients.md"
DOC_ADDRESS = "127.0.0.1:8080"
RUN_TIMEOUT_S = 60
# What the parent may have set that would steer a client without the recipe saying so.
CLIENT_ENV_PREFIXES = ("ANTHROPIC_", "OPENAI_", "OLLAMA_", "CODEX_", "CLAUDE_", "LANGCHAIN_", "LANGSMITH_")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class Recipe:
    name: str
    lang: str
    code: str


def recipes() -> dict[str, Recipe]:
    found = re.finditer(r"^<!-- recipe: ([\w-]+) -->\n```(\w+)[^\n]*\n(.*?)^```\s*$", DOC.read_text(), re.M | re.S)
    return {m.group(1): Recipe(m.group(1), m.group(2), m.group(3)) for m in found}


def recipe(name: str) -> Recipe:
    return recipes()[name]


# Python recipes: (surface, requests it makes, what the last printed line must be or None).
PYTHON = {
    "anthropic-sdk": ("anthropic", 2, None),
    "openai-responses": ("responses", 2, None),
    "openai-chat": ("openai", 1, None),
    "ollama-env": ("ollama", 1, None),
    "ollama-client": ("ollama", 3, "2"),
}
# Python recipes whose libraries live in the real-servers clients virtualenv.
REAL_PYTHON = {
    "langchain-anthropic": ("anthropic", 1, None),
    "langchain-ollama": ("ollama", 1, None),
    "openai-agents": ("responses", 1, None),
}
# Proxy configs: (surface, the model the client asks for, the model the upstream must get).
PROXY_CONFIGS = {
    "claude-code-ollama": [("anthropic", "claude-sonnet-4-6", "qwen2.5-coder:7b")],
    "claude-code-llamacpp": [("anthropic", "claude-haiku-4-5", "qwen2.5-coder-7b-instruct")],
    "codex-proxy": [("responses", "gpt-5-codex", "qwen2.5-coder:7b"), ("responses", "codex-mini", "qwen2.5-coder:7b")],
    "ollama-proxy": [("ollama", "llama3.2:3b", "llama3.2:3b")],
}
OTHER = {"claude-code-env", "codex-config", "open-webui"}


def test_every_recipe_in_the_doc_is_checked_here() -> None:
    assert set(recipes()) == set(PYTHON) | set(REAL_PYTHON) | set(PROXY_CONFIGS) | OTHER


def test_recipes_use_the_documented_address() -> None:
    for r in recipes().values():
        if r.lang == "python" or r.name in {"claude-code-env", "codex-config"}:
            assert DOC_ADDRESS in r.code, r.name


# --------------------------------------------------------------------------- #
# The proxy, as a process, and what it audited
# --------------------------------------------------------------------------- #


@dataclass
class Proxy:
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "request":
                    out.append(event)
        return out

    def wait_for_events(self, before: int, count: int) -> list[dict[str, Any]]:
        wait_until(f"{count} audit events", lambda: len(self.events()) >= before + count, timeout=5)
        return self.events()[before:]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that configures the proxy or steers a client."""
    drop = set(PROXY_ENV_VARS) | {"PYTHONPATH"} | {v for p in PROXY_VARIABLES for v in (p, p.lower())}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(CLIENT_ENV_PREFIXES)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    port = free_port()
    log = tmp_path_factory.mktemp("recipes") / "proxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "airgap_proxy", "serve"],
            env=clean_env(AIRGAP_PROXY_PORT=str(port), PYTHONPATH=str(ROOT)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until("proxy listening", lambda: '"event":"listening"' in log.read_text().replace(" ", ""), 20)
        yield Proxy(port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def at(proxy: Proxy, text: str) -> str:
    """``text`` with the doc's address replaced by the test proxy's."""
    return text.replace(DOC_ADDRESS, f"127.0.0.1:{proxy.port}")


def comment_env(code: str) -> dict[str, str]:
    """``# NAME=value`` lines at the top of a recipe: the environment it is run with."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# ([A-Z][A-Z0-9_]*)=(\S+)$", code, re.M)}


def run_python(proxy: Proxy, name: str, python: str, expected: tuple[str, int, str | None], cwd: Path) -> None:
    surface, count, last_line = expected
    code = at(proxy, recipe(name).code)
    before = len(proxy.events())
    result = subprocess.run(
        [python, "-c", code],
        env=clean_env(NO_PROXY="*", **comment_env(code)),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    assert lines and all(line.strip() for line in lines), f"{name} printed an empty answer: {lines}"
    if last_line is not None:
        assert lines[-1] == last_line, lines
    events = proxy.wait_for_events(before, count)
    assert len(events) == count, [(e["route"], e["status"]) for e in events]
    for event in events:
        assert (event["api"], event["upstream"], event["decision"], event["status"]) == (
            surface,
            "deterministic",
            "fallback",
            200,
        ), event


@pytest.mark.parametrize("name", sorted(PYTHON))
def test_python_recipe_runs_against_the_proxy(name: str, proxy: Proxy, tmp_path: Path) -> None:
    run_python(proxy, name, sys.executable, PYTHON[name], tmp_path)


def test_the_ollama_env_recipe_needs_its_variable(proxy: Proxy, tmp_path: Path) -> None:
    """The recipe's OLLAMA_HOST is what steers it: pointed elsewhere, it fails (the check above can fail)."""
    code = at(proxy, recipe("ollama-env").code)
    host = comment_env(code)["OLLAMA_HOST"]
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(NO_PROXY="*", OLLAMA_HOST=unreachable),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert host.endswith(str(proxy.port)) and result.returncode != 0


# --------------------------------------------------------------------------- #
# Proxy configurations and client settings
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", sorted(PROXY_CONFIGS))
def test_proxy_config_loads_and_routes_the_clients_models(name: str) -> None:
    loaded = config.parse_config(yaml.safe_load(recipe(name).code), {}, lambda path: "")
    for surface, asked, sent in PROXY_CONFIGS[name]:
        candidates = routing.route(loaded.upstreams, asked, surface)
        assert candidates, f"{name}: no upstream speaks {surface}"
        assert candidates[0].model == sent, (name, asked)
        assert candidates[0].upstream.target is not None and candidates[0].upstream.target_error is None


def exports(code: str) -> dict[str, str]:
    out = {}
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            out[name] = value
    return out


def test_claude_code_variables() -> None:
    env = exports(recipe("claude-code-env").code)
    assert env["ANTHROPIC_BASE_URL"] == f"http://{DOC_ADDRESS}"  # the root: Claude Code adds /v1/messages
    assert env["ANTHROPIC_AUTH_TOKEN"] and env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    loaded = config.parse_config(yaml.safe_load(recipe("claude-code-ollama").code), {}, lambda path: "")
    for variable in ("ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL"):
        assert routing.route(loaded.upstreams, env[variable], "anthropic")[0].model == "qwen2.5-coder:7b"


def codex_config() -> dict[str, Any]:
    return tomllib.loads(recipe("codex-config").code)


def test_codex_config_points_at_the_proxy_over_responses() -> None:
    parsed = codex_config()
    provider = parsed["model_providers"][parsed["model_provider"]]
    assert provider["base_url"] == f"http://{DOC_ADDRESS}/v1"
    assert provider["wire_api"] == "responses"
    assert re.fullmatch(r"[A-Z_]+", provider["env_key"])
    assert parsed["analytics"] == {"enabled": False} and parsed["features"] == {"plugins": False}
    loaded = config.parse_config(yaml.safe_load(recipe("codex-proxy").code), {}, lambda path: "")
    assert routing.route(loaded.upstreams, parsed["model"], "responses")[0].model == "qwen2.5-coder:7b"


def codex_command() -> list[str]:
    """The ``... codex exec ...`` line shown after the TOML."""
    text = DOC.read_text()
    line = next(line for line in text.splitlines() if "codex exec" in line and "=" in line.split()[0])
    return shlex.split(line)


def test_codex_command_uses_the_configured_key_variable() -> None:
    words = codex_command()
    assert words[0].partition("=")[0] == codex_config()["model_providers"]["airgap"]["env_key"]
    assert words[1:3] == ["codex", "exec"]


def test_open_webui_snippet_points_ollama_at_the_proxy_and_turns_off_the_rest() -> None:
    (service,) = yaml.safe_load(recipe("open-webui").code)["services"].values()
    env = service["environment"]
    assert env["OLLAMA_BASE_URL"] == "http://airgap-proxy:8080"
    assert env["ENABLE_OPENAI_API"] == "false" and env["OFFLINE_MODE"] == "true" and env["HF_HUB_OFFLINE"] == "1"


# --------------------------------------------------------------------------- #
# Real clients: the CLIs and the heavier libraries (scripts/real-servers setup)
# --------------------------------------------------------------------------- #


def real_clients() -> dict[str, str]:
    ready = setup_dir() / "ready.env"
    wanted = ("REAL_CLAUDE", "REAL_CODEX", "REAL_CLIENTS_PYTHON")
    values = (
        dict(line.split("=", 1) for line in ready.read_text().splitlines() if "=" in line) if ready.is_file() else {}
    )
    missing = [w for w in wanted if not Path(values.get(w, "/nonexistent")).exists()]
    if missing:
        problem = f"{', '.join(missing)} not set up: run {SETUP_COMMAND}"
        if in_ci():
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)
    return values


class Recorder(http.server.ThreadingHTTPServer):
    """An HTTP(S) proxy on loopback that answers 403 to everything and records where clients wanted to go."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def refuse(self) -> None:
                recorder.seen.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_CONNECT = do_HEAD = refuse

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def via(recorder: Recorder) -> dict[str, str]:
    """Send whatever does not go to the proxy (on loopback) to the recorder."""
    names = {p: recorder.url for p in PROXY_VARIABLES[:3]} | {"NO_PROXY": "127.0.0.1,localhost"}
    return names | {k.lower(): v for k, v in names.items()}


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    return result, time.monotonic() - start


def assert_answered(proxy: Proxy, before: int, surface: str, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), result.stderr[-3000:]
    events = proxy.wait_for_events(before, 1)
    assert events and all(e["api"] == surface and e["status"] == 200 for e in events), events
    assert all(e["upstream"] == "deterministic" for e in events)


@pytest.mark.real
@pytest.mark.parametrize("models", ["recipe", "default"])
def test_claude_code_answers_through_the_proxy(models: str, proxy: Proxy, recorder: Recorder, tmp_path: Path) -> None:
    """With the recipe's models, and with Claude Code's default one (which sends a ``system`` turn)."""
    claude = real_clients()["REAL_CLAUDE"]
    variables = {k: at(proxy, v) for k, v in exports(recipe("claude-code-env").code).items()}
    if models == "default":
        del variables["ANTHROPIC_MODEL"], variables["ANTHROPIC_SMALL_FAST_MODEL"]
    before = len(proxy.events())
    result, took = run_cli(
        [claude, "-p", "hi"], {**clean_env(HOME=str(tmp_path), **variables), **via(recorder)}, tmp_path
    )
    assert_answered(proxy, before, "anthropic", result)
    assert recorder.seen == [], "Claude Code tried to reach other hosts"
    assert took < RUN_TIMEOUT_S


@pytest.mark.real
def test_codex_exec_answers_through_the_proxy(proxy: Proxy, recorder: Recorder, tmp_path: Path) -> None:
    codex = real_clients()["REAL_CODEX"]
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(at(proxy, recipe("codex-config").code))
    key, _, value = codex_command()[0].partition("=")
    env = clean_env(HOME=str(tmp_path), CODEX_HOME=str(home), **{key: value})
    before = len(proxy.events())
    result, _took = run_cli([codex, *codex_command()[2:]], {**env, **via(recorder)}, tmp_path)
    assert_answered(proxy, before, "responses", result)
    assert recorder.seen == [], "Codex tried to reach other hosts"


@pytest.mark.real
def test_codex_without_the_switches_tries_other_hosts(proxy: Proxy, recorder: Recorder, tmp_path: Path) -> None:
    """Why the recipe has ``[analytics]`` and ``[features]``, and proof that the recorder sees attempts."""
    codex = real_clients()["REAL_CODEX"]
    home = tmp_path / "codex-home"
    home.mkdir()
    bare = at(proxy, recipe("codex-config").code).split("# Codex reaches other hosts")[0]
    assert "analytics" not in bare and "wire_api" in bare
    (home / "config.toml").write_text(bare)
    key, _, value = codex_command()[0].partition("=")
    env = clean_env(HOME=str(tmp_path), CODEX_HOME=str(home), **{key: value})
    result, _took = run_cli([codex, *codex_command()[2:]], {**env, **via(recorder)}, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    hosts = {attempt.split()[1].rsplit(":", 1)[0] for attempt in recorder.seen if attempt.startswith("CONNECT ")}
    assert hosts & {"chatgpt.com", "ab.chatgpt.com", "github.com", "api.github.com"}, recorder.seen


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(REAL_PYTHON))
def test_library_recipe_runs_against_the_proxy(name: str, proxy: Proxy, tmp_path: Path) -> None:
    run_python(proxy, name, real_clients()["REAL_CLIENTS_PYTHON"], REAL_PYTHON[name], tmp_path)
