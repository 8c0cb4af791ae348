"""The command line: ``classify`` and ``check-config`` (exit codes 0/1/2).

Most tests call :func:`airgap_proxy.cli.main` in-process; a few run
``python -m airgap_proxy`` as a real subprocess to prove the entry point.
No test needs DNS: URLs are IP literals, ``localhost`` (on allow_hosts),
deny-listed names, or classified with ``--no-resolve``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from airgap_proxy import __version__, policy
from airgap_proxy.cli import main
from airgap_proxy.config import ConfigError, load_config

DATA = Path(__file__).parent / "data"
BROKEN_FILES = sorted(DATA.glob("broken_*.yaml"))
PREFIX = "airgap-proxy: config error: "
ENV_PREFIXES = ("LLM_", "AIRGAP_PROXY_", "AISOC_")

LOCAL_URLS = {
    "http://127.0.0.1:11434/v1": policy.REASON_ALLOW_NETWORK.format(host="127.0.0.1", addresses="127.0.0.1"),
    "http://localhost:8080/v1": policy.REASON_ALLOW_HOST.format(host="localhost", pattern="localhost"),
    "http://[::1]:8000/v1": policy.REASON_ALLOW_NETWORK.format(host="::1", addresses="::1"),
    "http://10.1.2.3/v1": policy.REASON_ALLOW_NETWORK.format(host="10.1.2.3", addresses="10.1.2.3"),
}
OPENAI_REASON = policy.REASON_DENY_HOST.format(host="api.openai.com", why=policy.HOSTED_API)


@pytest.fixture(autouse=True)
def clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's or CI's LLM / proxy settings."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # os.environ is already cleaned by the autouse fixture.
    return subprocess.run(
        [sys.executable, "-m", "airgap_proxy", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def line(verdict: str, url: str, reason: str) -> str:
    return f"{verdict:<8}  {url}  {reason}"


def assert_one_config_error(err: str, expected: str | None = None) -> None:
    assert err.endswith("\n")
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    assert "Traceback" not in err
    if expected is not None:
        assert lines[0] == PREFIX + expected


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- classify ---------------------------------------------------------------


@pytest.mark.parametrize("resolve", [pytest.param([], id="resolving"), pytest.param(["--no-resolve"], id="no-resolve")])
def test_classify_all_local_exits_0(capsys: pytest.CaptureFixture[str], resolve: list[str]) -> None:
    code, out, err = run(capsys, "classify", *resolve, *LOCAL_URLS)
    assert code == 0
    assert out.splitlines() == [line("local", url, reason) for url, reason in LOCAL_URLS.items()]
    assert err == ""


@pytest.mark.parametrize(
    ("url", "verdict", "reason"),
    [
        pytest.param("https://api.openai.com/v1", "external", OPENAI_REASON, id="hosted API"),
        pytest.param(
            "http://169.254.169.254/latest",
            "external",
            policy.REASON_DENY_NETWORK.format(
                address="169.254.169.254", host="169.254.169.254", network="169.254.169.254/32"
            ),
            id="metadata",
        ),
        pytest.param(
            "http://8.8.8.8/v1",
            "external",
            policy.REASON_NOT_ALLOWED.format(address="8.8.8.8", host="8.8.8.8"),
            id="public address",
        ),
        pytest.param(
            "http://ollama:11434/v1", "external", policy.REASON_UNRESOLVED.format(host="ollama"), id="name unresolved"
        ),
        pytest.param("ftp://127.0.0.1/", "invalid", None, id="bad scheme"),
        pytest.param("http://user@127.0.0.1/", "invalid", None, id="userinfo"),
        pytest.param("not a url", "invalid", None, id="garbage"),
    ],
)
def test_classify_any_non_local_exits_1(
    capsys: pytest.CaptureFixture[str], url: str, verdict: str, reason: str | None
) -> None:
    code, out, _ = run(capsys, "classify", "--no-resolve", "http://127.0.0.1:11434/v1", url)
    assert code == 1
    first, second = out.splitlines()
    assert first.startswith("local ")
    if reason is None:
        assert second.startswith(f"{verdict:<8}  {url}  invalid URL: ")
    else:
        assert second == line(verdict, url, reason)


def test_classify_is_not_fooled_by_local_looking_names(capsys: pytest.CaptureFixture[str]) -> None:
    urls = ["http://ollama.attacker.example/v1", "http://api.openai.com/ollama/v1"]
    code, out, _ = run(capsys, "classify", "--no-resolve", *urls)
    assert code == 1
    assert [text.split()[0] for text in out.splitlines()] == ["external", "external"]


def test_classify_json_prints_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    urls = [*LOCAL_URLS, "https://api.openai.com/v1", "ftp://x/"]
    code, out, _ = run(capsys, "classify", "--no-resolve", "--json", *urls)
    assert code == 1
    objects = [json.loads(text) for text in out.splitlines()]
    assert [o["url"] for o in objects] == urls
    assert [o["verdict"] for o in objects] == ["local"] * len(LOCAL_URLS) + ["external", "invalid"]
    assert [o["reason"] for o in objects[: len(LOCAL_URLS)]] == list(LOCAL_URLS.values())
    assert objects[-2]["reason"] == OPENAI_REASON
    assert all({"url", "verdict", "reason"} <= set(o) for o in objects)


def test_classify_json_all_local_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "classify", "--json", "http://127.0.0.1/")
    assert code == 0
    assert json.loads(out)["verdict"] == "local"


def test_classify_without_urls_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["classify"])
    assert info.value.code == 2
    _, err = capsys.readouterr()
    assert "usage: airgap-proxy classify" in err
    assert "URL" in err


def test_classify_takes_the_policy_from_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, "narrow.yaml", "version: 1\npolicy:\n  allow_networks: [10.0.0.0/8]\n")
    url = "http://192.168.1.5:8000/v1"
    assert run(capsys, "classify", url)[0] == 0
    code, out, _ = run(capsys, "classify", "--config", config, url)
    assert code == 1
    assert (
        out == line("external", url, policy.REASON_NOT_ALLOWED.format(address="192.168.1.5", host="192.168.1.5")) + "\n"
    )


@pytest.mark.parametrize("name", ["broken_bad_cidr.yaml", "broken_invalid_yaml_syntax.yaml"])
def test_classify_with_a_broken_config_exits_2(capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = str(DATA / name)
    code, out, err = run(capsys, "classify", "--config", path, "http://127.0.0.1/")
    assert code == 2
    assert out == ""
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert_one_config_error(err, str(info.value))


def test_classify_with_a_missing_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    code, out, err = run(capsys, "classify", "--config", missing, "http://127.0.0.1/")
    assert code == 2
    assert out == ""
    assert_one_config_error(err, f"config: file {missing!r} does not exist")


# --- check-config -----------------------------------------------------------


def test_check_config_with_nothing_set_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check-config")
    assert code == 0
    assert "airgapped: true" in out.splitlines()
    assert "upstreams: []" in out.splitlines()
    assert out.endswith("upstream verdicts:\n  (no upstream configured)\n")
    assert err == "config OK; mode: air-gapped (enforcing)\n"


def test_check_config_hosted_llm_base_url_air_gapped_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "https://api.openai.com/v1")
    code, out, err = run(capsys, "check-config")
    assert code == 1
    assert f"  default: external - {OPENAI_REASON}" in out.splitlines()
    assert err == "config loads, but an upstream is not local; mode: air-gapped (enforcing)\n"


def test_check_config_hosted_llm_base_url_report_only_exits_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "https://api.openai.com/v1")
    monkeypatch.setenv("AISOC_AIRGAPPED", "false")
    code, out, err = run(capsys, "check-config")
    assert code == 0
    # Still reported as external: report-only mode does not change the verdict.
    assert f"  default: external - {OPENAI_REASON}" in out.splitlines()
    assert err == "config OK; mode: report-only (NOT enforcing)\n"


def test_check_config_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "https://api.openai.com/v1")
    code, out, _ = run(capsys, "check-config", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["airgapped"] is True
    assert [u["name"] for u in report["upstreams"]] == ["default"]
    (verdict,) = report["verdicts"]
    assert verdict["upstream"] == "default"
    assert verdict["url"] == "https://api.openai.com/v1"
    assert verdict["verdict"] == "external"
    assert verdict["reason"] == OPENAI_REASON


def test_check_config_local_llm_base_url_exits_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    code, out, _ = run(capsys, "check-config", "--json")
    assert code == 0
    assert [v["verdict"] for v in json.loads(out)["verdicts"]] == ["local"]


def test_check_config_with_a_local_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(DATA / "valid_full.yaml")
    code, out, _ = run(capsys, "check-config", "--json", "--config", path)
    assert code == 0
    report = json.loads(out)
    assert report["source"] == path
    assert report["listen"] == {"host": "0.0.0.0", "port": 9090}
    assert [(v["upstream"], v["verdict"]) for v in report["verdicts"]] == [("ollama", "local"), ("vllm", "local")]


@pytest.mark.parametrize(("airgapped", "expected"), [("true", 1), ("false", 0), ("", 1)])
def test_check_config_with_an_external_upstream_in_the_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, airgapped: str, expected: int
) -> None:
    monkeypatch.setenv("AISOC_AIRGAPPED", airgapped)
    code, out, _ = run(capsys, "check-config", "--config", str(DATA / "valid_external_upstream.yaml"))
    assert code == expected
    assert f"  openai: external - {OPENAI_REASON}" in out.splitlines()


def test_check_config_reads_airgap_proxy_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(DATA / "valid_full.yaml")
    monkeypatch.setenv("AIRGAP_PROXY_CONFIG", path)
    code, out, _ = run(capsys, "check-config", "--json")
    assert code == 0
    assert json.loads(out)["source"] == path


def test_check_config_config_flag_wins_over_airgap_proxy_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRGAP_PROXY_CONFIG", str(DATA / "broken_wrong_version.yaml"))
    code, _, _ = run(capsys, "check-config", "--config", str(DATA / "valid_empty.yaml"))
    assert code == 0


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda p: p.name)
def test_check_config_broken_file_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    code, out, err = run(capsys, "check-config", "--config", str(path))
    assert code == 2
    assert out == ""
    assert_one_config_error(err, str(info.value))


def test_check_config_broken_file_from_airgap_proxy_config_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRGAP_PROXY_CONFIG", str(DATA / "broken_wrong_version.yaml"))
    code, out, err = run(capsys, "check-config")
    assert code == 2
    assert out == ""
    assert_one_config_error(err, "version: unsupported version 2 (expected 1)")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AISOC_AIRGAPPED", "maybe", "AISOC_AIRGAPPED: expected true or false, got 'maybe'"),
        ("AIRGAP_PROXY_PORT", "http", "AIRGAP_PROXY_PORT: expected a port number 0-65535, got 'http'"),
        ("LLM_BASE_URL", "ollama:11434", "LLM_BASE_URL: not a URL (did you mean http://ollama:11434?)"),
    ],
)
def test_check_config_bad_environment_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "check-config")
    assert code == 2
    assert out == ""
    assert_one_config_error(err, expected)


SECRETS = {
    "LLM_API_KEY": "sk-LLMKEY-8e2c5a7f1d",
    "AIRGAP_PROXY_ADMIN_TOKEN": "ADMIN-TOKEN-3b9d6f0a4c",
    "AIRGAP_PROXY_SECRET_KEY": "MASTER-KEY-7c1e4a9d2f",
    "inline": "sk-INLINE-5f0b8d3e6a",
    "file": "sk-KEYFILE-1d6a9c4f7b",
    "userinfo": "PASSWORD-9a4f2c7e0d",
}


@pytest.mark.parametrize("as_json", [pytest.param([], id="text"), pytest.param(["--json"], id="json")])
def test_check_config_never_prints_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, as_json: list[str]
) -> None:
    key_file = write(tmp_path, "key", SECRETS["file"] + "\n")
    config = write(
        tmp_path,
        "secrets.yaml",
        f"""version: 1
upstreams:
  - name: inline
    base_url: http://127.0.0.1:8001/v1
    api_key: {SECRETS["inline"]}
  - name: file
    base_url: http://127.0.0.1:8002/v1
    api_key_file: {key_file}
  - name: userinfo
    base_url: http://user:{SECRETS["userinfo"]}@127.0.0.1:8003/v1
""",
    )
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    for name in ("LLM_API_KEY", "AIRGAP_PROXY_ADMIN_TOKEN", "AIRGAP_PROXY_SECRET_KEY"):
        monkeypatch.setenv(name, SECRETS[name])
    code, out, err = run(capsys, "check-config", "--config", config, *as_json)
    assert code == 1  # the upstream with userinfo is invalid
    for secret in SECRETS.values():
        assert secret not in out
        assert secret not in err
    assert "***" in out
    # The keys were loaded, so the test is not vacuous.
    loaded = load_config(config, dict(os.environ))
    assert [u.api_key for u in loaded.upstreams][:3] == [SECRETS["LLM_API_KEY"], SECRETS["inline"], SECRETS["file"]]


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_key_in_a_base_url_query_is_exit_2_and_never_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    key = "sk-QUERY-6d2a8f0c4e"
    config = write(
        tmp_path,
        "query.yaml",
        f"""version: 1
upstreams:
  - name: keyed
    base_url: http://127.0.0.1:8001/v1?api_key={key}
""",
    )
    code, out, err = run(capsys, command, "--config", config)
    assert code == 2
    assert key not in out + err
    assert_one_config_error(err)
    assert "upstreams[0].base_url: http://127.0.0.1:8001/v1?*** has a query string or fragment" in err


def test_check_config_short_admin_token_error_does_not_print_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRGAP_PROXY_ADMIN_TOKEN", "Sh0rt-Secret")
    code, out, err = run(capsys, "check-config")
    assert code == 2
    assert "Sh0rt-Secret" not in out + err
    assert_one_config_error(err, "AIRGAP_PROXY_ADMIN_TOKEN: admin token must be at least 16 characters")


# --- the program ------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"airgap-proxy {__version__}\n"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("usage: airgap-proxy")
    for command in ("serve", "classify", "check-config"):
        assert command in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_points_at_main() -> None:
    (script,) = entry_points(group="console_scripts", name="airgap-proxy")
    assert script.value == "airgap_proxy.cli:main"
    assert script.load() is main


# --- real subprocesses --------------------------------------------------------


def test_subprocess_classify_local_and_external() -> None:
    local = run_subprocess("classify", "--no-resolve", *LOCAL_URLS)
    assert local.returncode == 0, local.stderr
    assert local.stdout.splitlines() == [line("local", url, reason) for url, reason in LOCAL_URLS.items()]
    external = run_subprocess("classify", "--json", "http://127.0.0.1/", "https://api.openai.com/v1")
    assert external.returncode == 1, external.stderr
    verdicts = [json.loads(text)["verdict"] for text in external.stdout.splitlines()]
    assert verdicts == ["local", "external"]


def test_subprocess_classify_without_urls_exits_2() -> None:
    result = run_subprocess("classify")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: airgap-proxy classify" in result.stderr


def test_subprocess_check_config_broken_file_exits_2_without_traceback() -> None:
    path = str(DATA / "broken_invalid_yaml_syntax.yaml")
    result = run_subprocess("check-config", "--config", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_config_error(result.stderr)
    assert result.stderr.startswith(f"{PREFIX}{path}: invalid YAML at line 4")


def test_subprocess_check_config_air_gapped_and_report_only() -> None:
    env = {"LLM_BASE_URL": "https://api.openai.com/v1", "LLM_API_KEY": SECRETS["LLM_API_KEY"]}
    enforcing = run_subprocess("check-config", env=env)
    assert enforcing.returncode == 1, enforcing.stderr
    report_only = run_subprocess("check-config", "--json", env={**env, "AISOC_AIRGAPPED": "false"})
    assert report_only.returncode == 0, report_only.stderr
    assert json.loads(report_only.stdout)["verdicts"][0]["verdict"] == "external"
    for result in (enforcing, report_only):
        assert SECRETS["LLM_API_KEY"] not in result.stdout + result.stderr


def test_subprocess_version() -> None:
    result = run_subprocess("--version")
    assert result.returncode == 0
    assert result.stdout == f"airgap-proxy {__version__}\n"
