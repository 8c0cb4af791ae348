"""Configuration: YAML + environment -> frozen Config (DESIGN.md section 2).

``parse_config`` is pure, so most tests hand it a dict, an env mapping and a
fake file reader. ``load_config`` is exercised with the files in tests/data
(one ``broken_*.yaml`` per mistake) and the shipped example config.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airgap_proxy import policy
from airgap_proxy.config import (
    APIS,
    REDACTED,
    Config,
    ConfigError,
    FallbackMode,
    LogFormat,
    ProviderType,
    load_config,
    parse_config,
)
from airgap_proxy.fallback.limits import Limits

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parent.parent / "config" / "airgap-proxy.yaml"
LOCAL_URL = "http://127.0.0.1:11434/v1"


def no_files(path: str) -> str:
    raise FileNotFoundError(path)


def fake_files(files: Mapping[str, str]) -> Callable[[str], str]:
    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    return read


def parse(
    raw: object = None, env: Mapping[str, str] | None = None, read_file: Callable[[str], str] = no_files
) -> Config:
    return parse_config(raw, env or {}, read_file)


def parse_error(
    raw: object = None, env: Mapping[str, str] | None = None, read_file: Callable[[str], str] = no_files
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(raw, env, read_file)
    return info.value


def upstream(**fields: Any) -> dict[str, Any]:
    return {"name": "ollama", "base_url": LOCAL_URL, **fields}


# --- defaults ---------------------------------------------------------------


def test_no_file_and_no_env_gives_the_documented_defaults() -> None:
    config = parse_config(None, {}, no_files)
    assert config.airgapped is True
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert config.upstreams == ()
    assert config.default_model is None
    assert config.admin.token is None
    assert config.secret_key is None
    assert config.fallback.mode is FallbackMode.DETERMINISTIC
    assert config.logging.format is LogFormat.AUTO
    assert config.logging.level == "info"
    assert config.limits.max_body_bytes == 10 * 1024 * 1024
    assert (config.fallback.max_cpu_ms, config.fallback.max_choices) == (1000, 8)
    assert config.fallback.limits == Limits(max_choices=8, max_embedding_values=1 << 20, max_answer_bytes=32 << 20)
    assert (config.timeouts.connect_s, config.timeouts.upstream_s) == (5.0, 300.0)
    assert config.source is None
    assert [p.pattern for p in config.rules.allow_hosts] == ["localhost", "*.svc.cluster.local"]


def test_empty_mapping_is_the_same_as_no_file() -> None:
    assert parse({}) == parse(None) == Config()


def test_default_allow_networks_are_the_documented_list() -> None:
    expected = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    assert [str(n) for n in parse().rules.allow_networks] == expected


@pytest.mark.parametrize(
    "excluded",
    [
        pytest.param("169.254.0.0/16", id="IPv4 link-local (cloud metadata)"),
        pytest.param("fe80::/10", id="IPv6 link-local"),
        pytest.param("0.0.0.0/8", id="this network"),
        pytest.param("100.64.0.0/10", id="carrier-grade NAT"),
    ],
)
def test_default_allow_networks_exclude_non_local_ranges(excluded: str) -> None:
    excluded_net = ipaddress.ip_network(excluded)
    for network in parse().rules.allow_networks:
        assert network.version != excluded_net.version or not network.overlaps(excluded_net), network


def test_default_deny_networks_are_the_builtin_metadata_addresses() -> None:
    assert [str(n) for n in parse().rules.deny_networks] == [
        str(ipaddress.ip_network(n)) for n in policy.BUILTIN_DENY_NETWORKS
    ]


def test_parse_config_does_not_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BASE_URL", LOCAL_URL)
    monkeypatch.setenv("AISOC_AIRGAPPED", "false")
    monkeypatch.setenv("AIRGAP_PROXY_PORT", "9999")
    config = parse(None, {})
    assert config.upstreams == ()
    assert config.airgapped is True
    assert config.listen.port == 8080


def test_key_files_are_read_only_through_the_injected_reader() -> None:
    # The path exists on disk; the fake reader's answer must win.
    path = str(Path(__file__))
    config = parse({"upstreams": [upstream(api_key_file=path)]}, read_file=fake_files({path: "fake-key\n"}))
    assert config.upstreams[0].api_key == "fake-key"


# --- environment variables --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "in_file", "expected"),
    [
        pytest.param("true", False, True, id="true"),
        pytest.param("TRUE", False, True, id="upper case"),
        pytest.param("1", False, True, id="1"),
        pytest.param("yes", False, True, id="yes"),
        pytest.param("on", False, True, id="on"),
        pytest.param(" false ", True, False, id="false with spaces"),
        pytest.param("0", True, False, id="0"),
        pytest.param("no", True, False, id="no"),
        pytest.param("off", True, False, id="off"),
        pytest.param("", True, True, id="empty keeps the file's true"),
        pytest.param("", False, False, id="empty keeps the file's false"),
        pytest.param("  ", False, False, id="blank keeps the file's false"),
    ],
)
def test_aisoc_airgapped_overrides_the_file(value: str, in_file: bool, expected: bool) -> None:
    assert parse({"airgapped": in_file}, {"AISOC_AIRGAPPED": value}).airgapped is expected


def test_aisoc_airgapped_empty_without_file_fails_closed() -> None:
    assert parse(None, {"AISOC_AIRGAPPED": ""}).airgapped is True


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "tru"])
def test_aisoc_airgapped_invalid_value_is_an_error_naming_the_variable(value: str) -> None:
    error = parse_error(None, {"AISOC_AIRGAPPED": value})
    assert error.path == "AISOC_AIRGAPPED"
    assert repr(value) in error.message
    assert str(error).startswith("AISOC_AIRGAPPED: ")


def test_llm_base_url_creates_an_upstream_named_default() -> None:
    config = parse(None, {"LLM_BASE_URL": LOCAL_URL})
    (default,) = config.upstreams
    assert default.name == "default"
    assert default.provider_type is ProviderType.LOCAL_OPENAI_COMPATIBLE
    assert default.base_url == LOCAL_URL
    assert default.target is not None
    assert (default.target.host, default.target.port, default.target.path) == ("127.0.0.1", 11434, "/v1")
    assert default.api_key is None
    assert default.api_key_source == "none"
    assert (default.models, default.aliases, default.priority) == ((), (), 0)


def test_llm_base_url_blank_adds_no_upstream() -> None:
    assert parse(None, {"LLM_BASE_URL": "  "}).upstreams == ()


def test_llm_base_url_goes_first_with_the_lowest_priority() -> None:
    raw = {"upstreams": [upstream(name="a", priority=5), upstream(name="b", priority=3)]}
    config = parse(raw, {"LLM_BASE_URL": LOCAL_URL})
    assert [u.name for u in config.upstreams] == ["default", "a", "b"]
    assert config.upstreams[0].priority == 3


def test_llm_base_url_that_is_not_a_url_is_an_error() -> None:
    error = parse_error(None, {"LLM_BASE_URL": "ollama:11434/v1"})
    assert error.path == "LLM_BASE_URL"
    assert error.message == "not a URL (did you mean http://ollama:11434/v1?)"


def test_llm_base_url_the_policy_rejects_loads_as_an_invalid_target() -> None:
    (default,) = parse(None, {"LLM_BASE_URL": "ftp://127.0.0.1/v1"}).upstreams
    assert default.target is None
    assert default.target_error is not None
    assert "ftp" in default.target_error


def test_llm_api_key_is_sent_to_the_default_upstream() -> None:
    (default,) = parse(None, {"LLM_BASE_URL": LOCAL_URL, "LLM_API_KEY": "sk-local"}).upstreams
    assert default.api_key == "sk-local"
    assert default.api_key_source == "env LLM_API_KEY"


def test_llm_api_key_empty_means_no_key() -> None:
    (default,) = parse(None, {"LLM_BASE_URL": LOCAL_URL, "LLM_API_KEY": ""}).upstreams
    assert default.api_key is None


def test_llm_api_key_without_base_url_creates_no_upstream() -> None:
    assert parse(None, {"LLM_API_KEY": "sk-local"}).upstreams == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("qwen2.5:7b", "qwen2.5:7b", id="overrides the file"),
        pytest.param("  qwen2.5:7b\n", "qwen2.5:7b", id="stripped"),
        pytest.param("", "llama3", id="empty keeps the file's"),
    ],
)
def test_llm_model_overrides_default_model(value: str, expected: str) -> None:
    assert parse({"default_model": "llama3"}, {"LLM_MODEL": value}).default_model == expected


def test_llm_model_without_file() -> None:
    assert parse(None, {"LLM_MODEL": "llama3"}).default_model == "llama3"


@pytest.mark.parametrize("value", [p.value for p in ProviderType])
def test_llm_provider_type_sets_the_default_upstream_type(value: str) -> None:
    (default,) = parse(None, {"LLM_BASE_URL": LOCAL_URL, "LLM_PROVIDER_TYPE": value}).upstreams
    assert default.provider_type is ProviderType(value)


def test_hosted_provider_types_are_flagged() -> None:
    assert ProviderType.OPENAI.is_hosted
    assert not ProviderType.LOCAL_OLLAMA.is_hosted


def test_llm_provider_type_unknown_is_an_error() -> None:
    error = parse_error(None, {"LLM_BASE_URL": LOCAL_URL, "LLM_PROVIDER_TYPE": "ollama"})
    assert error.path == "LLM_PROVIDER_TYPE"
    assert "unknown provider type 'ollama'" in error.message
    assert "local-ollama" in error.message


def test_listen_host_and_port_from_env_override_the_file() -> None:
    raw = {"listen": {"host": "10.0.0.1", "port": 9000}}
    config = parse(raw, {"AIRGAP_PROXY_HOST": "0.0.0.0", "AIRGAP_PROXY_PORT": " 8443 "})
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8443)


def test_listen_from_the_file() -> None:
    config = parse({"listen": {"host": "0.0.0.0", "port": 9000}})
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 9000)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("http", id="word"),
        pytest.param("70000", id="too large"),
        pytest.param("65536", id="just too large"),
        pytest.param("-1", id="negative"),
        pytest.param("8080x", id="trailing junk"),
        pytest.param("80.5", id="fraction"),
        pytest.param("²", id="superscript digit int() rejects"),
        pytest.param("٣", id="non-ASCII digit"),
    ],
)
def test_airgap_proxy_port_invalid_is_an_error_naming_the_variable(value: str) -> None:
    error = parse_error(None, {"AIRGAP_PROXY_PORT": value})
    assert error.path == "AIRGAP_PROXY_PORT"
    assert "expected a port number 0-65535" in error.message


def test_admin_token_from_env_enables_the_admin_api() -> None:
    token = "admin-token-0123456789"
    config = parse(None, {"AIRGAP_PROXY_ADMIN_TOKEN": token})
    assert config.admin.token == token
    assert config.redacted()["admin"] == {"enabled": True, "token": REDACTED}


def test_admin_token_empty_leaves_the_admin_api_off() -> None:
    config = parse(None, {"AIRGAP_PROXY_ADMIN_TOKEN": ""})
    assert config.admin.token is None
    assert config.redacted()["admin"] == {"enabled": False, "token": None}


def test_admin_token_shorter_than_16_characters_is_an_error() -> None:
    error = parse_error(None, {"AIRGAP_PROXY_ADMIN_TOKEN": "short-Tok3n"})
    assert error.path == "AIRGAP_PROXY_ADMIN_TOKEN"
    assert "at least 16 characters" in error.message
    assert "short-Tok3n" not in str(error)


def test_admin_token_env_names_another_variable() -> None:
    token = "custom-admin-token-0123"
    env = {"MY_ADMIN_TOKEN": token, "AIRGAP_PROXY_ADMIN_TOKEN": "ignored-admin-token-0123"}
    config = parse({"admin": {"token_env": "MY_ADMIN_TOKEN"}}, env)
    assert config.admin.token == token
    assert config.admin.token_env == "MY_ADMIN_TOKEN"


def test_admin_token_file_is_read_when_the_variable_is_unset() -> None:
    files = fake_files({"/run/secrets/admin": "file-admin-token-0123\n"})
    config = parse({"admin": {"token_file": "/run/secrets/admin"}}, {}, files)
    assert config.admin.token == "file-admin-token-0123"


def test_admin_token_variable_wins_over_the_file() -> None:
    files = fake_files({"/run/secrets/admin": "file-admin-token-0123"})
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": "env-admin-token-01234"}
    assert parse({"admin": {"token_file": "/run/secrets/admin"}}, env, files).admin.token == "env-admin-token-01234"


def test_admin_token_file_missing_is_an_error() -> None:
    error = parse_error({"admin": {"token_file": "/run/secrets/admin"}})
    assert error.path == "admin.token_file"
    assert error.message == "file '/run/secrets/admin' does not exist"


def test_admin_token_file_too_short_names_the_file_key() -> None:
    files = fake_files({"/run/secrets/admin": "short"})
    error = parse_error({"admin": {"token_file": "/run/secrets/admin"}}, {}, files)
    assert error.path == "admin.token_file"


def test_secret_key_from_env() -> None:
    assert parse(None, {"AIRGAP_PROXY_SECRET_KEY": "k" * 32}).secret_key == "k" * 32
    assert parse(None, {"AIRGAP_PROXY_SECRET_KEY": ""}).secret_key is None


def test_airgap_proxy_config_names_the_file_load_config_reads() -> None:
    path = str(DATA / "valid_full.yaml")
    config = load_config(None, {"AIRGAP_PROXY_CONFIG": path})
    assert config.source == path
    assert config.listen.port == 9090


def test_explicit_path_wins_over_airgap_proxy_config() -> None:
    explicit = str(DATA / "valid_empty.yaml")
    config = load_config(explicit, {"AIRGAP_PROXY_CONFIG": str(DATA / "broken_wrong_version.yaml")})
    assert config.source == explicit


def test_airgap_proxy_config_empty_means_no_file() -> None:
    assert load_config(None, {"AIRGAP_PROXY_CONFIG": ""}) == Config()


def test_airgap_proxy_config_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(None, {"AIRGAP_PROXY_CONFIG": missing})
    assert info.value.path == "config"
    assert missing in info.value.message


def test_env_applies_on_top_of_a_loaded_file() -> None:
    env = {"AISOC_AIRGAPPED": "true", "AIRGAP_PROXY_PORT": "1234", "LLM_MODEL": "m"}
    config = load_config(str(DATA / "valid_full.yaml"), env)
    assert (config.airgapped, config.listen.port, config.default_model) == (True, 1234, "m")


# --- LLM_BASE_URL and a file upstream named "default" --------------------------

FILE_DEFAULT = {
    "upstreams": [
        {
            "name": "other",
            "base_url": "http://10.0.0.2/v1",
            "priority": 1,
        },
        {
            "name": "default",
            "provider_type": "local-vllm",
            "base_url": "http://10.0.0.1:8000/v1",
            "api_key": "file-key",
            "models": ["llama3*"],
            "aliases": {"fast": "llama3.2:1b"},
            "priority": 5,
        },
    ]
}


def test_llm_base_url_replaces_the_url_of_a_file_upstream_named_default() -> None:
    config = parse(FILE_DEFAULT, {"LLM_BASE_URL": LOCAL_URL})
    assert [u.name for u in config.upstreams] == ["default", "other"]
    default = config.upstreams[0]
    assert default.base_url == LOCAL_URL
    assert default.target is not None
    assert default.target.host == "127.0.0.1"
    # Everything else comes from the file.
    assert default.provider_type is ProviderType.LOCAL_VLLM
    assert default.api_key == "file-key"
    assert default.api_key_source == "inline"
    assert default.models == ("llama3*",)
    assert default.aliases == (("fast", "llama3.2:1b"),)
    assert default.priority == 5


def test_llm_api_key_and_provider_type_replace_the_file_default_upstreams() -> None:
    env = {"LLM_BASE_URL": LOCAL_URL, "LLM_API_KEY": "env-key", "LLM_PROVIDER_TYPE": "local-ollama"}
    default = parse(FILE_DEFAULT, env).upstreams[0]
    assert default.api_key == "env-key"
    assert default.api_key_source == "env LLM_API_KEY"
    assert default.provider_type is ProviderType.LOCAL_OLLAMA


def test_empty_llm_provider_type_keeps_the_file_default_upstreams_type() -> None:
    # An empty variable means unset, as for every other variable.
    default = parse(FILE_DEFAULT, {"LLM_BASE_URL": LOCAL_URL, "LLM_PROVIDER_TYPE": ""}).upstreams[0]
    assert default.provider_type is ProviderType.LOCAL_VLLM


def test_file_default_upstream_is_untouched_without_llm_base_url() -> None:
    config = parse(FILE_DEFAULT, {"LLM_API_KEY": "env-key"})
    assert [u.name for u in config.upstreams] == ["other", "default"]
    assert config.upstreams[1].api_key == "file-key"


# --- upstream keys ----------------------------------------------------------


def test_api_key_inline() -> None:
    (up,) = parse({"upstreams": [upstream(api_key="sk-inline")]}).upstreams
    assert (up.api_key, up.api_key_source) == ("sk-inline", "inline")


def test_api_key_env_set() -> None:
    (up,) = parse({"upstreams": [upstream(api_key_env="OLLAMA_KEY")]}, {"OLLAMA_KEY": "sk-env"}).upstreams
    assert (up.api_key, up.api_key_source) == ("sk-env", "env OLLAMA_KEY")


def test_api_key_env_unset_means_no_key() -> None:
    (up,) = parse({"upstreams": [upstream(api_key_env="OLLAMA_KEY")]}).upstreams
    assert (up.api_key, up.api_key_source) == (None, "env OLLAMA_KEY (not set)")


def test_api_key_file_is_read_and_stripped() -> None:
    files = fake_files({"/run/secrets/key": "sk-file\n"})
    (up,) = parse({"upstreams": [upstream(api_key_file="/run/secrets/key")]}, {}, files).upstreams
    assert (up.api_key, up.api_key_source) == ("sk-file", "file /run/secrets/key")


def test_api_key_file_empty_means_no_key() -> None:
    files = fake_files({"/run/secrets/key": "\n"})
    (up,) = parse({"upstreams": [upstream(api_key_file="/run/secrets/key")]}, {}, files).upstreams
    assert up.api_key is None


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        pytest.param({"api_key": "k", "api_key_env": "E"}, "upstreams[0].api_key_env", id="inline and env"),
        pytest.param({"api_key": "k", "api_key_file": "/f"}, "upstreams[0].api_key_file", id="inline and file"),
        pytest.param({"api_key_env": "E", "api_key_file": "/f"}, "upstreams[0].api_key_file", id="env and file"),
        pytest.param({"api_key": "k", "api_key_env": "E", "api_key_file": "/f"}, "upstreams[0].api_key_env", id="all"),
    ],
)
def test_two_key_sources_at_once_is_an_error(keys: dict[str, str], path: str) -> None:
    error = parse_error({"upstreams": [upstream(**keys)]}, {"E": "x"}, fake_files({"/f": "x"}))
    assert error.path == path
    assert error.message == "give only one of api_key, api_key_env, api_key_file"


def test_api_key_file_missing_is_an_error_naming_the_key_path() -> None:
    raw = {"upstreams": [upstream(), upstream(name="vllm", api_key_file="/run/secrets/key")]}
    error = parse_error(raw)
    assert error.path == "upstreams[1].api_key_file"
    assert error.message == "file '/run/secrets/key' does not exist"


def test_api_key_file_unreadable_is_an_error() -> None:
    def denied(path: str) -> str:
        raise PermissionError(path)

    error = parse_error({"upstreams": [upstream(api_key_file="/run/secrets/key")]}, {}, denied)
    assert error.path == "upstreams[0].api_key_file"
    assert error.message == "cannot read file '/run/secrets/key': PermissionError"


def test_upstream_fields_from_the_file() -> None:
    raw = {
        "upstreams": [
            upstream(provider_type="local-llamacpp", models=["a", "b*"], aliases={"x": "a"}, priority=-1),
        ]
    }
    (up,) = parse(raw).upstreams
    assert up.provider_type is ProviderType.LOCAL_LLAMACPP
    assert (up.models, up.aliases, up.priority) == (("a", "b*"), (("x", "a"),), -1)


def test_upstream_provider_type_defaults_to_openai_compatible() -> None:
    assert parse({"upstreams": [upstream()]}).upstreams[0].provider_type is ProviderType.LOCAL_OPENAI_COMPATIBLE


def test_upstream_base_url_the_policy_rejects_loads_with_its_reason() -> None:
    (up,) = parse({"upstreams": [upstream(base_url="http://user@127.0.0.1/v1")]}).upstreams
    assert up.target is None
    assert up.target_error is not None
    assert "userinfo" in up.target_error


def test_errors_in_later_upstreams_name_their_index() -> None:
    raw = {"upstreams": [upstream(), upstream(name="b", priority="high")]}
    error = parse_error(raw)
    assert (error.path, error.message) == ("upstreams[1].priority", "expected an integer, got a string")


# --- policy -----------------------------------------------------------------


def test_deny_networks_are_added_to_the_builtin_list() -> None:
    rules = parse({"policy": {"deny_networks": ["192.168.1.0/24", "fd00:ec2::254/128"]}}).rules
    builtin = [ipaddress.ip_network(n) for n in policy.BUILTIN_DENY_NETWORKS]
    assert list(rules.deny_networks) == [*builtin, ipaddress.ip_network("192.168.1.0/24")]


def test_empty_deny_networks_keeps_the_builtin_list() -> None:
    assert parse({"policy": {"deny_networks": []}}).rules.deny_networks == parse().rules.deny_networks


def test_metadata_stays_denied_when_link_local_is_allowed() -> None:
    rules = parse({"policy": {"allow_networks": ["169.254.0.0/16"], "deny_networks": []}}).rules
    decision = policy.classify("http://169.254.169.254/latest/meta-data", rules)
    assert decision.verdict is policy.Verdict.EXTERNAL
    assert decision.rule is policy.Rule.DENY_NETWORK
    assert policy.classify("http://169.254.1.1/", rules).is_local


def test_allow_networks_replace_the_defaults() -> None:
    rules = parse({"policy": {"allow_networks": ["10.0.0.0/8", "FD00::/8"]}}).rules
    assert rules.allow_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("hosts", "index", "fragment"),
    [
        pytest.param(["*"], 0, "bare '*'", id="bare wildcard"),
        pytest.param(["localhost", "*."], 1, "bare '*'", id="wildcard dot"),
        pytest.param(["10.0.0.5"], 0, "IP addresses belong in allow_networks", id="IPv4 literal"),
        pytest.param(["2130706433"], 0, "IP addresses belong in allow_networks", id="decimal IPv4 literal"),
        pytest.param(["api.openai.com"], 0, "api.openai.com is on the deny list (hosted LLM API)", id="deny-listed"),
        pytest.param(["API.OpenAI.com."], 0, "api.openai.com is on the deny list", id="deny-listed, unnormalised"),
        pytest.param(["*.openai.com"], 0, "is on the deny list", id="deny-listed wildcard"),
        pytest.param(["my.openai.azure.com"], 0, "is on the deny list", id="under a deny-listed wildcard"),
        pytest.param(["instance-data"], 0, "(cloud metadata service)", id="metadata name"),
        pytest.param(["ll*m.corp"], 0, "'*' must be a whole label", id="partial wildcard"),
        pytest.param([""], 0, "non-empty", id="empty"),
        pytest.param([7], 0, "expected a host name, got an integer", id="not a string"),
    ],
)
def test_allow_hosts_validation(hosts: list[object], index: int, fragment: str) -> None:
    error = parse_error({"policy": {"allow_hosts": hosts}})
    assert error.path == f"policy.allow_hosts[{index}]"
    assert fragment in error.message


def test_allow_host_on_the_configured_deny_hosts_is_an_error() -> None:
    error = parse_error({"policy": {"allow_hosts": ["llm.corp.example"], "deny_hosts": ["llm.corp.example"]}})
    assert error.path == "policy.allow_hosts[0]"
    assert "deny list" in error.message


def test_host_patterns_are_normalised() -> None:
    rules = parse(
        {"policy": {"allow_hosts": ["Models.Corp.Example.", "*.LLM.internal"], "deny_hosts": ["Bad.Ex"]}}
    ).rules
    assert [p.pattern for p in rules.allow_hosts] == ["models.corp.example", "*.llm.internal"]
    assert rules.deny_hosts[-1] == policy.HostPattern("bad.ex", "deny_hosts")
    assert len(rules.deny_hosts) == len(policy.BUILTIN_DENY_HOSTS) + 1


# --- shape errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        pytest.param({"listen": 8080}, "listen", "expected a mapping, got an integer", id="section not a mapping"),
        pytest.param({1: "x"}, "(top level)", "key 1 is not a string", id="non-string key"),
        pytest.param("version: 1", "(top level)", "expected a mapping, got a string", id="top level string"),
        pytest.param({"version": True}, "version", "expected an integer, got a boolean", id="boolean version"),
        pytest.param({"airgapped": 1}, "airgapped", "expected true or false, got an integer", id="airgapped 1"),
        pytest.param({"listen": {"port": True}}, "listen.port", "expected an integer, got a boolean", id="bool port"),
        pytest.param({"listen": {"port": -1}}, "listen.port", "expected a port number 0-65535, got -1", id="port -1"),
        pytest.param(
            {"policy": {"allow_networks": "10.0.0.0/8"}},
            "policy.allow_networks",
            "expected a list",
            id="networks not a list",
        ),
        pytest.param(
            {"policy": {"deny_networks": [10]}},
            "policy.deny_networks[0]",
            "expected a CIDR string, got an integer",
            id="network not a string",
        ),
        pytest.param(
            {"health": {"timeout_s": 0}}, "health.timeout_s", "must be greater than 0, got 0.0", id="zero timeout"
        ),
        pytest.param(
            {"health": {"interval_s": float("nan")}}, "health.interval_s", "must be greater than 0", id="NaN interval"
        ),
        pytest.param(
            {"timeouts": {"upstream_s": -5}},
            "timeouts.upstream_s",
            "must be greater than 0",
            id="negative upstream timeout",
        ),
        pytest.param(
            {"limits": {"max_body_bytes": 2**31}}, "limits.max_body_bytes", "must be between", id="body limit too large"
        ),
        pytest.param(
            {"fallback": {"max_cpu_ms": 0}}, "fallback.max_cpu_ms", "must be between 1 and 600000", id="no CPU budget"
        ),
        pytest.param(
            {"fallback": {"max_choices": 129}},
            "fallback.max_choices",
            "must be between 1 and 128",
            id="too many choices",
        ),
        pytest.param(
            {"fallback": {"max_embedding_values": True}},
            "fallback.max_embedding_values",
            "expected an integer, got a boolean",
            id="embedding limit a boolean",
        ),
        pytest.param(
            {"fallback": {"max_answer_bytes": 100}}, "fallback.max_answer_bytes", "must be between", id="tiny answers"
        ),
        pytest.param({"tenants": {"store": 5}}, "tenants.store", "expected a string", id="store not a string"),
        pytest.param(
            {"tenants": {"path": "x"}},
            "tenants.path",
            "unknown key (known keys here: max_stale_s, pool_size, previous_secret_keys_file, refresh_s, "
            "secret_key_file, store, store_url_env, timeout_s)",
            id="unknown tenants key",
        ),
        pytest.param({"policy": {"allow_network": []}}, "policy.allow_network", "unknown key", id="unknown policy key"),
        pytest.param(
            {"upstreams": [upstream(name="a b")]},
            "upstreams[0].name",
            "is not a valid upstream name",
            id="bad upstream name",
        ),
        pytest.param(
            {"upstreams": ["ollama"]}, "upstreams[0]", "expected a mapping, got a string", id="upstream not a mapping"
        ),
        pytest.param(
            {"upstreams": [upstream(aliases={"fast": 1})]},
            "upstreams[0].aliases",
            "expected a mapping of alias name to model name",
            id="alias target not a string",
        ),
    ],
)
def test_shape_errors(raw: object, path: str, message: str) -> None:
    error = parse_error(raw)
    assert error.path == path
    assert message in error.message
    assert str(error) == f"{error.path}: {error.message}"


# --- secrets ----------------------------------------------------------------

SECRETS = {
    "inline": "sk-INLINE-7f3a9c2e1b",
    "env": "sk-ENVVAR-4d8b6a0f5e",
    "file": "sk-KEYFILE-9c1e7b3d2a",
    "llm": "sk-LLMKEY-2b5f8e4c7d",
    "admin": "ADMIN-TOKEN-6e0a3f9b8c",
    "master": "MASTER-KEY-1a7d4c6e0f",
    "userinfo": "PASSWORD-5c2e8a1f3b",
}


def secret_config() -> Config:
    raw = {
        "upstreams": [
            upstream(name="inline", api_key=SECRETS["inline"]),
            upstream(name="env", api_key_env="MY_KEY"),
            upstream(name="file", api_key_file="/run/secrets/key"),
            upstream(name="userinfo", base_url=f"http://user:{SECRETS['userinfo']}@127.0.0.1:8000/v1"),
        ]
    }
    env = {
        "MY_KEY": SECRETS["env"],
        "LLM_BASE_URL": LOCAL_URL,
        "LLM_API_KEY": SECRETS["llm"],
        "AIRGAP_PROXY_ADMIN_TOKEN": SECRETS["admin"],
        "AIRGAP_PROXY_SECRET_KEY": SECRETS["master"],
    }
    return parse(raw, env, fake_files({"/run/secrets/key": SECRETS["file"] + "\n"}))


def test_secret_fixture_really_holds_the_secrets() -> None:
    config = secret_config()
    keys = {u.name: u.api_key for u in config.upstreams}
    assert keys == {
        "default": SECRETS["llm"],
        "inline": SECRETS["inline"],
        "env": SECRETS["env"],
        "file": SECRETS["file"],
        "userinfo": None,
    }
    assert config.admin.token == SECRETS["admin"]
    assert config.secret_key == SECRETS["master"]


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_secrets_never_appear_in_repr(name: str) -> None:
    config = secret_config()
    for text in (repr(config), str(config), *(repr(u) for u in config.upstreams), repr(config.admin)):
        assert SECRETS[name] not in text


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_secrets_never_appear_in_redacted(name: str) -> None:
    assert SECRETS[name] not in json.dumps(secret_config().redacted())


def test_redacted_marks_what_is_set() -> None:
    report = secret_config().redacted()
    assert [u["api_key"] for u in report["upstreams"]] == [REDACTED, REDACTED, REDACTED, REDACTED, None]
    assert report["admin"] == {"enabled": True, "token": REDACTED}
    assert report["secret_key"] == REDACTED
    # The rest of the URL is still shown so the operator can see what is wrong.
    assert report["upstreams"][-1]["base_url"] == "http://***@127.0.0.1:8000/v1"


def test_password_in_llm_base_url_is_masked() -> None:
    url = f"http://user:{SECRETS['userinfo']}@127.0.0.1:8000/v1"
    config = parse(None, {"LLM_BASE_URL": url})
    assert config.upstreams[0].target is None
    assert SECRETS["userinfo"] not in repr(config)
    assert SECRETS["userinfo"] not in json.dumps(config.redacted())


def test_password_in_a_base_url_without_scheme_is_masked_in_the_error() -> None:
    error = parse_error({"upstreams": [upstream(base_url=f"user:{SECRETS['userinfo']}@ollama:11434")]})
    assert SECRETS["userinfo"] not in str(error)
    assert error.message == "not a URL (did you mean http://***@ollama:11434?)"


QUERY_KEY = "sk-QUERY-3e7c1a9f5b"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"http://127.0.0.1:8000/v1?api_key={QUERY_KEY}", id="query"),
        pytest.param(f"http://127.0.0.1:8000/v1?{QUERY_KEY}", id="bare query"),
        pytest.param(f"http://127.0.0.1:8000?key={QUERY_KEY}", id="query without path"),
        pytest.param(f"http://127.0.0.1:8000/v1#{QUERY_KEY}", id="fragment"),
        pytest.param(f"127.0.0.1:8000/v1?key={QUERY_KEY}", id="query without scheme"),
    ],
)
@pytest.mark.parametrize("source", ["upstreams", "LLM_BASE_URL"])
def test_a_query_or_fragment_in_base_url_is_refused_at_load_and_masked(url: str, source: str) -> None:
    # Joined, the request path would land after the query (/v1?api_key=K/chat/completions);
    # shown, the key would leak through status, the log and check-config.
    if source == "upstreams":
        error = parse_error({"upstreams": [upstream(base_url=url)]})
        assert error.path == "upstreams[0].base_url"
    else:
        error = parse_error(None, {"LLM_BASE_URL": url})
        assert error.path == "LLM_BASE_URL"
    assert QUERY_KEY not in str(error)
    assert "***" in str(error)
    if "://" in url:
        assert "query string or fragment" in error.message
        assert "api_key" in error.message


def test_redacted_is_plain_json_data() -> None:
    report = parse({"upstreams": [upstream()]}, {"AIRGAP_PROXY_ADMIN_TOKEN": "x" * 16}).redacted()
    assert json.loads(json.dumps(report)) == report
    assert report["upstreams"][0]["base_url"] == LOCAL_URL


@pytest.mark.parametrize(
    ("provider_type", "expected"),
    [
        ("local-ollama", ["anthropic", "ollama", "openai", "responses"]),
        ("local-vllm", ["anthropic", "openai", "responses"]),
        ("local-litellm", ["anthropic", "openai", "responses"]),
        ("local-llamacpp", ["anthropic", "openai", "responses"]),
        ("local-openai-compatible", ["openai"]),
    ],
)
def test_apis_default_by_provider_type(provider_type: str, expected: list[str]) -> None:
    config = parse({"upstreams": [upstream(provider_type=provider_type)]})
    assert config.redacted()["upstreams"][0]["apis"] == expected
    assert [api for api in APIS if config.upstreams[0].speaks(api)] == [a for a in APIS if a in expected]


def test_apis_given_replace_the_defaults() -> None:
    config = parse({"upstreams": [upstream(provider_type="local-ollama", apis=["openai", "anthropic"])]})
    assert config.upstreams[0].speaks("anthropic") and not config.upstreams[0].speaks("ollama")


@pytest.mark.parametrize(
    ("apis", "path", "fragment"),
    [
        ([], "upstreams[0].apis", "at least one of openai, responses, anthropic, ollama"),
        (["openai", "grpc"], "upstreams[0].apis[1]", "unknown API 'grpc'"),
        ("openai", "upstreams[0].apis", "list"),
    ],
)
def test_bad_apis_are_config_errors(apis: Any, path: str, fragment: str) -> None:
    error = parse_error({"upstreams": [upstream(apis=apis)]})
    assert error.path == path and fragment in error.message, (error.path, error.message)


# --- data files -------------------------------------------------------------

# (file, error path, message fragment). A path of None is the file's own path.
BROKEN = [
    ("broken_admin_token_file_missing.yaml", "admin.token_file", "does not exist"),
    ("broken_airgapped_quoted.yaml", "airgapped", "expected true or false, got a string"),
    ("broken_aliases_not_a_mapping.yaml", "upstreams[0].aliases", "expected a mapping, got a list"),
    ("broken_allow_host_bare_wildcard.yaml", "policy.allow_hosts[0]", "a bare '*' would match every host"),
    ("broken_allow_host_ip_literal.yaml", "policy.allow_hosts[0]", "IP addresses belong in allow_networks"),
    ("broken_allow_host_on_deny_list.yaml", "policy.allow_hosts[0]", "api.openai.com is on the deny list"),
    (
        "broken_api_key_file_missing.yaml",
        "upstreams[0].api_key_file",
        "file '/nonexistent/airgap-proxy-tests/llm-api-key' does not exist",
    ),
    ("broken_bad_cidr.yaml", "policy.allow_networks[1]", "not a network in CIDR notation"),
    ("broken_bad_fallback_mode.yaml", "fallback.mode", "expected deterministic or error, got 'canned'"),
    (
        "broken_fallback_responses_file_missing.yaml",
        "fallback.responses_file",
        "file '/nonexistent/airgap-proxy-tests/fallback-responses.yaml' does not exist",
    ),
    ("broken_bad_log_format.yaml", "logging.format", "expected auto, json or console, got 'xml'"),
    ("broken_bad_log_level.yaml", "logging.level", "expected one of debug, info, warning, error, got 'verbose'"),
    ("broken_bad_provider_type.yaml", "upstreams[0].provider_type", "unknown provider type 'ollama'"),
    ("broken_base_url_not_a_url.yaml", "upstreams[1].base_url", "not a URL"),
    ("broken_cidr_host_bits.yaml", "policy.deny_networks[0]", "has host bits set"),
    ("broken_duplicate_upstream_names.yaml", "upstreams[1].name", "duplicate upstream name 'ollama'"),
    ("broken_health_interval_string.yaml", "health.interval_s", "expected a number, got a string"),
    ("broken_health_zero_threshold.yaml", "health.unhealthy_after", "must be at least 1, got 0"),
    ("broken_invalid_yaml_syntax.yaml", None, "invalid YAML at line 4"),
    ("broken_max_body_too_small.yaml", "limits.max_body_bytes", "must be between 1024 and 1073741824"),
    ("broken_missing_base_url.yaml", "upstreams[0].base_url", "is required"),
    ("broken_missing_name.yaml", "upstreams[0].name", "is required"),
    ("broken_model_not_a_string.yaml", "upstreams[0].models[1]", "expected a model name or glob"),
    ("broken_negative_timeout.yaml", "timeouts.connect_s", "must be greater than 0"),
    ("broken_port_out_of_range.yaml", "listen.port", "expected a port number 0-65535, got 70000"),
    ("broken_reserved_upstream_name.yaml", "upstreams[0].name", "'deterministic' is reserved for the fallback"),
    ("broken_top_level_list.yaml", "(top level)", "expected a mapping, got a list"),
    ("broken_two_key_sources.yaml", "upstreams[0].api_key_file", "give only one of api_key, api_key_env, api_key_file"),
    ("broken_unknown_nested_key.yaml", "listen.prot", "unknown key (known keys here: host, port)"),
    ("broken_unknown_top_level_key.yaml", "upstream", "unknown key"),
    ("broken_unknown_upstream_key.yaml", "upstreams[0].apikey", "unknown key"),
    ("broken_upstreams_not_a_list.yaml", "upstreams", "expected a list, got a mapping"),
    ("broken_version_not_integer.yaml", "version", "expected an integer, got a string"),
    ("broken_wrong_version.yaml", "version", "unsupported version 2 (expected 1)"),
]


@pytest.mark.parametrize(("name", "path", "fragment"), [pytest.param(*row, id=row[0]) for row in BROKEN])
def test_broken_file_gives_one_precise_error(name: str, path: str | None, fragment: str) -> None:
    file = str(DATA / name)
    with pytest.raises(ConfigError) as info:
        load_config(file, {})
    error = info.value
    assert error.path == (file if path is None else path)
    assert fragment in error.message
    assert str(error) == f"{error.path}: {error.message}"
    assert "\n" not in str(error)


def test_every_broken_file_is_in_the_table() -> None:
    on_disk = sorted(p.name for p in DATA.glob("broken_*.yaml"))
    assert on_disk == sorted(row[0] for row in BROKEN)
    assert len(on_disk) >= 15


def test_every_broken_file_states_its_one_mistake() -> None:
    for path in DATA.glob("broken_*.yaml"):
        assert path.read_text(encoding="utf-8").startswith("# Mistake: "), path.name


@pytest.mark.parametrize("path", sorted(DATA.glob("valid_*.yaml")), ids=lambda p: p.name)
def test_valid_files_load_with_an_empty_env(path: Path) -> None:
    assert load_config(str(path), {}).source == str(path)


def test_valid_empty_file_gives_the_defaults() -> None:
    assert load_config(str(DATA / "valid_empty.yaml"), {}) == Config(source=str(DATA / "valid_empty.yaml"))


def test_valid_full_file_sets_every_key() -> None:
    env = {"VALID_FULL_KEY_VAR": "sk-ollama", "VALID_FULL_ADMIN_VAR": "full-admin-token-0123"}
    config = load_config(str(DATA / "valid_full.yaml"), env)
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 9090)
    assert config.airgapped is False
    assert [str(n) for n in config.rules.allow_networks] == ["127.0.0.0/8", "::1/128", "10.20.0.0/16"]
    assert str(config.rules.deny_networks[-1]) == "10.20.99.0/24"
    assert [p.pattern for p in config.rules.allow_hosts] == ["localhost", "*.llm.internal", "models.corp.example"]
    assert [p.pattern for p in config.rules.deny_hosts[-2:]] == ["forbidden.example.com", "*.hosted-llm.example"]
    ollama, vllm = config.upstreams
    assert (ollama.name, ollama.provider_type, ollama.api_key) == ("ollama", ProviderType.LOCAL_OLLAMA, "sk-ollama")
    assert ollama.models == ("llama3*", "qwen2.5")
    assert ollama.aliases == (("fast", "llama3.2:1b"), ("smart", "llama3.1:70b"))
    assert (ollama.priority, vllm.priority) == (1, 0)
    assert (vllm.provider_type, vllm.api_key, vllm.api_key_source) == (
        ProviderType.LOCAL_VLLM,
        "sk-inline-valid-full-0d6f1c",
        "inline",
    )
    assert config.default_model == "llama3.2:3b-instruct-q4_K_M"
    assert (config.health.interval_s, config.health.timeout_s) == (2.5, 1.0)
    assert (config.health.unhealthy_after, config.health.healthy_after) == (3, 2)
    assert (config.fallback.mode, config.fallback.responses_file) == (FallbackMode.ERROR, None)
    assert config.tenants.store == "/var/lib/airgap-proxy/tenants.db"
    assert (config.admin.token_env, config.admin.token) == ("VALID_FULL_ADMIN_VAR", "full-admin-token-0123")
    assert config.limits.max_body_bytes == 2048
    assert (config.timeouts.connect_s, config.timeouts.upstream_s) == (1.5, 60.0)
    assert (config.logging.format, config.logging.level) == (LogFormat.CONSOLE, "debug")


# --- the shipped example config -------------------------------------------------


def known_keys(raw: object) -> set[str]:
    """The keys the parser accepts where ``raw`` puts ``zz_unknown``."""
    error = parse_error(raw)
    assert error.path.endswith("zz_unknown"), error
    match = re.search(r"known keys here: ([^)]*)\)", error.message)
    assert match is not None, error
    return set(match.group(1).split(", "))


SECTIONS = ["listen", "policy", "health", "fallback", "tenants", "admin", "limits", "timeouts", "logging"]


def test_example_config_loads_with_an_empty_env() -> None:
    config = load_config(str(EXAMPLE), {})
    assert config.airgapped is True
    assert [u.name for u in config.upstreams] == ["ollama", "vllm"]
    assert all(u.api_key is None for u in config.upstreams)
    assert config.upstreams[0].api_key_source == "env LLM_API_KEY (not set)"
    assert config.default_model is not None
    assert config.admin.token is None


def test_example_config_reads_llm_api_key() -> None:
    config = load_config(str(EXAMPLE), {"LLM_API_KEY": "sk-example"})
    assert config.upstreams[0].api_key == "sk-example"


def test_example_config_has_every_top_level_key() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    top_level = known_keys({"zz_unknown": 1})
    assert {"version", "listen", "airgapped", "policy", "upstreams", "default_model", "tenants"} <= top_level
    assert set(raw) == top_level


def test_example_config_documents_every_nested_key() -> None:
    """Each key is set, or shown commented out (``# key: ...``) with its explanation."""
    text = EXAMPLE.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    commented = set(re.findall(r"^\s*#\s*([a-z_]+):", text, flags=re.MULTILINE))
    for section in SECTIONS:
        missing = known_keys({section: {"zz_unknown": 1}}) - set(raw[section]) - commented
        assert not missing, (section, missing)
    up_keys = known_keys({"upstreams": [upstream(zz_unknown=1)]})
    present = set().union(*(set(u) for u in raw["upstreams"]))
    assert not up_keys - present - commented, up_keys - present - commented


# --- properties -------------------------------------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from([LOCAL_URL, "local-vllm", "10.0.0.0/8", "/run/secrets/key", "*.corp", "error", "json"]),
)
_value = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3)
    ),
    max_leaves=6,
)
_UPSTREAM_KEYS = ["name", "provider_type", "base_url", "api_key", "api_key_env", "api_key_file", "models", "aliases"]
_ENV_NAMES = [
    "AISOC_AIRGAPPED",
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "LLM_MODEL",
    "LLM_PROVIDER_TYPE",
    "AIRGAP_PROXY_HOST",
    "AIRGAP_PROXY_PORT",
    "AIRGAP_PROXY_ADMIN_TOKEN",
    "AIRGAP_PROXY_SECRET_KEY",
]


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), _value, max_size=len(keys))


_raw_config = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), _value),
        "airgapped": _value,
        "listen": st.one_of(_section(["host", "port"]), _value),
        "policy": st.one_of(_section(["allow_networks", "deny_networks", "allow_hosts", "deny_hosts"]), _value),
        "upstreams": st.one_of(st.lists(st.one_of(_section(_UPSTREAM_KEYS), _value), max_size=2), _value),
        "health": _section(["interval_s", "timeout_s", "unhealthy_after", "healthy_after"]),
        "admin": _section(["token_env", "token_file"]),
        "logging": _section(["format", "level"]),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_raw_config, env=st.dictionaries(st.sampled_from(_ENV_NAMES), st.text(max_size=24)))
def test_any_input_gives_a_config_or_a_config_error(raw: dict[str, Any], env: dict[str, str]) -> None:
    try:
        config = parse_config(raw, env, fake_files({"/run/secrets/key": "sk-file"}))
    except ConfigError as exc:
        assert exc.path
        assert str(exc) == f"{exc.path}: {exc.message}"
    else:
        assert isinstance(config, Config)
        json.dumps(config.redacted())


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "version: 1\nupstreams: []\nairgapped: true\nupstreams:\n  - {name: a, base_url: http://127.0.0.1/v1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert "duplicate key 'upstreams'" in str(info.value)


def test_relative_files_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key.txt").write_text("sk-from-file\n")
    (tmp_path / "proxy.yaml").write_text(
        "upstreams:\n  - {name: a, base_url: 'http://127.0.0.1/v1', api_key_file: key.txt}\n"
    )
    monkeypatch.chdir("/")
    config = load_config(str(tmp_path / "proxy.yaml"), {})
    assert config.upstreams[0].api_key == "sk-from-file"


@pytest.mark.parametrize("value", ["sk-live-THIS-IS-A-KEY", "MY VAR", "1ABC"])
def test_api_key_env_must_be_a_variable_name_and_is_never_echoed(value: str) -> None:
    raw = {"upstreams": [{"name": "a", "base_url": "http://127.0.0.1/v1", "api_key_env": value}]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {}, no_files)
    assert info.value.path == "upstreams[0].api_key_env"
    assert value not in str(info.value)


@pytest.mark.parametrize("pattern", ["llm.*", "a.*.internal", "*"])
def test_allow_hosts_takes_only_leading_wildcards(pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"policy": {"allow_hosts": [pattern]}}, {}, no_files)
    assert info.value.path == "policy.allow_hosts[0]"


def test_deny_hosts_may_use_inner_wildcards() -> None:
    config = parse_config({"policy": {"deny_hosts": ["llm.*.example.com"]}}, {}, no_files)
    assert any(p.pattern == "llm.*.example.com" for p in config.rules.deny_hosts)


def test_kubernetes_service_link_port_is_not_ours() -> None:
    config = parse_config({"listen": {"port": 9000}}, {"AIRGAP_PROXY_PORT": "tcp://10.96.0.12:8080"}, no_files)
    assert config.listen.port == 9000


def test_ollama_management_is_off_unless_allowed() -> None:
    assert parse().ollama.allow_management is False
    assert parse({"ollama": {"allow_management": True}}).ollama.allow_management is True
    assert parse({"ollama": {"allow_management": True}}).redacted()["ollama"] == {"allow_management": True}
    error = parse_error({"ollama": {"allow_management": "yes"}})
    assert error.path == "ollama.allow_management"
    assert parse_error({"ollama": {"pull": True}}).path == "ollama.pull"
