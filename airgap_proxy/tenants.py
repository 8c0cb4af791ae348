"""Tenants and the LLM providers they bring (pure: no I/O, no clock, no environment).

A tenant's provider is one OpenAI-compatible endpoint of a local type, its
model and, optionally, its API key sealed with :mod:`airgap_proxy.crypto`.
This module validates what the admin API receives, decides which tenant a
proxied request belongs to, and classifies a stored provider at request time.
The store (:mod:`airgap_proxy.tenant_store`) and the handlers are the edges.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from airgap_proxy import policy
from airgap_proxy.config import TENANT_ID_RE, ClientConfig, ProviderType, UpstreamConfig
from airgap_proxy.crypto import Keyring, Sealed, associated_data
from airgap_proxy.errors import Forbidden, InvalidRequest, Unauthorized
from airgap_proxy.policy import targets
from airgap_proxy.policy.targets import MAX_URL_LENGTH, Target, TargetError
from airgap_proxy.upstreams import routing

TENANT_HEADER = "X-Tenant-ID"
UPSTREAM_PREFIX = "tenant:"
PROVIDER_TYPES = tuple(p for p in ProviderType if not p.is_hosted)
PROVIDER_FIELDS = ("provider_type", "base_url", "api_key", "model")
MAX_MODEL_CHARS = 256
MAX_API_KEY_CHARS = 4096
HINT_CHARS = 4
MIN_KEY_CHARS_FOR_HINT = 12  # shorter keys get no hint: four characters would be too much of them


def valid_tenant_id(text: str) -> bool:
    return TENANT_ID_RE.match(text) is not None


def check_tenant_id(text: str) -> str:
    """``text`` if it is a valid tenant id, else 400."""
    if not valid_tenant_id(text):
        raise InvalidRequest(
            "Invalid tenant id: use letters, digits, '_', '.', '-' (starting with a letter or digit), "
            "at most 64 characters",
            param="tenant",
        )
    return text


def upstream_name(tenant: str) -> str:
    """How a tenant's provider appears in ``X-Airgap-Upstream`` and logs (no upstream name has a ':')."""
    return UPSTREAM_PREFIX + tenant


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """The body of ``PUT /api/v1/tenants/{tenant}/llm-provider``, type-checked."""

    provider_type: ProviderType
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)


def parse_provider_request(body: bytes) -> ProviderRequest:
    """Validate a provider body. Errors are 400 ``invalid_request_error`` naming the field.

    1. A JSON object with no fields but ``provider_type``, ``base_url``, ``model``, ``api_key``.
    2. ``provider_type``: one of the local types; ``base_url`` and ``model``: non-empty strings.
    3. ``api_key``: optional (null or absent means "no key"); printable ASCII, no spaces,
       because it is sent as ``Authorization: Bearer <key>``.
    The URL's verdict is the policy's business, not this function's.
    """
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    for key in data:
        if key not in PROVIDER_FIELDS:
            shown = key[:64]  # the client's text, echoed: bounded
            raise InvalidRequest(f"Unknown parameter: '{shown}' (expected {', '.join(PROVIDER_FIELDS)})", param=shown)
    provider_type = _parse_provider_type(data.get("provider_type"))
    base_url = _required_string(data, "base_url", MAX_URL_LENGTH)
    model = _required_string(data, "model", MAX_MODEL_CHARS)
    api_key = data.get("api_key")
    if api_key is not None:
        if not isinstance(api_key, str):
            raise InvalidRequest("'api_key' must be a string or null", param="api_key")
        if len(api_key) > MAX_API_KEY_CHARS:
            raise InvalidRequest(f"'api_key' is longer than {MAX_API_KEY_CHARS} characters", param="api_key")
        if not all(0x21 <= ord(c) <= 0x7E for c in api_key):
            raise InvalidRequest(
                "'api_key' may contain only printable ASCII characters without spaces", param="api_key"
            )
    return ProviderRequest(provider_type=provider_type, base_url=base_url, model=model, api_key=api_key or None)


def _parse_provider_type(value: object) -> ProviderType:
    known = ", ".join(p.value for p in PROVIDER_TYPES)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: 'provider_type' (one of {known})", param="provider_type")
    if not isinstance(value, str):
        raise InvalidRequest(f"'provider_type' must be one of {known}", param="provider_type")
    try:
        provider_type = ProviderType(value)
    except ValueError:
        provider_type = None
    if provider_type is None or provider_type.is_hosted:
        hosted = " (hosted LLM APIs cannot be tenant providers)" if provider_type is not None else ""
        raise InvalidRequest(f"'provider_type' must be one of {known}{hosted}", param="provider_type")
    return provider_type


def _required_string(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{key}'", param=key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{key}' must be a non-empty string", param=key)
    if len(value) > limit:
        raise InvalidRequest(f"'{key}' is longer than {limit} characters", param=key)
    return value.strip()


def parse_base_url(base_url: str) -> Target | policy.Decision:
    """The URL as a target, or the ``invalid`` decision that refuses it."""
    try:
        return targets.parse_base_url(base_url)
    except TargetError as exc:
        return policy.Decision(policy.Verdict.INVALID, policy.REASON_INVALID.format(detail=exc), policy.Rule.PARSE)


def key_hint(api_key: str | None) -> str | None:
    """At most the last four characters, and none of a short key."""
    if api_key is None or len(api_key) < MIN_KEY_CHARS_FOR_HINT:
        return None
    return "…" + api_key[-HINT_CHARS:]


@dataclass(frozen=True, slots=True)
class StoredProvider:
    """A tenant's provider as stored: canonical URL, sealed key, and its verdict when stored."""

    tenant: str
    provider_type: ProviderType
    base_url: str
    model: str
    sealed_key: Sealed | None
    key_hint: str | None
    decision: policy.Decision
    updated_at: str

    @property
    def target(self) -> Target | None:
        parsed = parse_base_url(self.base_url)
        return parsed if isinstance(parsed, Target) else None

    def upstream(self, api_key: str | None) -> UpstreamConfig:
        """The provider as an upstream, with its opened key (for sending and probing)."""
        target = self.target
        return UpstreamConfig(
            name=upstream_name(self.tenant),
            provider_type=self.provider_type,
            base_url=self.base_url,
            target=target,
            target_error=None if target is not None else "stored URL no longer parses",
            api_key=api_key,
            api_key_source="tenant store" if api_key else "none",
        )

    def view(self) -> dict[str, Any]:
        """What the admin API shows: never the key, at most a hint of it."""
        return {
            "tenant": self.tenant,
            "provider_type": self.provider_type.value,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_set": self.sealed_key is not None,
            "api_key_hint": self.key_hint,
            "verdict": self.decision.verdict.value,
            "reason": self.decision.reason,
            "updated_at": self.updated_at,
        }


def seal_api_key(keyring: Keyring, tenant: str, base_url: str, api_key: str | None) -> Sealed | None:
    """The key sealed under the current secret key, bound to ``tenant`` and ``base_url``."""
    if api_key is None:
        return None
    return keyring.seal(api_key, associated_data(tenant, base_url))


def open_api_key(provider: StoredProvider, keyring: Keyring) -> str | None:
    """The provider's plaintext key (raises :class:`airgap_proxy.crypto.SealError`)."""
    if provider.sealed_key is None:
        return None
    return keyring.open(provider.sealed_key, associated_data(provider.tenant, provider.base_url))


def request_time_decision(provider: StoredProvider, rules: policy.Rules) -> policy.Decision:
    """The provider's verdict now.

    1. The policy's static steps under the current rules (hosted type, URL,
       deny list, IP literals, allow_hosts): a rule change applies at once.
    2. A name the static steps cannot decide keeps the verdict it got when it
       was stored (resolved then); the egress client re-checks its addresses
       at connect time anyway.
    """
    static = routing.static_decision(provider.upstream(None), rules)
    return static if static is not None else provider.decision


def bearer_token_bytes(authorization: str | None) -> bytes | None:
    """The UTF-8 bytes of an ``Authorization: Bearer <token>`` token, else None.

    aiohttp hands header values over with undecodable bytes as surrogates; a
    token that is not valid UTF-8 is treated as no token at all (401), so every
    comparison is of bytes and nothing downstream can raise on it.
    """
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        return token.encode("utf-8")
    except UnicodeEncodeError:
        return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (valid UTF-8), else None."""
    token = bearer_token_bytes(authorization)
    return None if token is None else token.decode("utf-8")


def bearer_matches(authorization: str | None, expected: str) -> bool:
    """Does the header carry exactly ``expected`` as its bearer token? (constant time, bytes)"""
    token = bearer_token_bytes(authorization)
    return token is not None and hmac.compare_digest(token, expected.encode("utf-8"))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def find_client(key: str, clients: tuple[ClientConfig, ...]) -> ClientConfig | None:
    """The client whose key hash matches, comparing every hash in constant time."""
    digest = key_digest(key)
    found = None
    for client in clients:
        if hmac.compare_digest(digest, client.key_hash) and found is None:
            found = client
    return found


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a proxied request is for: a tenant (or none) and the client that sent it (if clients exist)."""

    tenant: str | None
    client: str | None = None


def identify(authorization: str | None, tenant_header: str | None, clients: tuple[ClientConfig, ...]) -> Identity:
    """Decide a request's tenant.

    1. With ``clients`` configured the client's bearer key decides: missing or
       unknown key 401; an ``X-Tenant-ID`` naming another tenant 403.
    2. Without them, ``X-Tenant-ID`` decides (an invalid id is 400).
    3. Neither: no tenant (the default upstreams).
    """
    claimed = tenant_header.strip() if tenant_header is not None else None
    if clients:
        key = bearer_token(authorization)
        if key is None:
            raise Unauthorized(
                "Missing or malformed client API key: send it as 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        client = find_client(key, clients)
        if client is None:
            raise Unauthorized("Incorrect client API key provided", headers={"WWW-Authenticate": "Bearer"})
        if claimed and claimed != client.tenant:
            raise Forbidden(f"{TENANT_HEADER} names a tenant this client key is not bound to")
        return Identity(client.tenant, client.name)
    if claimed is None or claimed == "":
        return Identity(None)
    if not valid_tenant_id(claimed):
        raise InvalidRequest(f"Invalid {TENANT_HEADER} header: use letters, digits, '_', '.', '-', at most 64")
    return Identity(claimed)
