"""The pure tenant core: key formats and sealing, provider bodies, identity, verdicts, config."""

from __future__ import annotations

import ast
import base64
import hashlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airgap_proxy import crypto, policy, tenants
from airgap_proxy.config import ClientConfig, ConfigError, ProviderType, parse_config
from airgap_proxy.errors import Forbidden, InvalidRequest, Unauthorized
from tests.test_architecture import IO_MODULES, PURE, imported_package_modules, imported_roots

PACKAGE = Path(__file__).resolve().parent.parent / "airgap_proxy"
RAW_KEY = bytes(range(32))


def keyring(current: str | None = "current-secret-key-0001", *previous: str) -> crypto.Keyring:
    return crypto.Keyring.from_texts(current, previous, os.urandom)


# --- architecture ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tenants", "crypto"])
def test_tenant_core_is_pure(name: str) -> None:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    assert not (imported_roots(tree) & IO_MODULES), imported_roots(tree) & IO_MODULES
    allowed = {p.split("/")[0] for p in PURE} | {"config", "crypto"}
    assert imported_package_modules(tree) <= allowed


# --- secret keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("base64:" + base64.b64encode(RAW_KEY).decode(), id="base64"),
        pytest.param("hex:" + RAW_KEY.hex(), id="hex"),
        pytest.param("  hex:" + RAW_KEY.hex().upper() + "\n", id="hex upper case, whitespace"),
    ],
)
def test_raw_key_forms(text: str) -> None:
    key = crypto.parse_secret_key(text)
    assert key.material == RAW_KEY
    assert key.key_id == crypto.key_id_of(RAW_KEY)
    assert len(key.key_id) == 16
    assert RAW_KEY.hex() not in repr(key)


def test_passphrase_is_stretched_and_stable() -> None:
    one = crypto.parse_secret_key("a-long-random-secret")
    assert len(one.material) == 32
    assert one == crypto.parse_secret_key("a-long-random-secret")
    assert one.key_id != crypto.parse_secret_key("a-long-random-secreT").key_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("Sh0rt-Secret-9", "too short", id="short passphrase"),
        pytest.param("base64:" + base64.b64encode(b"x" * 16).decode(), "exactly 32 bytes, got 16", id="short b64"),
        pytest.param("base64:not*base64", "not valid base64", id="bad base64"),
        pytest.param("hex:abc", "not valid hex", id="odd hex"),
        pytest.param("hex:" + "ab" * 33, "exactly 32 bytes, got 33", id="long hex"),
        pytest.param("x" * 5000, "longer than", id="huge"),
    ],
)
def test_bad_keys_never_echo_the_key(text: str, message: str) -> None:
    with pytest.raises(crypto.KeyFormatError, match=message) as info:
        crypto.parse_secret_key(text)
    secret_part = text.split(":", 1)[-1]
    assert secret_part not in str(info.value)


def test_seal_and_open() -> None:
    ring = keyring()
    aad = crypto.associated_data("team-a", "http://127.0.0.1:1/v1")
    sealed = ring.seal("sk-the-key", aad)
    assert ring.current is not None and sealed.key_id == ring.current.key_id
    assert b"sk-the-key" not in sealed.ciphertext
    assert "sk-the-key" not in repr(sealed)
    assert ring.open(sealed, aad) == "sk-the-key"
    assert ring.seal("sk-the-key", aad).nonce != sealed.nonce  # a fresh nonce every time


@pytest.mark.parametrize(
    ("tenant", "url"),
    [
        pytest.param("team-b", "http://127.0.0.1:1/v1", id="another tenant"),
        pytest.param("team-a", "http://127.0.0.1:2/v1", id="another url"),
        pytest.param("team-a\x00http:", "//127.0.0.1:1/v1", id="shifted separator"),
    ],
)
def test_a_sealed_key_is_bound_to_its_tenant_and_url(tenant: str, url: str) -> None:
    ring = keyring()
    sealed = ring.seal("sk-the-key", crypto.associated_data("team-a", "http://127.0.0.1:1/v1"))
    with pytest.raises(crypto.SealError, match="does not decrypt"):
        ring.open(sealed, crypto.associated_data(tenant, url))


def test_tampered_ciphertext_does_not_open() -> None:
    ring = keyring()
    aad = crypto.associated_data("t", "u")
    sealed = ring.seal("sk-the-key", aad)
    flipped = crypto.Sealed(sealed.key_id, sealed.nonce, bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:])
    with pytest.raises(crypto.SealError):
        ring.open(flipped, aad)


def test_rotation_with_previous_keys() -> None:
    aad = crypto.associated_data("t", "u")
    old = keyring("old-secret-key-000001")
    sealed = old.seal("sk-the-key", aad)
    new_only = keyring("new-secret-key-000002")
    with pytest.raises(crypto.SealError, match=f"secret key id {sealed.key_id}, which is not configured"):
        new_only.open(sealed, aad)
    both = keyring("new-secret-key-000002", "old-secret-key-000001", "new-secret-key-000002")
    assert len(both.previous) == 1  # the current key is not repeated
    assert both.open(sealed, aad) == "sk-the-key"
    resealed = both.reseal(sealed, aad)
    assert resealed is not None and both.current is not None
    assert resealed.key_id == both.current.key_id
    assert new_only.open(resealed, aad) == "sk-the-key"
    assert both.reseal(resealed, aad) is None


def test_a_keyring_without_a_current_key_cannot_seal() -> None:
    ring = keyring(None, "old-secret-key-000001")
    assert not ring.can_seal
    with pytest.raises(crypto.SealError, match="no secret key"):
        ring.seal("x", b"")
    with pytest.raises(crypto.SealError, match="randomness"):
        crypto.Keyring(crypto.parse_secret_key("old-secret-key-000001")).seal("x", b"")


@given(st.text(min_size=1, max_size=200), st.text(max_size=70), st.text(max_size=100))
def test_seal_open_round_trip(plaintext: str, tenant: str, url: str) -> None:
    ring = keyring()
    aad = crypto.associated_data(tenant, url)
    assert ring.open(ring.seal(plaintext, aad), aad) == plaintext


# --- provider bodies ---------------------------------------------------------------------


def body(**fields: Any) -> bytes:
    data: dict[str, Any] = {"provider_type": "local-vllm", "base_url": "http://127.0.0.1:8000/v1", "model": "m"}
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_parse_provider_request() -> None:
    parsed = tenants.parse_provider_request(body(api_key="sk-k", model=" llama3 "))
    assert parsed.provider_type is ProviderType.LOCAL_VLLM
    assert parsed.model == "llama3"
    assert parsed.api_key == "sk-k"
    assert "sk-k" not in repr(parsed)
    assert tenants.parse_provider_request(body(api_key="")).api_key is None
    assert tenants.parse_provider_request(body(api_key=None)).api_key is None


@pytest.mark.parametrize("provider_type", [p.value for p in tenants.PROVIDER_TYPES])
def test_every_local_type_is_accepted(provider_type: str) -> None:
    assert tenants.parse_provider_request(body(provider_type=provider_type)).provider_type.value == provider_type


@pytest.mark.parametrize("provider_type", [p.value for p in ProviderType if p.is_hosted])
def test_hosted_types_are_refused(provider_type: str) -> None:
    with pytest.raises(InvalidRequest, match="hosted LLM APIs cannot be tenant providers") as info:
        tenants.parse_provider_request(body(provider_type=provider_type))
    assert info.value.param == "provider_type"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"nul", None),
        (b'"x"', None),
        (body(provider_type=...), "provider_type"),
        (body(base_url=...), "base_url"),
        (body(model=...), "model"),
        (body(model="  "), "model"),
        (body(api_key=["x"]), "api_key"),
        (body(api_key="é-key"), "api_key"),
        (body(api_key="tab\there"), "api_key"),
        (body(extra=1), "extra"),
    ],
)
def test_bad_provider_bodies(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        tenants.parse_provider_request(raw)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        (None, None),
        ("short", None),
        ("elevenchars", None),
        ("twelve-chars", "…hars"),
        ("sk-" + "x" * 60 + "abcd", "…abcd"),
    ],
)
def test_key_hint_shows_at_most_four_characters(key: str | None, hint: str | None) -> None:
    assert tenants.key_hint(key) == hint


@pytest.mark.parametrize(
    ("tenant", "valid"),
    [
        ("team-a", True),
        ("A", True),
        ("a" * 64, True),
        ("t_1.x-y", True),
        ("a" * 65, False),
        ("", False),
        ("-a", False),
        (".a", False),
        ("a/b", False),
        ("a b", False),
        ("été", False),
        ("a\n", False),
    ],
)
def test_tenant_ids(tenant: str, valid: bool) -> None:
    assert tenants.valid_tenant_id(tenant) is valid


# --- identity ----------------------------------------------------------------------------

CLIENTS = (
    ClientConfig("agents-a", hashlib.sha256(b"key-a").hexdigest(), "team-a"),
    ClientConfig("agents-b", hashlib.sha256(b"key-b").hexdigest(), "team-b"),
)


@pytest.mark.parametrize(
    ("authorization", "header", "clients", "expected"),
    [
        pytest.param(None, None, (), tenants.Identity(None), id="nothing"),
        pytest.param(None, "team-a", (), tenants.Identity("team-a"), id="header without clients"),
        pytest.param("Bearer whatever", " team-a ", (), tenants.Identity("team-a"), id="keys ignored without clients"),
        pytest.param(None, "", (), tenants.Identity(None), id="empty header"),
        pytest.param("Bearer key-a", None, CLIENTS, tenants.Identity("team-a", "agents-a"), id="client key"),
        pytest.param("bearer  key-b ", "team-b", CLIENTS, tenants.Identity("team-b", "agents-b"), id="matching header"),
    ],
)
def test_identify(
    authorization: str | None, header: str | None, clients: tuple[ClientConfig, ...], expected: tenants.Identity
) -> None:
    assert tenants.identify(authorization, header, clients) == expected


@pytest.mark.parametrize(
    ("authorization", "header", "error"),
    [
        pytest.param(None, None, Unauthorized, id="missing key"),
        pytest.param(None, "team-a", Unauthorized, id="header but no key"),
        pytest.param("Bearer key-c", None, Unauthorized, id="unknown key"),
        pytest.param("Basic key-a", None, Unauthorized, id="not bearer"),
        pytest.param("Bearer", None, Unauthorized, id="bearer without key"),
        pytest.param("Bearer key-a", "team-b", Forbidden, id="other tenant"),
        pytest.param("Bearer key-a", "team-A", Forbidden, id="case matters"),
    ],
)
def test_identify_refusals(authorization: str | None, header: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        tenants.identify(authorization, header, CLIENTS)


def test_invalid_tenant_header_without_clients() -> None:
    with pytest.raises(InvalidRequest):
        tenants.identify(None, "../etc", ())


# --- verdicts at request time ------------------------------------------------------------


def stored(base_url: str, decision: policy.Decision | None = None) -> tenants.StoredProvider:
    return tenants.StoredProvider(
        tenant="team-a",
        provider_type=ProviderType.LOCAL_OLLAMA,
        base_url=base_url,
        model="m",
        sealed_key=None,
        key_hint=None,
        decision=decision or policy.Decision(policy.Verdict.LOCAL, "stored", policy.Rule.ALLOW_NETWORK),
        updated_at="2026-01-01T00:00:00Z",
    )


def test_request_time_decision_applies_current_rules() -> None:
    rules = policy.Rules()
    assert tenants.request_time_decision(stored("http://10.1.2.3/v1"), rules).is_local
    strict = policy.Rules(allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    decision = tenants.request_time_decision(stored("http://10.1.2.3/v1"), strict)
    assert decision.verdict is policy.Verdict.EXTERNAL
    named = stored("http://ollama.internal/v1")
    assert tenants.request_time_decision(named, rules) is named.decision  # names keep their stored verdict
    denied = policy.Rules(deny_hosts=(policy.HostPattern("ollama.internal", "deny_hosts"),))
    assert tenants.request_time_decision(named, denied).verdict is policy.Verdict.EXTERNAL
    broken = stored("http://user@x/v1")
    assert tenants.request_time_decision(broken, rules).verdict is policy.Verdict.INVALID


# --- configuration -----------------------------------------------------------------------


def parse(
    raw: dict[str, Any] | None = None, env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> Any:
    def read(path: str) -> str:
        if files and path in files:
            return files[path]
        raise FileNotFoundError(path)

    return parse_config(raw or {}, env or {}, read)


def config_error(
    raw: dict[str, Any] | None = None, env: dict[str, str] | None = None, files: Any = None
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(raw, env, files)
    return info.value


def test_secret_keys_from_env_and_files() -> None:
    config = parse(
        None,
        {
            "AIRGAP_PROXY_SECRET_KEY": "current-key-0123456789",
            "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS": " " + "a" * 17 + " , " + "b" * 17 + ",",
        },
    )
    assert config.secret_key == "current-key-0123456789"
    assert len(config.previous_secret_keys) == 2
    files = {"/s/key": "file-key-0123456789\n", "/s/old": "old-key-one-0123456\n\nold-key-two-0123456\n"}
    raw = {"tenants": {"secret_key_file": "/s/key", "previous_secret_keys_file": "/s/old"}}
    from_files = parse(raw, {}, files)
    assert from_files.secret_key == "file-key-0123456789"
    assert from_files.previous_secret_keys == ("old-key-one-0123456", "old-key-two-0123456")
    assert parse(raw, {"AIRGAP_PROXY_SECRET_KEY": "env-wins-0123456789"}, files).secret_key == "env-wins-0123456789"
    report = json.dumps(from_files.redacted())
    assert "file-key-0123456789" not in report and "old-key-one" not in report
    assert from_files.redacted()["previous_secret_keys"] == ["***", "***"]


@pytest.mark.parametrize(
    ("raw", "env", "path", "message"),
    [
        (None, {"AIRGAP_PROXY_SECRET_KEY": "too-short"}, "AIRGAP_PROXY_SECRET_KEY", "too short"),
        (
            None,
            {"AIRGAP_PROXY_PREVIOUS_SECRET_KEYS": "ok-key-0123456789abc,bad"},
            "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS[1]",
            "too short",
        ),
        ({"tenants": {"secret_key_file": "/nope"}}, {}, "tenants.secret_key_file", "does not exist"),
        (
            {"tenants": {"previous_secret_keys_file": "/nope"}},
            {},
            "tenants.previous_secret_keys_file",
            "does not exist",
        ),
        ({"tenants": {"store": " "}}, {}, "tenants.store", "must be a file path"),
    ],
)
def test_secret_key_errors(raw: Any, env: dict[str, str], path: str, message: str) -> None:
    error = config_error(raw, env)
    assert error.path == path
    assert message in error.message
    for value in env.values():
        assert value not in str(error)


def client(**fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "agents", "key_hash": "ab" * 32, "tenant": "team-a"}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not ...}


def test_clients_are_parsed() -> None:
    config = parse({"clients": [client(), client(name="b", key_hash="sha256:" + "CD" * 32, tenant="team-b")]})
    assert config.clients == (
        ClientConfig("agents", "ab" * 32, "team-a"),
        ClientConfig("b", "cd" * 32, "team-b"),
    )
    assert config.redacted()["clients"][1] == {"name": "b", "key_hash": "***", "tenant": "team-b"}


@pytest.mark.parametrize(
    ("clients", "path", "message"),
    [
        ([client(name=...)], "clients[0].name", "is required"),
        ([client(key_hash=...)], "clients[0].key_hash", "is required"),
        ([client(tenant=...)], "clients[0].tenant", "is required"),
        ([client(key_hash="sk-the-actual-key")], "clients[0].key_hash", "never the key itself"),
        ([client(tenant="team a")], "clients[0].tenant", "not a valid tenant id"),
        ([client(name="a b")], "clients[0].name", "not a valid client name"),
        ([client(), client()], "clients[1].name", "duplicate client name"),
        ([client(), client(name="x")], "clients[1].key_hash", "already given to client 'agents'"),
        ([client(extra=1)], "clients[0].extra", "unknown key (known keys here: key_hash, name, tenant)"),
        (["agents"], "clients[0]", "expected a mapping"),
        ({"agents": {}}, "clients", "expected a list"),
    ],
)
def test_client_errors(clients: Any, path: str, message: str) -> None:
    error = config_error({"clients": clients})
    assert error.path == path
    assert message in error.message
    assert "sk-the-actual-key" not in str(error)
