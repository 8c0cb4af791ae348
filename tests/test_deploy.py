"""The deployment artefacts: Dockerfile, Compose files, Kubernetes manifests.

No Docker engine or cluster runs here, so each artefact is checked against
the real thing it must agree with: the Compose specification's JSON schema
(vendored by check-jsonschema), the Kubernetes OpenAPI schemas (vendored by
kubernetes-validate), and the proxy itself: its environment variables, its
routes, its console script, and the proxy started exactly as the container
starts it (a subprocess on a free loopback port).
"""

from __future__ import annotations

import fnmatch
import http.client
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import setuptools
import yaml
from dockerfile_parse import DockerfileParser

import airgap_proxy
from airgap_proxy import cli, config, policy
from airgap_proxy.app import create_app
from airgap_proxy.policy import targets
from airgap_proxy.server import SHUTDOWN_GRACE_S

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "compose"
KUBE_DIR = ROOT / "deploy" / "kubernetes"
KUBE_PATTERNS = ("gateway", "sidecar")
KUBE_VERSIONS = ("1.29.0", "1.37.0")  # native sidecars need 1.29; the newest schemas shipped
PROXY_ENV = frozenset(v for k, v in vars(config).items() if k.startswith("ENV_"))
DEFAULT_MODEL = "llama3.2:3b-instruct-q4_K_M"
OLLAMA_IMAGE = "ollama/ollama:0.6.7"
SECRET_NAME, SECRET_KEY = "airgap-llm-creds", "api-key"
FAKE_SECRET = "sk-fake-secret-from-the-test"
# The LLM servers of the overlays and the port each listens on.
LLM_SERVERS = {"ollama": 11434, "vllm": 8000, "litellm": 4000}
COMPOSE_COMBINATIONS = {
    "demo": ("docker-compose.demo.yml",),
    "ollama": ("docker-compose.demo.yml", "docker-compose.airgap.yml"),
    "litellm": ("docker-compose.demo.yml", "docker-compose.airgap.yml", "docker-compose.airgap.litellm.yml"),
    "vllm": ("docker-compose.demo.yml", "docker-compose.airgap.vllm.yml"),
}
AIRGAP_COMBINATIONS = ("ollama", "litellm", "vllm")
START_TIMEOUT_S = 20.0


def app_routes() -> set[str]:
    """The paths the proxy serves, read from its router (no server started)."""
    app = create_app(config.parse_config({}, {}, lambda path: ""))
    return {r.canonical for r in app.router.resources()}


def route_exists(path: str) -> bool:
    for canonical in app_routes():
        if canonical == path or (canonical.endswith("{tail}") and path.startswith(canonical[: -len("{tail}")])):
            return True
    return False


# --------------------------------------------------------------------------- #
# Dockerfile
# --------------------------------------------------------------------------- #


@dataclass
class Image:
    """What the Dockerfile's final stage sets, as ``docker build`` would."""

    stages: list[list[dict[str, Any]]]
    parent_images: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    cmd: list[str]
    healthcheck_options: dict[str, str]
    healthcheck: list[str]
    workdir: str
    volumes: list[str]
    user: str
    exposed: list[str]

    def final(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.stages[-1] if i["instruction"] == instruction]


def load_image() -> Image:
    parser = DockerfileParser(str(DOCKERFILE), cache_content=True)
    stages: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(item)
    final = stages[-1]

    def last(instruction: str) -> str:
        values = [i["value"] for i in final if i["instruction"] == instruction]
        assert values, f"the final stage has no {instruction}"
        return str(values[-1])

    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(\[.*\])", last("HEALTHCHECK"), re.S)
    assert match, "HEALTHCHECK must use the exec form: HEALTHCHECK [options] CMD [...]"
    options = dict(opt.lstrip("-").split("=", 1) for opt in match.group(1).split())
    volumes: list[str] = []
    for value in (i["value"] for i in final if i["instruction"] == "VOLUME"):
        volumes += json.loads(value) if value.startswith("[") else value.split()
    env = {k: v for k, v in parser.envs.items() if k != "PATH"}
    return Image(
        stages=stages,
        parent_images=list(parser.parent_images),
        env=env,
        labels=dict(parser.labels),
        cmd=json.loads(last("CMD")),
        healthcheck_options=options,
        healthcheck=json.loads(match.group(2)),
        workdir=last("WORKDIR"),
        volumes=volumes,
        user=last("USER"),
        exposed=[p for value in (i["value"] for i in final if i["instruction"] == "EXPOSE") for p in value.split()],
    )


IMAGE = load_image()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    assert len(IMAGE.stages) >= 2
    assert set(IMAGE.parent_images) == {"python:3.11-slim"}
    copies = IMAGE.final("COPY")
    assert any(c.startswith("--from=build ") for c in copies), "the runtime stage copies the build stage's result"
    # The runtime stage installs nothing and fetches nothing.
    for run in IMAGE.final("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|curl|wget)\b", run), run


def test_runtime_stage_runs_as_a_fixed_non_root_user() -> None:
    uid, _, gid = IMAGE.user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so that Kubernetes' runAsNonRoot can check it"
    assert gid.isdigit() and int(gid) != 0
    created = " ".join(IMAGE.final("RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created


def test_image_writes_only_to_the_data_volume() -> None:
    assert IMAGE.volumes == [IMAGE.workdir] == ["/data"]
    uid, _, gid = IMAGE.user.partition(":")
    assert re.search(rf"install -d -o {uid} -g {gid} .*{IMAGE.workdir}\b", " ".join(IMAGE.final("RUN")))
    assert IMAGE.env.get("PYTHONDONTWRITEBYTECODE") == "1", "no .pyc writes on a read-only root file system"
    # Relative paths in the config (the tenant store) land in the volume.
    store = PurePosixPath(IMAGE.workdir) / config.TenantsConfig().store
    assert store.is_relative_to(IMAGE.volumes[0])


def test_cmd_is_the_serve_command_of_the_console_script() -> None:
    assert IMAGE.cmd == ["airgap-proxy", "serve"]
    assert PYPROJECT["project"]["scripts"]["airgap-proxy"] == "airgap_proxy.cli:main"
    assert cli.build_parser().parse_args(IMAGE.cmd[1:]).command == "serve"
    assert not IMAGE.final("ENTRYPOINT")


def test_oci_labels() -> None:
    prefix = "org.opencontainers.image."
    assert IMAGE.labels[prefix + "title"] == PYPROJECT["project"]["name"]
    assert IMAGE.labels[prefix + "version"] == airgap_proxy.__version__
    assert IMAGE.labels[prefix + "licenses"] == PYPROJECT["project"]["license"]["text"]
    assert IMAGE.labels[prefix + "base.name"] == "python:3.11-slim"
    for name in ("description", "revision"):
        assert IMAGE.labels[prefix + name]


def test_container_listens_on_every_interface_on_the_exposed_port() -> None:
    effective = config.parse_config({}, IMAGE.env, lambda path: "")
    assert effective.listen.host == "0.0.0.0"
    assert IMAGE.exposed == [str(effective.listen.port)] == ["8080"]
    assert set(IMAGE.env) <= PROXY_ENV | {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    # An image default here would silently override the operator's config file.
    assert not {config.ENV_AIRGAPPED, config.ENV_PORT, config.ENV_BASE_URL} & set(IMAGE.env)


def test_healthcheck_asks_the_liveness_route_with_the_standard_library() -> None:
    assert IMAGE.healthcheck[:2] == ["python", "-c"]
    code = IMAGE.healthcheck[2]
    assert "urllib" not in code, "urllib reads HTTP_PROXY; http.client does not"
    [path] = re.findall(r"'(/[a-z]+)'", code)
    assert path == "/healthz" and route_exists(path)
    options = IMAGE.healthcheck_options
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    assert int(options["timeout"].rstrip("s")) < int(options["interval"].rstrip("s"))


# --- the build context ------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    regex: re.Pattern[str]
    exclusion: bool
    pattern: str


def dockerignore_rules() -> list[IgnoreRule]:
    """``.dockerignore`` as Docker reads it: Go ``filepath.Match`` plus ``**``."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        pattern = line[1:].strip() if exclusion else line
        pattern = os.path.normpath(pattern).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append(IgnoreRule(re.compile(regex + r"\Z"), exclusion, pattern))
    return rules


def is_ignored(rel: str, rules: list[IgnoreRule]) -> bool:
    """Docker's ``MatchesOrParentMatches``: the last rule matching the path or a parent wins."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for rule in rules:
        if any(rule.regex.match(c) for c in candidates):
            ignored = not rule.exclusion
    return ignored


def build_context() -> set[str]:
    """The files ``docker build .`` sends, given ``.dockerignore``."""
    rules = dockerignore_rules()
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        kept = []
        for name in dirnames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            reincluded = any(r.exclusion and (r.pattern == rel or r.pattern.startswith(rel + "/")) for r in rules)
            if not is_ignored(rel, rules) or reincluded:
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not is_ignored(rel, rules):
                out.add(rel)
    return out


def test_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    context = build_context()
    package_files = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "airgap_proxy").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    }
    assert context == {"pyproject.toml", "README.md"} | package_files
    build_copies = [i["value"] for i in IMAGE.stages[0] if i["instruction"] == "COPY"]
    for copy in build_copies:
        *sources, _ = shlex.split(copy)
        for source in sources:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), source


def test_pip_install_in_the_image_takes_every_package_and_file() -> None:
    """Mirror setuptools' discovery as pyproject configures it: nothing is left out of the image."""
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    finder = setuptools.find_namespace_packages if find.get("namespaces", True) else setuptools.find_packages
    found = set(finder(where=str(ROOT), include=find["include"]))
    on_disk = {
        ".".join(p.relative_to(ROOT).parts)
        for p in (ROOT / "airgap_proxy").rglob("*")
        if p.is_dir() and "__pycache__" not in p.parts and any(p.glob("*.py"))
    } | {"airgap_proxy"}
    assert on_disk <= found, f"not installed by pip: {sorted(on_disk - found)}"
    data = [
        p
        for p in (ROOT / "airgap_proxy").rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc", ".pyi"} and "__pycache__" not in p.parts
    ]
    declared = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    for path in data:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        patterns = declared.get(package, []) + declared.get("*", [])
        assert any(fnmatch.fnmatch(path.name, pat) for pat in patterns), f"{path} is not package data"


# --------------------------------------------------------------------------- #
# The proxy, started as the container starts it
# --------------------------------------------------------------------------- #

# Runs the console script's entry point under an audit hook that refuses, as a
# read-only root file system would, every write outside the data directory.
READ_ONLY_ROOT = """
import importlib, os, sys
DATA = os.path.realpath(os.environ.pop("TEST_DATA_DIR"))
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link",
               "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "sqlite3.connect"}

def allowed(path):
    real = os.path.realpath(os.fsdecode(path))
    return real == DATA or real.startswith(DATA + os.sep) or real == os.devnull or path == ":memory:"

def refuse(path):
    sys.stderr.write("READ-ONLY ROOT: write to %s refused\\n" % (path,))
    raise OSError(30, "Read-only file system", os.fsdecode(path))

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITES)
        if writing and isinstance(path, (str, bytes, os.PathLike)) and not allowed(path):
            refuse(path)
    elif event in PATH_EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)) and not allowed(args[0]):
        refuse(args[0])

sys.addaudithook(hook)
module, _, function = sys.argv[1].partition(":")
sys.argv = sys.argv[2:]
sys.exit(getattr(importlib.import_module(module), function)())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, *, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Container:
    """The proxy as ``docker run`` starts it, on 127.0.0.1 instead of 0.0.0.0."""

    process: subprocess.Popen[bytes]
    port: int
    data: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def stderr(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=SHUTDOWN_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise


def start_container(tmp: Path, extra_env: Mapping[str, str] | None = None) -> Container:
    """``CMD`` with the Dockerfile's ``ENV`` (plus ``extra_env``), cwd = the data volume."""
    port = free_port()
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = tmp / "proxy.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",
        "PYTHONPATH": str(ROOT),
        **IMAGE.env,
        **(extra_env or {}),
        # Never bind anything but loopback in a test.
        config.ENV_HOST: "127.0.0.1",
        config.ENV_PORT: str(port),
        "TEST_DATA_DIR": str(data),
    }
    [executable, *args] = IMAGE.cmd
    entry_point = PYPROJECT["project"]["scripts"][executable]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", READ_ONLY_ROOT, entry_point, executable, *args],
            cwd=data,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    container = Container(process, port, data, log, env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the proxy exited with {process.returncode}:\n{container.stderr()}")
        try:
            if get(port, "/healthz")[0] == 200:
                return container
        except OSError:
            time.sleep(0.05)
    container.stop(signal.SIGKILL)
    raise AssertionError(f"the proxy did not answer /healthz within {START_TIMEOUT_S}s:\n{container.stderr()}")


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    running = start_container(tmp_path_factory.mktemp("container"))
    yield running
    running.stop()


def run_healthcheck(command: list[str], port: int) -> subprocess.CompletedProcess[bytes]:
    """Run a health-check command as the container runtime would (its environment, any cwd)."""
    env = {"PATH": os.environ.get("PATH", ""), **IMAGE.env, config.ENV_PORT: str(port)}
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=15, check=False)


def test_container_command_serves_the_probes(container: Container) -> None:
    status, _, body = get(container.port, "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, _, body = get(container.port, "/readyz")
    assert status in (200, 503)
    assert "status" in json.loads(body)


def test_container_answers_a_chat_completion_without_upstream(container: Container) -> None:
    """No upstream: the deterministic fallback (200) or, without it, 503 no_healthy_upstream."""
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    status, headers, body = get(container.port, "/v1/chat/completions", method="POST", body=chat)
    data = json.loads(body)
    assert headers.get("x-request-id")
    if status == 200:
        assert headers.get("x-airgap-upstream") == "deterministic"
        assert data["object"] == "chat.completion"
        assert isinstance(data["choices"][0]["message"]["content"], str)
    else:
        assert status == 503
        assert set(data) == {"error"}
        assert set(data["error"]) == {"message", "type", "code", "param"}
        assert data["error"]["code"] == "no_healthy_upstream"


def test_container_writes_nothing_outside_the_data_volume(container: Container) -> None:
    for path in ("/healthz", "/readyz", "/v1/models"):
        get(container.port, path)
    assert container.process.poll() is None
    assert "READ-ONLY ROOT" not in container.stderr()


def test_healthcheck_command_passes_against_the_running_proxy(container: Container) -> None:
    result = run_healthcheck(IMAGE.healthcheck, container.port)
    assert result.returncode == 0, result.stderr.decode()


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    result = run_healthcheck(IMAGE.healthcheck, free_port())
    assert result.returncode == 1


def test_sigterm_stops_the_container_cleanly(tmp_path: Path) -> None:
    running = start_container(tmp_path)
    started = time.monotonic()
    assert running.stop(signal.SIGTERM) == 0, running.stderr()
    assert time.monotonic() - started < SHUTDOWN_GRACE_S


# --------------------------------------------------------------------------- #
# Compose
# --------------------------------------------------------------------------- #

COMPOSE_SCHEMA = json.loads(
    files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text(encoding="utf-8")
)
COMPOSE_VALIDATOR = jsonschema.validators.validator_for(COMPOSE_SCHEMA)(COMPOSE_SCHEMA)
_TEMPLATE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>))")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.S)
# Compose replaces these lists instead of merging them.
_REPLACED_LISTS = {"command", "entrypoint", "test"}


def interpolate(text: str, env: Mapping[str, str], used: set[str]) -> str:
    """Compose's variable interpolation (``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ...)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            used.add(match.group("named"))
            return env.get(match.group("named"), "")
        if match.group("braced") is None:
            raise ValueError(f"invalid interpolation at {text[match.start() : match.start() + 12]!r} (use $$)")
        parsed = _BRACED.fullmatch(match.group("braced"))
        if parsed is None or "${" in (parsed.group(3) or ""):
            raise ValueError(f"invalid interpolation ${{{match.group('braced')}}}")
        name, op, arg = parsed.groups()
        used.add(name)
        value = env.get(name)
        if op in (":-", "-"):
            unset = not value if op == ":-" else value is None
            return interpolate(arg, env, used) if unset else str(value)
        if op in (":?", "?"):
            if (not value) if op == ":?" else value is None:
                raise ValueError(f"{name} is required: {arg}")
            return str(value)
        if op in (":+", "+"):
            return interpolate(arg, env, used) if (value if op == ":+" else value is not None) else ""
        return value or ""

    return _TEMPLATE.sub(substitute, text)


def interpolate_tree(node: Any, env: Mapping[str, str], used: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, used) for v in node]
    if isinstance(node, str):
        return interpolate(node, env, used)
    return node


def merge(base: Any, override: Any, path: str = "") -> Any:
    """Compose's merge for what these files use: mappings merge key by key.

    Lists that Compose merges by its own rules (ports, volumes, ...) may be set
    in one file only, so that this merge is exactly Compose's.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value, f"{path}.{key}") if key in base else value
        return out
    if isinstance(base, list) and isinstance(override, list) and path.rsplit(".", 1)[-1] not in _REPLACED_LISTS:
        raise AssertionError(f"{path}: a list set in two files; use a mapping or set it in one file")
    return override


@dataclass
class Project:
    files: tuple[str, ...]
    model: dict[str, Any]
    variables: set[str]

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return dict(self.model["services"])

    def service_networks(self, name: str) -> list[str]:
        networks = self.services[name].get("networks") or ["default"]
        return list(networks)

    def network(self, name: str) -> dict[str, Any]:
        return dict((self.model.get("networks") or {}).get(name) or {})

    def has_route_out(self, name: str) -> bool:
        for net in self.service_networks(name):
            spec = self.network(net)
            masquerade = (spec.get("driver_opts") or {}).get("com.docker.network.bridge.enable_ip_masquerade")
            if not spec.get("internal") and str(masquerade).lower() != "false":
                return True
        return False


def load_compose(names: tuple[str, ...], env: Mapping[str, str] | None = None) -> Project:
    """Validate each file, interpolate, merge in order, validate the result."""
    model: dict[str, Any] = {}
    used: set[str] = set()
    for name in names:
        raw = yaml.safe_load((COMPOSE_DIR / name).read_text(encoding="utf-8"))
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in COMPOSE_VALIDATOR.iter_errors(raw)]
        assert not errors, f"{name}: {errors}"
        model = merge(model, interpolate_tree(raw, env or {}, used))
    errors = [e.message for e in COMPOSE_VALIDATOR.iter_errors(model)]
    assert not errors, f"{names}: {errors}"
    return Project(names, model, used)


@pytest.fixture(scope="module", params=sorted(COMPOSE_COMBINATIONS))
def project(request: pytest.FixtureRequest) -> Project:
    return load_compose(COMPOSE_COMBINATIONS[request.param])


def test_every_compose_file_is_used_and_valid() -> None:
    used = {name for combo in COMPOSE_COMBINATIONS.values() for name in combo}
    assert used == {p.name for p in COMPOSE_DIR.glob("docker-compose*.yml")}


def test_compose_references_resolve(project: Project) -> None:
    services = project.services
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                dep_spec = services[dep]
                assert "healthcheck" in dep_spec or dep_spec.get("build", {}).get("dockerfile") == "Dockerfile"
            if spec["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} runs once"
        for net in project.service_networks(name):
            assert net == "default" or net in (project.model.get("networks") or {}), f"{name}: network {net}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).is_file(), f"{name}: bind mount {source}"
            else:
                assert source in (project.model.get("volumes") or {}), f"{name}: volume {source}"
        assert isinstance(service.get("environment", {}), dict), f"{name}: environment must be a mapping"


def test_compose_images_are_pinned_and_ports_loopback_only(project: Project) -> None:
    for name, service in project.services.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("", "latest"), f"{name}: pin {image}"
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for name in ("ollama", "ollama-pull"):
        if name in project.services:
            assert project.services[name]["image"] == OLLAMA_IMAGE


def test_compose_proxy_is_the_repository_image_hardened(project: Project) -> None:
    proxy = project.services["airgap-proxy"]
    assert (COMPOSE_DIR / proxy["build"]["context"]).resolve() == ROOT
    assert proxy["build"]["dockerfile"] == DOCKERFILE.name
    assert proxy["image"] == f"airgap-proxy:{airgap_proxy.__version__}"
    assert proxy["read_only"] is True
    assert proxy["cap_drop"] == ["ALL"]
    assert any(v.split(":")[1] == IMAGE.volumes[0] for v in proxy["volumes"]), "a volume on the data directory"
    published = [p for p in proxy["ports"] if p.rsplit(":", 1)[1] == IMAGE.exposed[0]]
    assert published, "the container port published is the one the image listens on"


def proxy_config(project: Project, resolve: policy.Resolve | None = None) -> config.Config:
    env = {**IMAGE.env, **project.services["airgap-proxy"].get("environment", {})}
    assert set(env) - set(IMAGE.env) <= PROXY_ENV, f"unknown variables: {set(env) - PROXY_ENV}"
    return config.parse_config({}, env, lambda path: "")


def compose_resolver(project: Project) -> policy.Resolve:
    """Docker's embedded DNS: service names resolve to addresses of their networks."""
    names = sorted(project.services)

    def resolve(host: str) -> list[targets.IPAddress]:
        if host not in names:
            raise policy.ResolutionError(host)
        return [ipaddress.ip_address(f"172.20.0.{names.index(host) + 2}")]

    return resolve


def test_compose_agents_reach_the_proxy(project: Project) -> None:
    agents = project.services["agents"]
    url = urlsplit(agents["environment"]["LLM_BASE_URL"])
    listen = proxy_config(project).listen
    assert (url.hostname, url.port) == ("airgap-proxy", listen.port)
    assert route_exists(url.path + "/chat/completions")
    assert set(project.service_networks("agents")) & set(project.service_networks("airgap-proxy"))


@pytest.mark.parametrize("combo", AIRGAP_COMBINATIONS)
def test_compose_overlay_keeps_the_llm_side_without_a_route_out(combo: str) -> None:
    project = load_compose(COMPOSE_COMBINATIONS[combo])
    assert project.network("llm").get("internal") is True
    with_route = {name for name in project.services if project.has_route_out(name)}
    pulls = {name for name in project.services if name.endswith("-pull")}
    assert with_route == {"agents", "airgap-proxy"} | pulls
    for name in pulls:
        assert project.service_networks(name) == ["model-fetch"]
        assert project.services[name]["restart"] == "no"
    servers = set(LLM_SERVERS) & set(project.services)
    assert servers, "an LLM server"
    for name in servers:
        assert "llm" in project.service_networks(name)
        assert not project.has_route_out(name)


@pytest.mark.parametrize("combo", AIRGAP_COMBINATIONS)
def test_compose_overlay_points_the_proxy_at_a_local_server(combo: str) -> None:
    project = load_compose(COMPOSE_COMBINATIONS[combo])
    proxy = project.services["airgap-proxy"]
    effective = proxy_config(project)
    assert effective.airgapped is True
    [upstream] = effective.upstreams
    assert upstream.target is not None
    server = upstream.target.host
    assert server in LLM_SERVERS and upstream.target.port == LLM_SERVERS[server]
    assert upstream.provider_type.value == f"local-{server}"
    assert "llm" in project.service_networks(server) and "llm" in project.service_networks("airgap-proxy")
    assert proxy["depends_on"][server]["condition"] == "service_healthy"
    command = project.services[server].get("command") or []
    if "--port" in command:
        assert int(command[command.index("--port") + 1]) == LLM_SERVERS[server]
    decision = policy.classify(upstream.target.url, effective.rules, compose_resolver(project))
    assert decision.is_local, decision.reason


@pytest.mark.parametrize("combo", AIRGAP_COMBINATIONS)
def test_compose_overlay_blanks_hosted_keys_and_agrees_on_the_model(combo: str) -> None:
    project = load_compose(COMPOSE_COMBINATIONS[combo])
    agents_env = project.services["agents"]["environment"]
    assert agents_env["OPENAI_API_KEY"] == "" and agents_env["ANTHROPIC_API_KEY"] == ""
    assert agents_env["AISOC_AIRGAPPED"] == "true"
    proxy_model = proxy_config(project).default_model
    assert agents_env["LLM_MODEL"] == proxy_model
    pull = project.services.get("ollama-pull") or project.services.get("vllm-pull")
    assert pull is not None
    pulled = pull["environment"].get("AIRGAP_LLM_MODEL") or pull["environment"]["AIRGAP_VLLM_MODEL"]
    if combo == "litellm":
        routes = yaml.safe_load((COMPOSE_DIR / "litellm-config.yaml").read_text(encoding="utf-8"))["model_list"]
        [route] = [r for r in routes if fnmatch.fnmatchcase(str(proxy_model), r["model_name"])]
        assert urlsplit(route["litellm_params"]["api_base"]).port == LLM_SERVERS["ollama"]
        assert proxy_model == f"ollama_chat/{pulled}"
    else:
        assert proxy_model == pulled
    if combo == "ollama":
        assert pulled == DEFAULT_MODEL


def test_compose_model_variable_changes_every_service() -> None:
    project = load_compose(COMPOSE_COMBINATIONS["ollama"], {"AIRGAP_LLM_MODEL": "llama3.1:8b-instruct-q4_K_M"})
    assert project.services["ollama-pull"]["environment"]["AIRGAP_LLM_MODEL"] == "llama3.1:8b-instruct-q4_K_M"
    assert proxy_config(project).default_model == "llama3.1:8b-instruct-q4_K_M"
    assert project.services["agents"]["environment"]["LLM_MODEL"] == "llama3.1:8b-instruct-q4_K_M"


def test_compose_interpolation_rejects_an_unescaped_dollar() -> None:
    with pytest.raises(ValueError, match="use"):
        interpolate("tries=$((tries + 1))", {}, set())
    assert interpolate("tries=$$((tries + 1)) ${A:-x} $$B", {}, set()) == "tries=$((tries + 1)) x $B"


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible upstream for the agents script (stdlib, thread)."""

    requests: list[dict[str, Any]] = []  # noqa: RUF012 - test instrument

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "body": body})
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        return None


def run_agents(project: Project, proxy_port: int) -> subprocess.CompletedProcess[str]:
    agents = project.services["agents"]
    argv = list(agents["command"])
    assert argv[0] == "python"
    env = {**agents["environment"], "PATH": os.environ.get("PATH", "")}
    env["LLM_BASE_URL"] = env["LLM_BASE_URL"].replace("airgap-proxy:8080", f"127.0.0.1:{proxy_port}")
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_compose_agents_script_against_the_proxy_without_upstream(container: Container) -> None:
    result = run_agents(load_compose(COMPOSE_COMBINATIONS["demo"]), container.port)
    status = int(result.stdout.split()[1])
    assert status in (200, 503), result.stdout + result.stderr
    assert result.returncode == (0 if status == 200 else 1)


def test_compose_agents_script_through_the_proxy_to_an_upstream(tmp_path: Path) -> None:
    """The whole demo story on loopback: agents -> proxy (container command) -> model server."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.requests.clear()
    try:
        project = load_compose(COMPOSE_COMBINATIONS["ollama"])
        env = dict(project.services["airgap-proxy"]["environment"])
        env[config.ENV_BASE_URL] = f"http://127.0.0.1:{upstream.server_port}/v1"
        running = start_container(tmp_path, env)
        try:
            result = run_agents(project, running.port)
        finally:
            running.stop()
    finally:
        upstream.shutdown()
        upstream.server_close()
        thread.join(timeout=5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[:4] == ["status", "200", "upstream", config.DEFAULT_UPSTREAM_NAME]
    assert "Hello!" in result.stdout
    [received] = FakeOpenAI.requests
    assert received["path"] == "/v1/chat/completions"
    assert received["body"]["model"] == DEFAULT_MODEL


# --------------------------------------------------------------------------- #
# Kubernetes
# --------------------------------------------------------------------------- #

_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator"}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build`` for the features these kustomizations use (no name hashes)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert set(spec) <= _KUSTOMIZE_FIELDS, f"extend this renderer for {set(spec) - _KUSTOMIZE_FIELDS}"
    objects: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = (directory / resource).resolve()
        assert path.is_relative_to(KUBE_DIR), f"{resource} is outside deploy/kubernetes"
        if path.is_dir():
            objects += kustomize(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for generator in spec.get("configMapGenerator", []):
        data = {}
        for item in generator["files"]:
            key, _, source = item.rpartition("=")
            data[key or Path(source).name] = (directory / source).read_text(encoding="utf-8")
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod template metadata, pod spec) of every workload."""
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
    return [(o["spec"]["template"]["metadata"], o["spec"]["template"]["spec"]) for o in objects if o["kind"] in kinds]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def proxy_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in all_containers(spec) if c["image"].split(":")[0].endswith("airgap-proxy")]


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module", params=KUBE_PATTERNS)
def manifests(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(KUBE_DIR / request.param)


def test_kubernetes_manifests_validate_against_the_api_schemas(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = manifests
    for obj in objects:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_kubernetes_schema_validation_can_fail() -> None:
    _, objects = "gateway", kustomize(KUBE_DIR / "gateway")
    broken = json.loads(json.dumps(named(objects, "Deployment", "airgap-proxy")))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
@pytest.mark.parametrize("pattern", KUBE_PATTERNS)
def test_kubectl_kustomize_renders_the_same(pattern: str) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBE_DIR / pattern)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    text = json.dumps(rendered, sort_keys=True)
    for cm in by_kind(rendered, "ConfigMap"):
        hashed = cm["metadata"]["name"]
        base = re.sub(r"-[a-z0-9]{10}$", "", hashed)
        text = text.replace(f'"{hashed}"', f'"{base}"')
    ours = kustomize(KUBE_DIR / pattern)

    def key(o: dict[str, Any]) -> str:
        return json.dumps(o, sort_keys=True)

    assert sorted(map(key, json.loads(text))) == sorted(map(key, ours))


def test_every_container_is_locked_down(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = manifests
    for _, spec in pod_specs(objects):
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False
        for container in all_containers(spec):
            ctx = container.get("securityContext", {})
            name = container["name"]
            assert ctx.get("allowPrivilegeEscalation") is False, name
            assert ctx.get("readOnlyRootFilesystem") is True, name
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
            assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            seccomp = ctx.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", name
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("cpu") and resources["requests"].get("memory"), name
            assert resources.get("limits", {}).get("memory"), name
        uid = IMAGE.user.split(":")[0]
        assert str(pod.get("runAsUser")) == uid and str(pod.get("fsGroup")) == IMAGE.user.split(":")[1]


def test_service_links_cannot_leak_into_the_proxys_environment(
    manifests: tuple[str, list[dict[str, Any]]],
) -> None:
    """A Service named airgap-proxy gives every pod AIRGAP_PROXY_PORT=tcp://... unless links are off."""
    pattern, objects = manifests
    services = [o["metadata"]["name"] for o in by_kind(objects, "Service")] + ["airgap-proxy"]
    suffixes = ("_SERVICE_HOST", "_SERVICE_PORT", "_PORT")
    for _, spec in pod_specs(objects):
        if not proxy_containers(spec) or spec.get("enableServiceLinks") is False:
            continue
        for service in services:
            prefix = service.upper().replace("-", "_")
            clash = {prefix + s for s in suffixes} & PROXY_ENV
            assert not clash, f"{pattern}: set enableServiceLinks: false ({clash} would be set)"


@dataclass
class PodFiles:
    """What a container sees of its volumes: path -> content."""

    files: dict[str, str]
    writable: list[str]


def mounted_files(objects: list[dict[str, Any]], spec: dict[str, Any], container: dict[str, Any]) -> PodFiles:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files_: dict[str, str] = {}
    writable = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        root = mount["mountPath"].rstrip("/")
        if "configMap" in volume:
            assert mount.get("readOnly") is True
            data = named(objects, "ConfigMap", volume["configMap"]["name"])["data"]
            for key, value in data.items():
                files_[f"{root}/{key}"] = value
        elif "secret" in volume:
            assert mount.get("readOnly") is True
            assert volume["secret"]["secretName"] == SECRET_NAME
            for item in volume["secret"].get("items", [{"key": SECRET_KEY, "path": SECRET_KEY}]):
                assert item["key"] == SECRET_KEY
                files_[f"{root}/{item['path']}"] = FAKE_SECRET
        elif "emptyDir" in volume and not mount.get("readOnly"):
            writable.append(root)
    return PodFiles(files_, writable)


def container_env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET_NAME, SECRET_KEY)
            env[item["name"]] = FAKE_SECRET
    return env


def effective_proxy_config(
    objects: list[dict[str, Any]], spec: dict[str, Any], container: dict[str, Any]
) -> tuple[config.Config, PodFiles]:
    """Load the config exactly as the container would: image env, pod env, mounted files."""
    mounted = mounted_files(objects, spec, container)
    env = {**IMAGE.env, **container_env(container)}

    def read_file(path: str) -> str:
        if path not in mounted.files:
            raise FileNotFoundError(path)
        return mounted.files[path]

    assert env.get(config.ENV_CONFIG) in mounted.files, "AIRGAP_PROXY_CONFIG names a file of the ConfigMap"
    raw = yaml.safe_load(read_file(env[config.ENV_CONFIG]))
    return config.parse_config(raw, env, read_file, source=env[config.ENV_CONFIG]), mounted


def the_proxy(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    [(meta, spec)] = [(m, s) for m, s in pod_specs(objects) if proxy_containers(s)]
    [container] = proxy_containers(spec)
    return meta, spec, container


def test_proxy_container_config_loads_and_is_local(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    pattern, objects = manifests
    _, spec, container = the_proxy(objects)
    assert container["image"] == f"airgap-proxy:{airgap_proxy.__version__}"
    assert set(container_env(container)) <= PROXY_ENV
    effective, mounted = effective_proxy_config(objects, spec, container)
    assert effective.airgapped is True
    assert effective.upstreams, "an upstream is configured"
    for upstream in effective.upstreams:
        assert upstream.api_key == FAKE_SECRET, f"{upstream.name}: the key comes from the Secret"
        assert not upstream.provider_type.is_hosted
        decision = policy.classify(upstream.base_url, effective.rules, None)
        assert decision.is_local, decision.reason
        assert decision.rule is policy.Rule.ALLOW_HOST
    store = PurePosixPath(IMAGE.workdir) / effective.tenants.store
    assert any(store.is_relative_to(w) for w in mounted.writable), "the tenant store is on a writable volume"
    assert mounted.writable == [IMAGE.volumes[0]]
    key_sources = {u.api_key_source.split()[0] for u in effective.upstreams}
    assert key_sources == ({"file"} if pattern == "gateway" else {"env"})


def test_gateway_serves_the_cluster_with_http_probes() -> None:
    objects = kustomize(KUBE_DIR / "gateway")
    meta, spec, container = the_proxy(objects)
    effective, _ = effective_proxy_config(objects, spec, container)
    assert effective.listen.host == "0.0.0.0"
    [port] = container["ports"]
    assert port["containerPort"] == effective.listen.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert route_exists("/healthz") and route_exists("/readyz")
    assert spec["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_S
    deployment = named(objects, "Deployment", "airgap-proxy")
    service = named(objects, "Service", "airgap-proxy")
    pdb = named(objects, "PodDisruptionBudget", "airgap-proxy")
    assert labels_match(service["spec"]["selector"], meta["labels"])
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], meta["labels"])
    assert deployment["spec"]["replicas"] >= 2 > pdb["spec"]["minAvailable"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ingress = named(objects, "NetworkPolicy", "airgap-proxy-ingress")
    assert labels_match(ingress["spec"]["podSelector"]["matchLabels"], meta["labels"])
    assert [p["port"] for rule in ingress["spec"]["ingress"] for p in rule["ports"]] == [port["containerPort"]]


def test_sidecar_serves_only_its_pod() -> None:
    objects = kustomize(KUBE_DIR / "sidecar")
    _, spec, proxy = the_proxy(objects)
    effective, _ = effective_proxy_config(objects, spec, proxy)
    assert effective.listen.host == "127.0.0.1"
    assert proxy in spec["initContainers"] and proxy["restartPolicy"] == "Always", "a native sidecar"
    assert "ports" not in proxy
    for probe in ("startupProbe", "livenessProbe"):
        assert proxy[probe]["exec"]["command"] == IMAGE.healthcheck, "the image's health check, tested live"
    [agent] = spec["containers"]
    env = container_env(agent)
    url = urlsplit(env["LLM_BASE_URL"])
    assert (url.hostname, url.port) == (effective.listen.host, effective.listen.port)
    assert route_exists(url.path + "/chat/completions")
    assert env["OPENAI_API_KEY"] == "" and env["ANTHROPIC_API_KEY"] == ""


def test_egress_network_policy_allows_only_dns_and_the_llm_namespace(
    manifests: tuple[str, list[dict[str, Any]]],
) -> None:
    pattern, objects = manifests
    meta, spec, container = the_proxy(objects)
    policy_ = named(objects, "NetworkPolicy", "airgap-proxy-egress")
    assert labels_match(policy_["spec"]["podSelector"]["matchLabels"], meta["labels"])
    assert "Egress" in policy_["spec"]["policyTypes"]
    namespaces = set()
    for rule in policy_["spec"]["egress"]:
        assert rule.get("to"), "a rule without 'to' allows every destination"
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            namespaces.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
        if any("podSelector" in peer for peer in rule["to"]):
            assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
    effective, _ = effective_proxy_config(objects, spec, container)
    for upstream in effective.upstreams:
        assert upstream.target is not None
        _service, namespace, *_ = upstream.target.host.split(".")
        assert namespace in namespaces, f"{pattern}: {upstream.target.host} is not in an allowed namespace"
    assert namespaces == {"kube-system", namespace}


def test_kubernetes_health_commands_run_against_the_proxy(container: Container) -> None:
    _, _, proxy = the_proxy(kustomize(KUBE_DIR / "sidecar"))
    for probe in ("startupProbe", "livenessProbe"):
        result = run_healthcheck(proxy[probe]["exec"]["command"], container.port)
        assert result.returncode == 0, result.stderr.decode()
