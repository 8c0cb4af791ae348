"""Configuration: YAML plus environment variables -> frozen typed objects.

Parsed once at start-up; nothing reads the environment afterwards. Every error
is a :class:`ConfigError` whose text names the key path and the problem
(``upstreams[1].base_url: not a URL``). :func:`parse_config` is pure: the
environment and a file reader are passed in.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airgap_proxy import crypto, database_url, policy
from airgap_proxy.fallback import EMPTY_CANNED, Canned, parse_canned
from airgap_proxy.fallback import limits as fallback_limits
from airgap_proxy.policy.targets import Target, TargetError, parse_base_url
from airgap_proxy.policy.telemetry import BUILTIN_TELEMETRY_HOSTS

CONFIG_VERSION = 1
ENV_AIRGAPPED = "AISOC_AIRGAPPED"
ENV_BASE_URL = "LLM_BASE_URL"
ENV_API_KEY = "LLM_API_KEY"
ENV_MODEL = "LLM_MODEL"
ENV_PROVIDER_TYPE = "LLM_PROVIDER_TYPE"
ENV_CONFIG = "AIRGAP_PROXY_CONFIG"
ENV_HOST = "AIRGAP_PROXY_HOST"
ENV_PORT = "AIRGAP_PROXY_PORT"
ENV_WORKERS = "AIRGAP_PROXY_WORKERS"
ENV_ADMIN_TOKEN = "AIRGAP_PROXY_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_SECRET_KEY = "AIRGAP_PROXY_SECRET_KEY"  # noqa: S105 - a variable name, not a secret
ENV_PREVIOUS_SECRET_KEYS = "AIRGAP_PROXY_PREVIOUS_SECRET_KEYS"  # noqa: S105 - a variable name, not a secret
ENV_TENANT_DB = "AIRGAP_PROXY_TENANT_DB"
DEFAULT_UPSTREAM_NAME = "default"
RESERVED_UPSTREAM_NAMES = frozenset({"deterministic"})
REDACTED = "***"
# serve --workers: a typo such as 1000 should not fork a thousand processes.
MAX_WORKERS = 256

_URL_SHAPE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
# Tenant ids travel in URLs, headers and logs: safe characters, bounded length.
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_SHA256_HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(Exception):
    """A configuration mistake: ``path`` names the key, ``message`` the problem."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class ProviderType(enum.Enum):
    LOCAL_OLLAMA = "local-ollama"
    LOCAL_VLLM = "local-vllm"
    LOCAL_LITELLM = "local-litellm"
    LOCAL_LLAMACPP = "local-llamacpp"
    LOCAL_OPENAI_COMPATIBLE = "local-openai-compatible"
    # Hosted APIs: recognised so that they can be refused by type.
    OPENAI = "openai"
    AZURE_OPENAI = "azure-openai"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"
    BEDROCK = "bedrock"
    MISTRAL = "mistral"
    COHERE = "cohere"
    GROQ = "groq"
    TOGETHER = "together"
    OPENROUTER = "openrouter"
    DEEPSEEK = "deepseek"
    XAI = "xai"
    FIREWORKS = "fireworks"
    PERPLEXITY = "perplexity"

    @property
    def is_hosted(self) -> bool:
        return not self.value.startswith("local-")

    @property
    def default_apis(self) -> frozenset[str]:
        """The API surfaces an upstream of this type speaks unless ``apis`` says otherwise."""
        return DEFAULT_APIS.get(self, frozenset({"openai"}))


# The API surfaces (DESIGN §7) and who speaks which by default.
APIS = ("openai", "responses", "anthropic", "ollama")
DEFAULT_APIS = {
    ProviderType.LOCAL_OLLAMA: frozenset(APIS),
    ProviderType.LOCAL_VLLM: frozenset({"openai", "responses", "anthropic"}),
    ProviderType.LOCAL_LITELLM: frozenset({"openai", "responses", "anthropic"}),
    ProviderType.LOCAL_LLAMACPP: frozenset({"openai", "responses", "anthropic"}),
}


class LogFormat(enum.Enum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class FallbackMode(enum.Enum):
    DETERMINISTIC = "deterministic"
    ERROR = "error"


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class UpstreamConfig:
    """One configured upstream. ``target`` is None when the URL is policy-invalid."""

    name: str
    provider_type: ProviderType
    base_url: str
    target: Target | None
    target_error: str | None
    api_key: str | None = field(default=None, repr=False)
    api_key_source: str = "none"
    models: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    max_in_flight: int | None = None
    # The API surfaces it speaks (``upstreams[].apis``); empty: its provider type's defaults.
    apis: frozenset[str] = frozenset()

    def speaks(self, api: str) -> bool:
        """Does this upstream serve the ``api`` surface?"""
        return api in (self.apis or self.provider_type.default_apis)


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = 5.0
    timeout_s: float = 2.0
    unhealthy_after: int = 2
    healthy_after: int = 1


@dataclass(frozen=True)
class FallbackConfig:
    """How the fallback answers, and what one answer may cost (``max_*``)."""

    mode: FallbackMode = FallbackMode.DETERMINISTIC
    responses_file: str | None = None
    canned: Canned = EMPTY_CANNED
    max_cpu_ms: int = fallback_limits.DEFAULT_MAX_CPU_MS
    max_choices: int = fallback_limits.DEFAULT_MAX_CHOICES
    max_embedding_values: int = fallback_limits.DEFAULT_MAX_EMBEDDING_VALUES
    max_answer_bytes: int = fallback_limits.DEFAULT_MAX_ANSWER_BYTES

    @property
    def limits(self) -> fallback_limits.Limits:
        return fallback_limits.Limits(self.max_choices, self.max_embedding_values, self.max_answer_bytes)


@dataclass(frozen=True)
class TenantsConfig:
    """Where tenant providers live and where the keys that seal their API keys come from.

    ``store`` is a SQLite path or a PostgreSQL URL (which may hold a password:
    never shown unmasked, see :mod:`airgap_proxy.database_url`). The other
    numbers concern PostgreSQL only.
    """

    store: str = field(default="tenants.db", repr=False)
    secret_key_file: str | None = None
    previous_secret_keys_file: str | None = None
    store_url_env: str = ENV_TENANT_DB
    refresh_s: float = 2.0
    max_stale_s: float = 10.0
    pool_size: int = 4
    timeout_s: float = 5.0

    @property
    def is_postgres(self) -> bool:
        return database_url.is_postgres(self.store)

    @property
    def store_shown(self) -> str:
        """The store as logs and errors show it: a URL with its password masked."""
        return database_url.mask(self.store)


@dataclass(frozen=True)
class ClientConfig:
    """A client of the proxy: the SHA-256 (hex) of its bearer key, and the one tenant it acts for."""

    name: str
    key_hash: str = field(repr=False)
    tenant: str


@dataclass(frozen=True)
class OllamaConfig:
    """The Ollama surface: whether model-management paths (create, copy, delete, blobs) are proxied."""

    allow_management: bool = False


@dataclass(frozen=True)
class ForwardProxyConfig:
    """The forward-proxy backstop (``CONNECT`` and absolute-form requests), off by default.

    ``telemetry_hosts`` is the built-in list of agent-tool telemetry hosts plus the operator's.
    """

    enabled: bool = False
    allow_ports: frozenset[int] = frozenset({80, 443})
    idle_timeout_s: float = 300.0
    telemetry_hosts: tuple[policy.HostPattern, ...] = field(
        default_factory=lambda: tuple(policy.HostPattern(p, w) for p, w in BUILTIN_TELEMETRY_HOSTS)
    )


@dataclass(frozen=True)
class AdminConfig:
    token: str | None = field(default=None, repr=False)
    token_env: str = ENV_ADMIN_TOKEN
    token_file: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 10 * 1024 * 1024
    max_in_flight: int = 1024
    max_connections: int = 4096


@dataclass(frozen=True)
class TimeoutsConfig:
    connect_s: float = 5.0
    upstream_s: float = 300.0
    client_header_s: float = 75.0
    client_body_s: float = 60.0
    shutdown_grace_s: float = 10.0


@dataclass(frozen=True)
class LoggingConfig:
    format: LogFormat = LogFormat.AUTO
    level: str = "info"


@dataclass(frozen=True)
class Config:
    listen: Listen = field(default_factory=Listen)
    airgapped: bool = True
    rules: policy.Rules = field(default_factory=policy.Rules)
    upstreams: tuple[UpstreamConfig, ...] = ()
    default_model: str | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    tenants: TenantsConfig = field(default_factory=TenantsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    forward_proxy: ForwardProxyConfig = field(default_factory=ForwardProxyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    secret_key: str | None = field(default=None, repr=False)
    previous_secret_keys: tuple[str, ...] = field(default=(), repr=False)
    clients: tuple[ClientConfig, ...] = ()
    # Worker processes for ``serve`` (``AIRGAP_PROXY_WORKERS``; 0: one per CPU). Not a file key:
    # the process model is chosen at start, which a reload cannot change.
    workers: int = 1
    source: str | None = None

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced by ``***``."""
        return {
            "source": self.source,
            "listen": {"host": self.listen.host, "port": self.listen.port},
            "workers": self.workers,
            "airgapped": self.airgapped,
            "policy": {
                "allow_networks": [str(n) for n in self.rules.allow_networks],
                "deny_networks": [str(n) for n in self.rules.deny_networks],
                "allow_hosts": [p.pattern for p in self.rules.allow_hosts],
                "deny_hosts_extra": [p.pattern for p in self.rules.deny_hosts if p.why == "deny_hosts"],
            },
            "upstreams": [
                {
                    "name": u.name,
                    "provider_type": u.provider_type.value,
                    "base_url": u.target.url if u.target else u.base_url,
                    "api_key": REDACTED if u.api_key else None,
                    "api_key_source": u.api_key_source,
                    "models": list(u.models),
                    "aliases": dict(u.aliases),
                    "priority": u.priority,
                    "max_in_flight": u.max_in_flight,
                    "apis": sorted(u.apis or u.provider_type.default_apis),
                }
                for u in self.upstreams
            ],
            "default_model": self.default_model,
            "health": {
                "interval_s": self.health.interval_s,
                "timeout_s": self.health.timeout_s,
                "unhealthy_after": self.health.unhealthy_after,
                "healthy_after": self.health.healthy_after,
            },
            "fallback": {
                "mode": self.fallback.mode.value,
                "responses_file": self.fallback.responses_file,
                "max_cpu_ms": self.fallback.max_cpu_ms,
                "max_choices": self.fallback.max_choices,
                "max_embedding_values": self.fallback.max_embedding_values,
                "max_answer_bytes": self.fallback.max_answer_bytes,
            },
            "tenants": {
                "store": self.tenants.store_shown,
                "store_url_env": self.tenants.store_url_env,
                "refresh_s": self.tenants.refresh_s,
                "max_stale_s": self.tenants.max_stale_s,
                "pool_size": self.tenants.pool_size,
                "timeout_s": self.tenants.timeout_s,
                "secret_key_file": self.tenants.secret_key_file,
                "previous_secret_keys_file": self.tenants.previous_secret_keys_file,
            },
            "clients": [{"name": c.name, "key_hash": REDACTED, "tenant": c.tenant} for c in self.clients],
            "admin": {"enabled": self.admin.token is not None, "token": REDACTED if self.admin.token else None},
            "ollama": {"allow_management": self.ollama.allow_management},
            "forward_proxy": {
                "enabled": self.forward_proxy.enabled,
                "allow_ports": sorted(self.forward_proxy.allow_ports),
                "idle_timeout_s": self.forward_proxy.idle_timeout_s,
                "telemetry_hosts": [h.pattern for h in self.forward_proxy.telemetry_hosts],
            },
            "secret_key": REDACTED if self.secret_key else None,
            "previous_secret_keys": [REDACTED for _ in self.previous_secret_keys],
            "limits": {
                "max_body_bytes": self.limits.max_body_bytes,
                "max_in_flight": self.limits.max_in_flight,
                "max_connections": self.limits.max_connections,
            },
            "timeouts": {
                "connect_s": self.timeouts.connect_s,
                "upstream_s": self.timeouts.upstream_s,
                "client_header_s": self.timeouts.client_header_s,
                "client_body_s": self.timeouts.client_body_s,
                "shutdown_grace_s": self.timeouts.shutdown_grace_s,
            },
            "logging": {"format": self.logging.format.value, "level": self.logging.level},
        }


ReadFile = Callable[[str], str]


def load_config(path: str | None, env: Mapping[str, str]) -> Config:
    """Load the YAML file (``path`` or ``AIRGAP_PROXY_CONFIG``) and apply ``env``.

    This is the one loader that ``serve`` and ``check-config`` both use.
    """
    path = path or env.get(ENV_CONFIG) or None
    raw: object = None
    base = Path.cwd()
    if path is not None:
        text = _read_file(path, "config")
        raw = parse_yaml(text, path)
        base = Path(path).resolve().parent

    def read_relative(name: str) -> str:
        # Relative paths in the file are relative to the file, as operators expect.
        return (base / name).read_text(encoding="utf-8")

    return parse_config(raw, env, read_relative, source=path)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the last one would silently win)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_mapping(node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, where: str) -> object:
    """Parse YAML text strictly; errors name ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(where, f"invalid YAML{at}: {problem}") from None


def _read_file(path: str, key: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(key, f"file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read file {path!r}: {exc.__class__.__name__}") from None


def parse_config(raw: object, env: Mapping[str, str], read_file: ReadFile, source: str | None = None) -> Config:
    """Build a :class:`Config` from parsed YAML ``raw`` (or None) and ``env``."""
    if raw is None:
        raw = {}
    root = _Section(raw, "", read_file)
    version = root.get("version", int, CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError("version", f"unsupported version {version} (expected {CONFIG_VERSION})")

    listen = _parse_listen(root.section("listen"), env)
    env_workers = env.get(ENV_WORKERS, "").strip()
    workers = parse_workers(ENV_WORKERS, env_workers) if env_workers else 1
    airgapped = root.get("airgapped", bool, True)
    env_airgapped = env.get(ENV_AIRGAPPED, "").strip()
    if env_airgapped:
        airgapped = _env_bool(ENV_AIRGAPPED, env_airgapped)
    rules = _parse_policy(root.section("policy"))
    upstreams = _parse_upstreams(root, env)
    default_model = root.get("default_model", str, None)
    if env.get(ENV_MODEL, "").strip():
        default_model = env[ENV_MODEL].strip()
    health = _parse_health(root.section("health"))
    fallback_config = _parse_fallback(root.section("fallback"), read_file)
    tenants, secret, previous_secrets = _parse_tenants(root.section("tenants"), env, read_file)
    clients = _parse_clients(root)
    admin = _parse_admin(root.section("admin"), env, read_file)
    ollama = _parse_ollama(root.section("ollama"))
    forward_proxy = _parse_forward_proxy(root.section("forward_proxy"))
    limits = _parse_limits(root.section("limits"))
    timeouts = _parse_timeouts(root.section("timeouts"))
    logging_config = _parse_logging(root.section("logging"))
    root.finish()
    return Config(
        listen=listen,
        airgapped=airgapped,
        rules=rules,
        upstreams=upstreams,
        default_model=default_model,
        health=health,
        fallback=fallback_config,
        tenants=tenants,
        admin=admin,
        ollama=ollama,
        forward_proxy=forward_proxy,
        limits=limits,
        timeouts=timeouts,
        logging=logging_config,
        secret_key=secret,
        previous_secret_keys=previous_secrets,
        clients=clients,
        workers=workers,
        source=source,
    )


class _Section:
    """A YAML mapping being read: typed getters, and unknown keys are errors."""

    def __init__(self, raw: object, path: str, read_file: ReadFile):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(path or "(top level)", f"expected a mapping, got {_kind(raw)}")
        self.raw: dict[Any, Any] = raw
        self.path = path
        self.read_file = read_file
        self.used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, kind: type[Any], default: Any) -> Any:
        self.used.add(key)
        if key not in self.raw or self.raw[key] is None:
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not bool and isinstance(value, bool):
            raise ConfigError(self.key_path(key), f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(self.key_path(key), f"expected {_kind_name(kind)}, got {_kind(value)}")
        return value

    def get_list(self, key: str, default: tuple[Any, ...] | None) -> list[Any] | None:
        value = self.get(key, list, None)
        if value is None:
            return None if default is None else list(default)
        return list(value)

    def section(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.raw.get(key), self.key_path(key), self.read_file)

    def finish(self) -> None:
        for key in self.raw:
            if not isinstance(key, str):
                raise ConfigError(self.path or "(top level)", f"key {key!r} is not a string")
            if key not in self.used:
                known = ", ".join(sorted(self.used))
                raise ConfigError(self.key_path(key), f"unknown key (known keys here: {known})")


def _kind(value: object) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), type(value).__name__)


def _kind_name(kind: type[Any]) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }[kind]


def _env_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false, got {value!r}")


def _parse_port(path: str, value: object) -> int:
    # isdigit() alone accepts digits int() rejects ('²'): ASCII digits only.
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(path, f"expected a port number 0-65535, got {value!r}")
    return value


def parse_workers(path: str, value: str) -> int:
    """A worker count: a positive integer, or ``0``/``auto`` (returned as 0: one per CPU)."""
    text = value.strip().lower()
    if text == "auto":
        return 0
    if text.isascii() and text.isdigit() and int(text) <= MAX_WORKERS:
        return int(text)
    raise ConfigError(
        path, f"expected a number of worker processes 1-{MAX_WORKERS}, or 0 or auto (one per CPU), got {value!r}"
    )


def _parse_listen(section: _Section, env: Mapping[str, str]) -> Listen:
    host = section.get("host", str, Listen.host)
    port = _parse_port(section.key_path("port"), section.get("port", int, Listen.port))
    section.finish()
    if env.get(ENV_HOST, "").strip():
        host = env[ENV_HOST].strip()
    env_port = env.get(ENV_PORT, "").strip()
    # A Kubernetes Service named "airgap-proxy" injects AIRGAP_PROXY_PORT=tcp://IP:PORT
    # into every pod of its namespace (service links); that value is not ours.
    if env_port and not env_port.startswith("tcp://"):
        port = _parse_port(ENV_PORT, env_port)
    return Listen(host=host, port=port)


def _parse_networks(section: _Section, key: str, default: tuple[str, ...]) -> tuple[policy.Network, ...]:
    items = section.get_list(key, default)
    assert items is not None
    networks = []
    for index, item in enumerate(items):
        path = f"{section.key_path(key)}[{index}]"
        if not isinstance(item, str):
            raise ConfigError(path, f"expected a CIDR string, got {_kind(item)}")
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(path, f"not a network in CIDR notation ({exc})") from None
    return tuple(networks)


def _parse_host_patterns(section: _Section, key: str, default: tuple[str, ...], why: str) -> list[policy.HostPattern]:
    items = section.get_list(key, default)
    assert items is not None
    patterns = []
    for index, item in enumerate(items):
        path = f"{section.key_path(key)}[{index}]"
        if not isinstance(item, str):
            raise ConfigError(path, f"expected a host name, got {_kind(item)}")
        try:
            validate = policy.validate_host_pattern if why else policy.validate_allow_pattern
            patterns.append(policy.HostPattern(validate(item), why))
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    return patterns


def _parse_policy(section: _Section) -> policy.Rules:
    allow_networks = _parse_networks(section, "allow_networks", policy.DEFAULT_ALLOW_NETWORKS)
    extra_deny = _parse_networks(section, "deny_networks", ())
    builtin_deny = tuple(ipaddress.ip_network(n) for n in policy.BUILTIN_DENY_NETWORKS)
    deny_networks = builtin_deny + tuple(n for n in extra_deny if n not in builtin_deny)
    allow_hosts = _parse_host_patterns(section, "allow_hosts", policy.DEFAULT_ALLOW_HOSTS, "")
    extra_deny_hosts = _parse_host_patterns(section, "deny_hosts", (), "deny_hosts")
    builtin_deny_hosts = [policy.HostPattern(p, w) for p, w in policy.BUILTIN_DENY_HOSTS]
    for index, allowed in enumerate(allow_hosts):
        probe = allowed.pattern.replace("*", "x")
        for denied in builtin_deny_hosts + extra_deny_hosts:
            if denied.matches(probe) or denied.pattern == allowed.pattern:
                raise ConfigError(
                    f"policy.allow_hosts[{index}]",
                    f"{allowed.pattern} is on the deny list ({denied.why or 'deny_hosts'}); it can never be local",
                )
    section.finish()
    return policy.Rules(
        allow_networks=allow_networks,
        deny_networks=deny_networks,
        allow_hosts=tuple(allow_hosts),
        deny_hosts=tuple(builtin_deny_hosts + extra_deny_hosts),
    )


def _parse_target(path: str, value: str) -> tuple[Target | None, str | None]:
    if not _URL_SHAPE.match(value):
        hint = f" (did you mean {_display_url(f'http://{value}', None)}?)" if value and "://" not in value else ""
        raise ConfigError(path, f"not a URL{hint}")
    if "?" in value or "#" in value:
        # Refused at load, not at request time: the query is where keys hide
        # (``?api_key=...``), so the value is never echoed, only its masked form.
        raise ConfigError(
            path,
            f"{_display_url(value, None)} has a query string or fragment; "
            "put a key in api_key (or its env/file form), not in the URL",
        )
    try:
        return parse_base_url(value), None
    except TargetError as exc:
        return None, str(exc)


def _display_url(url: str, target: Target | None) -> str:
    """``url`` safe to show: a rejected URL may carry a password as userinfo or a key as a query.

    A query or fragment is masked. A URL the parser accepted has no userinfo, so
    it is shown as given; in a rejected one everything up to the last ``@`` is
    masked (over-masking is safe).
    """
    for mark in "?#":
        if mark in url:
            url = f"{url.split(mark, 1)[0]}{mark}{REDACTED}"
    if target is not None or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"{REDACTED}@{url.rsplit('@', 1)[1]}"
    return f"{scheme}://{REDACTED}@{rest.rsplit('@', 1)[1]}"


def _parse_secret(section: _Section, env: Mapping[str, str], read_file: ReadFile, stem: str) -> tuple[str | None, str]:
    """Read ``<stem>``, ``<stem>_env`` or ``<stem>_file`` (at most one)."""
    inline = section.get(stem, str, None)
    env_name = section.get(f"{stem}_env", str, None)
    file_name = section.get(f"{stem}_file", str, None)
    given = [k for k, v in ((stem, inline), (f"{stem}_env", env_name), (f"{stem}_file", file_name)) if v is not None]
    if len(given) > 1:
        raise ConfigError(section.key_path(given[1]), f"give only one of {stem}, {stem}_env, {stem}_file")
    if inline is not None:
        return inline or None, "inline"
    if env_name is not None:
        if not _ENV_NAME_RE.match(env_name):
            # Never echo the value: it may be the secret itself, pasted in the wrong key.
            raise ConfigError(section.key_path(f"{stem}_env"), "must be the NAME of an environment variable")
        value = env.get(env_name) or None
        return value, f"env {env_name}" + ("" if value else " (not set)")
    if file_name is not None:
        try:
            value = read_file(file_name).strip()
        except FileNotFoundError:
            raise ConfigError(section.key_path(f"{stem}_file"), f"file {file_name!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                section.key_path(f"{stem}_file"), f"cannot read file {file_name!r}: {exc.__class__.__name__}"
            ) from None
        return value or None, f"file {file_name}"
    return None, "none"


def _parse_upstream(section: _Section, env: Mapping[str, str]) -> UpstreamConfig:
    name = section.get("name", str, None)
    if name is None:
        raise ConfigError(section.key_path("name"), "is required")
    if name in RESERVED_UPSTREAM_NAMES:
        raise ConfigError(section.key_path("name"), f"{name!r} is reserved for the fallback")
    if not _NAME_RE.match(name):
        raise ConfigError(section.key_path("name"), f"{name!r} is not a valid upstream name (letters, digits, _ . -)")
    provider_type = _parse_provider_type(
        section.key_path("provider_type"), section.get("provider_type", str, ProviderType.LOCAL_OPENAI_COMPATIBLE.value)
    )
    base_url = section.get("base_url", str, None)
    if base_url is None:
        raise ConfigError(section.key_path("base_url"), "is required")
    target, target_error = _parse_target(section.key_path("base_url"), base_url.strip())
    api_key, key_source = _parse_secret(section, env, section.read_file, "api_key")
    models = section.get_list("models", ())
    assert models is not None
    for index, model in enumerate(models):
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{section.key_path('models')}[{index}]", "expected a model name or glob")
    aliases_raw = section.get("aliases", dict, {})
    aliases = []
    for alias, model in aliases_raw.items():
        if not isinstance(alias, str) or not isinstance(model, str) or not alias or not model:
            raise ConfigError(section.key_path("aliases"), "expected a mapping of alias name to model name")
        aliases.append((alias, model))
    priority = section.get("priority", int, 0)
    max_in_flight = section.get("max_in_flight", int, None)
    if max_in_flight is not None and max_in_flight < 1:
        raise ConfigError(section.key_path("max_in_flight"), f"must be at least 1, got {max_in_flight}")
    apis = _parse_apis(section)
    section.finish()
    return UpstreamConfig(
        name=name,
        provider_type=provider_type,
        base_url=_display_url(base_url.strip(), target),
        target=target,
        target_error=target_error,
        api_key=api_key,
        api_key_source=key_source,
        models=tuple(models),
        aliases=tuple(aliases),
        priority=priority,
        max_in_flight=max_in_flight,
        apis=apis,
    )


def _parse_apis(section: _Section) -> frozenset[str]:
    raw = section.get_list("apis", None)
    if raw is None:
        return frozenset()
    if not raw:
        raise ConfigError(section.key_path("apis"), f"must name at least one of {', '.join(APIS)}")
    for index, api in enumerate(raw):
        if api not in APIS:
            raise ConfigError(f"{section.key_path('apis')}[{index}]", f"unknown API {api!r} (known: {', '.join(APIS)})")
    return frozenset(raw)


def _parse_provider_type(path: str, value: str) -> ProviderType:
    try:
        return ProviderType(value)
    except ValueError:
        known = ", ".join(p.value for p in ProviderType)
        raise ConfigError(path, f"unknown provider type {value!r} (known: {known})") from None


def _parse_upstreams(root: _Section, env: Mapping[str, str]) -> tuple[UpstreamConfig, ...]:
    items = root.get_list("upstreams", ())
    assert items is not None
    upstreams = []
    names: set[str] = set()
    for index, item in enumerate(items):
        upstream = _parse_upstream(_Section(item, f"upstreams[{index}]", root.read_file), env)
        if upstream.name in names:
            raise ConfigError(f"upstreams[{index}].name", f"duplicate upstream name {upstream.name!r}")
        names.add(upstream.name)
        upstreams.append(upstream)
    base_url = env.get(ENV_BASE_URL, "").strip()
    if base_url:
        target, target_error = _parse_target(ENV_BASE_URL, base_url)
        provider_raw = env.get(ENV_PROVIDER_TYPE, "").strip() or ProviderType.LOCAL_OPENAI_COMPATIBLE.value
        provider_type = _parse_provider_type(ENV_PROVIDER_TYPE, provider_raw)
        key = env.get(ENV_API_KEY) or None
        type_given = bool(env.get(ENV_PROVIDER_TYPE, "").strip())
        existing = next((u for u in upstreams if u.name == DEFAULT_UPSTREAM_NAME), None)
        default = UpstreamConfig(
            name=DEFAULT_UPSTREAM_NAME,
            provider_type=provider_type if type_given or existing is None else existing.provider_type,
            base_url=_display_url(base_url, target),
            target=target,
            target_error=target_error,
            api_key=key if key is not None or existing is None else existing.api_key,
            api_key_source=f"env {ENV_API_KEY}" if key else (existing.api_key_source if existing else "none"),
            models=existing.models if existing else (),
            aliases=existing.aliases if existing else (),
            priority=existing.priority if existing else min((u.priority for u in upstreams), default=0),
            max_in_flight=existing.max_in_flight if existing else None,
            apis=existing.apis if existing else frozenset(),
        )
        upstreams = [default] + [u for u in upstreams if u.name != DEFAULT_UPSTREAM_NAME]
    return tuple(upstreams)


def _positive(section: _Section, key: str, default: float) -> float:
    value = section.get(key, float, default)
    if not value > 0:
        raise ConfigError(section.key_path(key), f"must be greater than 0, got {value}")
    return float(value)


def _at_least_one(section: _Section, key: str, default: int) -> int:
    value = section.get(key, int, default)
    if value < 1:
        raise ConfigError(section.key_path(key), f"must be at least 1, got {value}")
    return int(value)


def _parse_health(section: _Section) -> HealthConfig:
    config = HealthConfig(
        interval_s=_positive(section, "interval_s", HealthConfig.interval_s),
        timeout_s=_positive(section, "timeout_s", HealthConfig.timeout_s),
        unhealthy_after=_at_least_one(section, "unhealthy_after", HealthConfig.unhealthy_after),
        healthy_after=_at_least_one(section, "healthy_after", HealthConfig.healthy_after),
    )
    section.finish()
    return config


def _parse_fallback(section: _Section, read_file: ReadFile) -> FallbackConfig:
    mode_raw = section.get("mode", str, FallbackMode.DETERMINISTIC.value)
    try:
        mode = FallbackMode(mode_raw)
    except ValueError:
        raise ConfigError(section.key_path("mode"), f"expected deterministic or error, got {mode_raw!r}") from None
    responses_file = section.get("responses_file", str, None)
    bounded = {key: _bounded(section, key, *bounds) for key, bounds in _FALLBACK_LIMITS.items()}
    section.finish()
    canned = EMPTY_CANNED
    if responses_file is not None:
        path = section.key_path("responses_file")
        try:
            text = read_file(responses_file)
        except FileNotFoundError:
            raise ConfigError(path, f"file {responses_file!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"cannot read file {responses_file!r}: {exc.__class__.__name__}") from None
        raw = parse_yaml(text, path)
        try:
            canned = parse_canned(raw)
        except ValueError as exc:
            raise ConfigError(path, f"{responses_file}: {exc}") from None
    return FallbackConfig(mode=mode, responses_file=responses_file, canned=canned, **bounded)


# fallback.max_*: (default, least, most).
_FALLBACK_LIMITS = {
    "max_cpu_ms": (FallbackConfig.max_cpu_ms, 1, 600_000),
    "max_choices": (FallbackConfig.max_choices, 1, 128),
    "max_embedding_values": (FallbackConfig.max_embedding_values, 1, 2048 * 4096),
    "max_answer_bytes": (FallbackConfig.max_answer_bytes, 1024, 1 << 30),
}


def _bounded(section: _Section, key: str, default: int, least: int, most: int) -> int:
    value = section.get(key, int, default)
    if not least <= value <= most:
        raise ConfigError(section.key_path(key), f"must be between {least} and {most}, got {value}")
    return int(value)


def _parse_ollama(section: _Section) -> OllamaConfig:
    allow = section.get("allow_management", bool, False)
    section.finish()
    return OllamaConfig(allow_management=allow)


def _parse_forward_proxy(section: _Section) -> ForwardProxyConfig:
    enabled = section.get("enabled", bool, False)
    ports = section.get_list("allow_ports", tuple(sorted(ForwardProxyConfig.allow_ports)))
    assert ports is not None
    for index, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{section.key_path('allow_ports')}[{index}]", f"not a port number 1-65535: {port!r}")
    idle = _positive(section, "idle_timeout_s", ForwardProxyConfig.idle_timeout_s)
    extra = _parse_host_patterns(section, "telemetry_hosts", (), "forward_proxy.telemetry_hosts")
    section.finish()
    builtin = [policy.HostPattern(p, w) for p, w in BUILTIN_TELEMETRY_HOSTS]
    known = {h.pattern for h in builtin}
    hosts = builtin + [h for h in extra if h.pattern not in known]
    return ForwardProxyConfig(enabled, frozenset(ports), idle, tuple(hosts))


def _parse_admin(section: _Section, env: Mapping[str, str], read_file: ReadFile) -> AdminConfig:
    token_env = section.get("token_env", str, ENV_ADMIN_TOKEN)
    token_file = section.get("token_file", str, None)
    section.finish()
    if not _ENV_NAME_RE.match(token_env):
        raise ConfigError("admin.token_env", "must be the NAME of an environment variable")
    token = env.get(token_env) or None
    if token is None and token_file is not None:
        try:
            token = read_file(token_file).strip() or None
        except FileNotFoundError:
            raise ConfigError("admin.token_file", f"file {token_file!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                "admin.token_file", f"cannot read file {token_file!r}: {exc.__class__.__name__}"
            ) from None
    if token is not None and len(token) < 16:
        raise ConfigError(
            token_env if env.get(token_env) else "admin.token_file", "admin token must be at least 16 characters"
        )
    return AdminConfig(token=token, token_env=token_env, token_file=token_file)


def _read_optional(read_file: ReadFile, path: str, name: str) -> str:
    try:
        return read_file(name)
    except FileNotFoundError:
        raise ConfigError(path, f"file {name!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read file {name!r}: {exc.__class__.__name__}") from None


def _check_secret_key(where: str, text: str) -> None:
    # The key itself is never part of the message: it may be the secret.
    try:
        crypto.parse_secret_key(text)
    except crypto.KeyFormatError as exc:
        raise ConfigError(where, str(exc)) from None


def _parse_tenants(
    section: _Section, env: Mapping[str, str], read_file: ReadFile
) -> tuple[TenantsConfig, str | None, tuple[str, ...]]:
    """The tenant store and the secret keys that seal tenant API keys.

    1. The store: the variable ``tenants.store_url_env`` names
       (``AIRGAP_PROXY_TENANT_DB`` by default; a PostgreSQL URL, for a
       Kubernetes Secret) when set, else ``tenants.store`` (a SQLite path or a
       PostgreSQL URL).
    2. The current key: ``AIRGAP_PROXY_SECRET_KEY``, else ``tenants.secret_key_file``.
    3. Previous keys (decryption only, for rotation): ``AIRGAP_PROXY_PREVIOUS_SECRET_KEYS``
       (comma-separated), else ``tenants.previous_secret_keys_file`` (one per line).
    """
    explicit_store, explicit_env = section.has("store"), section.has("store_url_env")
    store = section.get("store", str, TenantsConfig.store)
    url_env = section.get("store_url_env", str, ENV_TENANT_DB)
    key_file = section.get("secret_key_file", str, None)
    previous_file = section.get("previous_secret_keys_file", str, None)
    refresh_s = _positive(section, "refresh_s", TenantsConfig.refresh_s)
    max_stale_s = _positive(section, "max_stale_s", TenantsConfig.max_stale_s)
    pool_size = section.get("pool_size", int, TenantsConfig.pool_size)
    timeout_s = _positive(section, "timeout_s", TenantsConfig.timeout_s)
    section.finish()
    store = _store_location(section, store, (explicit_store, explicit_env), url_env, env)
    if max_stale_s <= refresh_s:
        raise ConfigError(section.key_path("max_stale_s"), f"must be more than tenants.refresh_s ({refresh_s:g})")
    if not 1 <= pool_size <= 100:
        raise ConfigError(section.key_path("pool_size"), "must be between 1 and 100")
    secret = env.get(ENV_SECRET_KEY, "").strip() or None
    where = ENV_SECRET_KEY
    if secret is None and key_file is not None:
        where = section.key_path("secret_key_file")
        secret = _read_optional(read_file, where, key_file).strip() or None
    if secret is not None:
        _check_secret_key(where, secret)
    previous_text = env.get(ENV_PREVIOUS_SECRET_KEYS, "")
    where, separator = ENV_PREVIOUS_SECRET_KEYS, ","
    if not previous_text.strip() and previous_file is not None:
        where, separator = section.key_path("previous_secret_keys_file"), "\n"
        previous_text = _read_optional(read_file, where, previous_file)
    previous = tuple(p.strip() for p in previous_text.split(separator) if p.strip())
    for index, text in enumerate(previous):
        _check_secret_key(f"{where}[{index}]", text)
    config = TenantsConfig(
        store=store,
        secret_key_file=key_file,
        previous_secret_keys_file=previous_file,
        store_url_env=url_env,
        refresh_s=refresh_s,
        max_stale_s=max_stale_s,
        pool_size=pool_size,
        timeout_s=timeout_s,
    )
    return config, secret, previous


def _store_location(
    section: _Section, store: str, explicit: tuple[bool, bool], url_env: str, env: Mapping[str, str]
) -> str:
    """The store from the ``tenants.store_url_env`` variable or ``tenants.store``; messages never show a password."""
    explicit_store, explicit_env = explicit
    where = section.key_path("store_url_env")
    if not _ENV_NAME_RE.match(url_env):
        raise ConfigError(where, "must be the NAME of an environment variable")
    if explicit_store and explicit_env:
        raise ConfigError(where, "give tenants.store or tenants.store_url_env, not both")
    value = env.get(url_env, "").strip()
    if value:
        if not database_url.is_postgres(value):
            raise ConfigError(url_env if not explicit_env else where, f"{url_env} must hold a postgresql:// URL")
        return value
    if explicit_env:
        raise ConfigError(where, f"environment variable {url_env} is not set (it must hold a postgresql:// URL)")
    if not store.strip():
        raise ConfigError(section.key_path("store"), "must be a file path or a postgresql:// URL")
    return store


def _parse_clients(root: _Section) -> tuple[ClientConfig, ...]:
    """``clients``: every key is read before any is validated, so unknown keys are reported first."""
    items = root.get_list("clients", ())
    assert items is not None
    clients: list[ClientConfig] = []
    for index, item in enumerate(items):
        section = _Section(item, f"clients[{index}]", root.read_file)
        name = section.get("name", str, None)
        key_hash = section.get("key_hash", str, None)
        tenant = section.get("tenant", str, None)
        section.finish()
        for key, value in (("name", name), ("key_hash", key_hash), ("tenant", tenant)):
            if value is None:
                raise ConfigError(section.key_path(key), "is required")
        assert name is not None and key_hash is not None and tenant is not None
        if not _NAME_RE.match(name):
            raise ConfigError(section.key_path("name"), f"{name!r} is not a valid client name (letters, digits, _ . -)")
        digest = key_hash.strip().lower().removeprefix("sha256:")
        if not _SHA256_HEX_RE.match(digest):
            raise ConfigError(
                section.key_path("key_hash"),
                "expected the SHA-256 of the client's key as 64 hex digits, optionally after 'sha256:' "
                '(printf %s "$KEY" | sha256sum), never the key itself',
            )
        if not TENANT_ID_RE.match(tenant):
            raise ConfigError(
                section.key_path("tenant"), f"{tenant!r} is not a valid tenant id (letters, digits, _ . -, at most 64)"
            )
        for other in clients:
            if other.name == name:
                raise ConfigError(section.key_path("name"), f"duplicate client name {name!r}")
            if other.key_hash == digest:
                raise ConfigError(
                    section.key_path("key_hash"), f"the same key is already given to client {other.name!r}"
                )
        clients.append(ClientConfig(name=name, key_hash=digest, tenant=tenant))
    return tuple(clients)


def _parse_limits(section: _Section) -> LimitsConfig:
    max_body = section.get("max_body_bytes", int, LimitsConfig.max_body_bytes)
    if not 1024 <= max_body <= 1 << 30:
        raise ConfigError(section.key_path("max_body_bytes"), "must be between 1024 and 1073741824")
    config = LimitsConfig(
        max_body_bytes=max_body,
        max_in_flight=_at_least_one(section, "max_in_flight", LimitsConfig.max_in_flight),
        max_connections=_at_least_one(section, "max_connections", LimitsConfig.max_connections),
    )
    section.finish()
    return config


def _parse_timeouts(section: _Section) -> TimeoutsConfig:
    config = TimeoutsConfig(
        connect_s=_positive(section, "connect_s", TimeoutsConfig.connect_s),
        upstream_s=_positive(section, "upstream_s", TimeoutsConfig.upstream_s),
        client_header_s=_positive(section, "client_header_s", TimeoutsConfig.client_header_s),
        client_body_s=_positive(section, "client_body_s", TimeoutsConfig.client_body_s),
        shutdown_grace_s=_positive(section, "shutdown_grace_s", TimeoutsConfig.shutdown_grace_s),
    )
    section.finish()
    return config


def _parse_logging(section: _Section) -> LoggingConfig:
    fmt_raw = section.get("format", str, LogFormat.AUTO.value)
    try:
        fmt = LogFormat(fmt_raw)
    except ValueError:
        raise ConfigError(section.key_path("format"), f"expected auto, json or console, got {fmt_raw!r}") from None
    level = section.get("level", str, "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError(section.key_path("level"), f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    section.finish()
    return LoggingConfig(format=fmt, level=level)
