"""The operator docs agree with the code.

Each check derives the truth from the code (probing the config loader, the
app's router, the error classes, the policy's reason templates, the CLI run
as a subprocess) and compares it with what the docs say, so that a change on
either side without the other fails here.
"""

from __future__ import annotations

import ast
import enum
import functools
import inspect
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from airgap_proxy import config, errors, policy, upstreams
from airgap_proxy.app import create_app
from airgap_proxy.audit import Action, Audit, Tunnel
from airgap_proxy.upstreams import routing
from tests.test_deploy import (
    COMPOSE_COMBINATIONS,
    COMPOSE_DIR,
    KUBE_DIR,
    PROXY_ENV,
    SECRET_KEY,
    SECRET_NAME,
    app_routes,
    load_compose,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
DOC_FILES = sorted(DOCS.glob("*.md"))
REQUIRED_DOCS = {
    "quickstart.md",
    "configuration.md",
    "security.md",
    "deployment.md",
    "operations.md",
    "troubleshooting.md",
    "migration.md",
}
ALL_MARKDOWN = [README, ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", KUBE_DIR / "README.md", *DOC_FILES]
COMMAND_TIMEOUT_S = 30


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- #
# Markdown, read just enough
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Block:
    """A fenced code block: language, the rest of the info string, content."""

    lang: str
    info: str
    content: str

    @property
    def file(self) -> str | None:
        match = re.search(r"\bfile=(\S+)", self.info)
        return match.group(1) if match else None


def blocks(path: Path) -> list[Block]:
    out = []
    for match in re.finditer(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", text(path), re.M | re.S):
        out.append(Block(match.group(1), match.group(2).strip(), match.group(3)))
    return out


def prose(path: Path) -> str:
    """The text outside fenced blocks."""
    return re.sub(r"^```.*?^```\s*$", "", text(path), flags=re.M | re.S)


def table_rows(path: Path, heading: str | None = None) -> list[list[str]]:
    """Rows of the markdown tables (under ``heading``, up to the next heading of its level or higher)."""
    lines = prose(path).splitlines()
    if heading is not None:
        start = next(i for i, line in enumerate(lines) if line.strip("# ").strip() == heading)
        level = len(lines[start]) - len(lines[start].lstrip("#"))
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
            ),
            len(lines),
        )
        lines = lines[start:end]
    rows = []
    for line in lines:
        if line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def first_cells(path: Path, heading: str | None = None) -> list[str]:
    """The backticked first cell of each table row (header rows have none)."""
    out = []
    for row in table_rows(path, heading):
        match = re.fullmatch(r"`([^`]+)`", row[0])
        if match:
            out.append(match.group(1))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", prose(path), re.M)}


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(path))


# --------------------------------------------------------------------------- #
# Links and structure
# --------------------------------------------------------------------------- #


def test_every_required_doc_exists() -> None:
    assert {p.name for p in DOC_FILES} >= REQUIRED_DOCS
    assert (ROOT / "CHANGELOG.md").is_file() and (ROOT / "CONTRIBUTING.md").is_file()


@pytest.mark.parametrize("path", ALL_MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    for link in links(path):
        if re.match(r"^[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.exists(), f"{path.name}: broken link {link}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{path.name}: no heading for #{anchor} in {resolved.name}"


def test_readme_links_to_docs_resolve_and_every_doc_is_reachable() -> None:
    readme_docs = [link.partition("#")[0] for link in links(README) if link.startswith("docs/")]
    assert readme_docs, "README links to the docs"
    seen: set[Path] = set()
    todo = [README]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for link in links(page):
            target = (page.parent / link.partition("#")[0]).resolve()
            if target.suffix == ".md" and target.is_file() and DOCS in target.parents:
                todo.append(target)
    assert set(DOC_FILES) <= seen, f"not reachable from README: {sorted(p.name for p in set(DOC_FILES) - seen)}"


def test_changelog_keeps_unreleased_on_top() -> None:
    headings = re.findall(r"^## (.*)$", text(ROOT / "CHANGELOG.md"), re.M)
    assert headings[0] == "[Unreleased]"


# --------------------------------------------------------------------------- #
# Commands in the docs run with their documented output and exit status
# --------------------------------------------------------------------------- #

CLI = "import sys; from airgap_proxy.cli import main; sys.argv[0] = 'airgap-proxy'; sys.exit(main())"
TESTED_SUBCOMMANDS = ("classify", "check-config", "env")


@dataclass
class Step:
    command: str
    output: list[str]
    status: int | None = None


def console_steps(block: Block) -> list[Step]:
    """``$ cmd`` lines with their output; ``$ echo $?`` gives the previous command's status."""
    steps: list[Step] = []
    lines = block.content.splitlines()
    i = 0
    while i < len(lines):
        assert lines[i].startswith("$ "), f"console block line without a prompt: {lines[i]!r}"
        command = lines[i][2:]
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        if command.strip() == "echo $?":
            assert steps, "echo $? needs a command before it"
            steps[-1].status = int(output[0])
        else:
            steps.append(Step(command, output))
    return steps


def docs_with_console_blocks() -> list[Path]:
    return [p for p in DOC_FILES if any(b.lang == "console" for b in blocks(p))]


def run_cli(command: str, cwd: Path) -> tuple[int, list[str]]:
    words = shlex.split(command)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleave as written
    }
    while "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "airgap-proxy", command
    result = subprocess.run(
        [sys.executable, "-c", CLI, *words[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    return result.returncode, [line.rstrip() for line in result.stdout.splitlines()]


def output_matches(shown: list[str], actual: list[str]) -> bool:
    """Equal, where a line ``...`` in the docs stands for any number of lines."""
    pattern = "\n".join(re.escape(line.rstrip()) if line.strip() != "..." else "(?:.*\n)*?.*" for line in shown)
    return re.fullmatch(pattern, "\n".join(actual)) is not None if shown else not actual


def test_quickstart_documents_the_cli_checks() -> None:
    commands = [s.command for b in blocks(DOCS / "quickstart.md") if b.lang == "console" for s in console_steps(b)]
    for subcommand in TESTED_SUBCOMMANDS:
        assert any(f"airgap-proxy {subcommand}" in c for c in commands), subcommand


@pytest.mark.parametrize("doc", docs_with_console_blocks(), ids=lambda p: p.name)
def test_documented_commands_run_as_documented(doc: Path, tmp_path: Path) -> None:
    for block in blocks(doc):
        if block.file:
            (tmp_path / block.file).write_text(block.content, encoding="utf-8")
    for shared in ("config", "deploy", "compose"):
        (tmp_path / shared).symlink_to(ROOT / shared)
    ran = 0
    for block in blocks(doc):
        if block.lang != "console":
            continue
        for step in console_steps(block):
            if not re.search(rf"\bairgap-proxy ({'|'.join(TESTED_SUBCOMMANDS)})\b", step.command):
                continue
            assert step.status is not None, f"{doc.name}: document the exit status of `{step.command}`"
            status, output = run_cli(step.command, tmp_path)
            assert status == step.status, f"{doc.name}: `{step.command}` exited {status}:\n" + "\n".join(output)
            assert output_matches(step.output, output), (
                f"{doc.name}: `{step.command}` printed:\n"
                + "\n".join(output)
                + "\n\ndocs show:\n"
                + "\n".join(step.output)
            )
            ran += 1
    assert ran, f"{doc.name}: no airgap-proxy command found in its console blocks"


def test_output_matching_can_fail() -> None:
    assert output_matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert not output_matches(["a", "...", "z"], ["a", "b", "y"])
    assert not output_matches(["a"], ["a", "b"])


# --------------------------------------------------------------------------- #
# The configuration reference
# --------------------------------------------------------------------------- #

PROBE = "zz_probe"
_UNKNOWN = re.compile(r"unknown key \(known keys here: (?P<known>[^)]*)\)")
_REQUIRED_VALUES = ("probe", "http://127.0.0.1:1/v1")


def loader_error(raw: Any) -> config.ConfigError | None:
    try:
        config.parse_config(raw, {}, lambda path: "sk-probe-0123456789abcdef")
    except config.ConfigError as exc:
        return exc
    return None


def nest(path: list[str], value: Any) -> Any:
    for key in reversed(path):
        value = [value] if key == "[]" else {key: value}
    return value


def probe_keys(path: list[str]) -> set[str]:
    """Every key the loader accepts under ``path``, found by feeding it an unknown key.

    The loader's "unknown key" error lists the keys it knows at that level;
    a key is a section when an unknown key inside it is reported the same way.
    """
    item: dict[str, Any] = {PROBE: 1}
    for _ in range(len(_REQUIRED_VALUES) * 8):
        exc = loader_error(nest(path, item))
        assert exc is not None, f"{path}: the loader accepted the unknown key {PROBE}"
        required = re.fullmatch(r".*\.(\w+)", exc.path)
        if exc.message == "is required" and required:
            key = required.group(1)
            tried = item.get(key)
            item[key] = _REQUIRED_VALUES[_REQUIRED_VALUES.index(tried) + 1 if tried in _REQUIRED_VALUES else 0]
            continue
        if exc.path.endswith(PROBE) and (match := _UNKNOWN.search(exc.message)):
            break
        if PROBE not in exc.path and (key := exc.path.rsplit(".", 1)[-1].split("[")[0]) in item:
            value = item[key]
            item[key] = _REQUIRED_VALUES[(_REQUIRED_VALUES.index(value) + 1) % len(_REQUIRED_VALUES)]
            continue
        raise AssertionError(f"{path}: unexpected loader error {exc}")
    else:
        raise AssertionError(f"{path}: could not satisfy the required keys")
    keys: set[str] = set()
    for key in match.group("known").split(", "):
        here = [*path, key]
        as_section = loader_error(nest(here, {PROBE: 1}))
        as_list = loader_error(nest([*here, "[]"], {PROBE: 1}))
        if as_section is not None and as_section.path.endswith(f"{key}.{PROBE}"):
            keys |= probe_keys(here)
        elif (
            as_list is not None
            and re.search(rf"{key}\[0\]\.", as_list.path)
            and (as_list.message == "is required" or _UNKNOWN.search(as_list.message))
        ):
            keys |= probe_keys([*here, "[]"])
        else:
            keys.add(".".join(here).replace(".[]", "[]"))
    return keys


@functools.cache
def loader_keys() -> frozenset[str]:
    return frozenset(probe_keys([]))


def documented_keys() -> set[str]:
    return {c for c in first_cells(DOCS / "configuration.md") if re.fullmatch(r"[a-z_]+(\[\])?(\.[a-z_]+)*", c)}


def test_config_probe_finds_nested_keys() -> None:
    assert {"listen.port", "upstreams[].base_url", "policy.allow_hosts"} <= loader_keys()


def test_configuration_reference_matches_the_loader() -> None:
    documented = documented_keys()
    assert not loader_keys() - documented, (
        f"accepted by the loader, missing from the docs: {sorted(loader_keys() - documented)}"
    )
    assert not documented - loader_keys(), f"documented, refused by the loader: {sorted(documented - loader_keys())}"


def key_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Leaf key paths of a parsed config (mappings that are values, like aliases, are leaves)."""
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and any(k.startswith(f"{path}.") for k in loader_keys()):
            yield from key_paths(value, path)
        elif isinstance(value, list) and value and isinstance(value[0], dict) and f"{path}[].name" in loader_keys():
            for item in value:
                yield from key_paths(item, f"{path}[]")
        else:
            yield path


EXAMPLE_CONFIGS = [
    p
    for p in [
        ROOT / "config" / "airgap-proxy.yaml",
        KUBE_DIR / "gateway" / "airgap-proxy.yaml",
        KUBE_DIR / "sidecar" / "airgap-proxy.yaml",
    ]
    if p.is_file()
]


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_configs_load_and_use_only_documented_keys(path: Path) -> None:
    raw = yaml.safe_load(text(path))
    config.parse_config(raw, {}, lambda p: "sk-example-0123456789abcdef")
    assert set(key_paths(raw)) <= documented_keys()


def test_configuration_snippets_load(tmp_path: Path) -> None:
    doc = DOCS / "configuration.md"
    snippets = [b for b in blocks(doc) if b.lang == "yaml"]
    assert snippets
    files = {b.file: b.content for b in snippets if b.file}

    def read_file(path: str) -> str:
        return files.get(path, "sk-docs-0123456789abcdef")

    for block in snippets:
        raw = yaml.safe_load(block.content)
        if block.file and "responses" in block.file:
            raw = {"fallback": {"responses_file": block.file}}
        config.parse_config(raw, {}, read_file)


def env_table() -> dict[str, str]:
    rows = table_rows(DOCS / "configuration.md", "Environment variables")
    out = {}
    for row in rows:
        match = re.fullmatch(r"`([A-Z_]+)`", row[0])
        if match:
            out[match.group(1)] = row[1].strip("`")
    return out


def test_environment_reference_matches_the_loader() -> None:
    assert set(env_table()) == PROXY_ENV


def effective(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    loaded = config.load_config(None, env)
    return {**loaded.redacted(), "secret_key": loaded.secret_key, "admin": loaded.admin}


@pytest.mark.parametrize("name", sorted(PROXY_ENV))
def test_each_documented_variable_changes_the_configuration(name: str, tmp_path: Path) -> None:
    """The example value in the docs, set alone (with a base URL where needed), changes the result."""
    example = env_table()[name]
    base = {} if name == config.ENV_BASE_URL else {config.ENV_BASE_URL: "http://127.0.0.1:11434/v1"}
    if name == config.ENV_CONFIG:
        example = str(tmp_path / "airgap-proxy.yaml")
        Path(example).write_text("listen: {port: 9999}\n", encoding="utf-8")
    assert effective({**base, name: example}, tmp_path) != effective(base, tmp_path), name


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([p.value for p in config.ProviderType], id="provider types"),
        pytest.param([m.value for m in config.FallbackMode], id="fallback modes"),
        pytest.param([f.value for f in config.LogFormat], id="log formats"),
        pytest.param(list(config.LOG_LEVELS), id="log levels"),
        pytest.param(list(upstreams.PROBE_PATHS.values()), id="health check paths"),
        pytest.param(list(policy.DEFAULT_ALLOW_NETWORKS), id="default allow_networks"),
        pytest.param(list(policy.BUILTIN_DENY_NETWORKS), id="built-in deny_networks"),
        pytest.param(list(policy.DEFAULT_ALLOW_HOSTS), id="default allow_hosts"),
    ],
)
def test_configuration_reference_lists_every_value(values: list[str]) -> None:
    doc = text(DOCS / "configuration.md")
    missing = [v for v in values if f"`{v}" not in doc]
    assert not missing, missing


def test_docs_name_only_real_variables() -> None:
    compose_vars = set().union(*(load_compose(c).variables for c in COMPOSE_COMBINATIONS.values()))
    known = PROXY_ENV | compose_vars
    for path in [README, *DOC_FILES]:
        for name in set(re.findall(r"\b((?:AIRGAP|AISOC|LLM)_[A-Z0-9_]+)\b", text(path))):
            assert name in known, f"{path.name} names {name}, which nothing reads"


# --------------------------------------------------------------------------- #
# Security: every bypass class, with tests that exist
# --------------------------------------------------------------------------- #

BYPASS_CLASSES = (
    "userinfo",
    "backslash",
    "control characters",
    "percent-encoding",
    "IDNA",
    "trailing dot",
    "IPv4 notations",
    "IPv6 zone",
    "NAT64",
    "6to4",
    "metadata",
    "DNS rebinding",
    "redirects",
    "proxy environment variables",
    "hosted provider types",
    "substring tricks",
)
COVERING_FILES = {"tests/test_policy.py", "tests/test_targets.py", "tests/test_egress.py", "tests/test_proxy.py"}
_NODE = re.compile(r"`(tests/test_\w+\.py::[\w]+(?:\[[^\]`]+\])?)`")


def collected_node_ids(files: set[str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *sorted(files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


def test_security_doc_covers_every_bypass_class_with_real_tests() -> None:
    rows = [
        r
        for r in table_rows(DOCS / "security.md", "Bypass classes and the tests that cover them")
        if _NODE.search(r[-1])
    ]
    assert len(rows) >= len(BYPASS_CLASSES)
    for bypass in BYPASS_CLASSES:
        assert any(bypass.lower() in row[0].lower() for row in rows), f"no row for {bypass}"
    refs = {ref for row in rows for ref in _NODE.findall(row[-1])}
    files = {ref.split("::")[0] for ref in refs}
    assert files >= COVERING_FILES
    collected = collected_node_ids(files)
    # A reference without [id] names every case of a parametrised test.
    missing = sorted(r for r in refs if r not in collected and not any(c.startswith(r + "[") for c in collected))
    assert not missing, f"security.md names tests that do not exist: {missing}"


def test_security_doc_states_scope() -> None:
    doc = text(DOCS / "security.md")
    for heading in ("What is guaranteed", "Out of scope"):
        assert slug(heading) in anchors(DOCS / "security.md")
    assert "defence in depth" in doc


# --------------------------------------------------------------------------- #
# Troubleshooting: the reference page's symptoms and every refusal reason
# --------------------------------------------------------------------------- #


def template_chunks(template: str) -> list[str]:
    """The fixed text of a reason template (what every instance of it contains)."""
    return [c.strip(" ,.:") for c in re.split(r"\{[^}]*\}", template) if len(c.strip(" ,.:")) >= 3]


def target_error_templates() -> list[str]:
    """Every message the URL parser can refuse a URL with, read from its source."""
    source = inspect.getsource(__import__("airgap_proxy.policy.targets", fromlist=["x"]))
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            if getattr(node.exc.func, "id", "") != "TargetError" or not node.exc.args:
                continue
            arg = node.exc.args[0]
            if isinstance(arg, ast.Constant):
                out.append(str(arg.value))
            elif isinstance(arg, ast.JoinedStr):
                out.append("".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in arg.values))
    assert len(out) > 10
    return out


REFUSAL_TEMPLATES = [
    policy.REASON_INVALID,
    policy.REASON_DENY_HOST,
    policy.REASON_DENY_NETWORK,
    policy.REASON_NOT_ALLOWED,
    policy.REASON_EMBEDDED,
    policy.REASON_COMPATIBLE,
    policy.REASON_UNRESOLVED,
    policy.REASON_NO_ADDRESSES,
    policy.REASON_ZONE,
    routing.REASON_HOSTED_TYPE,
]


def test_every_refusal_reason_constant_is_listed_here() -> None:
    """A new REASON_* in the policy must be added to REFUSAL_TEMPLATES (and so to the docs)."""
    allowing = {policy.REASON_ALLOW_HOST, policy.REASON_ALLOW_NETWORK}
    declared = {v for k, v in vars(policy).items() if k.startswith("REASON_")} - allowing
    assert declared <= set(REFUSAL_TEMPLATES)


@pytest.mark.parametrize("template", REFUSAL_TEMPLATES + target_error_templates())
def test_troubleshooting_explains_every_refusal(template: str) -> None:
    doc = text(DOCS / "troubleshooting.md")
    for chunk in template_chunks(template):
        assert chunk in doc, f"troubleshooting.md lacks {chunk!r} (from {template!r})"


@pytest.mark.parametrize(
    "symptom",
    [
        "AirgapViolationError",
        "reachable: false",
        "Model pull timeout",
        "connection refused",
        "port is already allocated",
        "/readyz",
        "X-Airgap-Upstream: deterministic",
        "AIRGAP_PROXY_PORT",
        "no_healthy_upstream",
        "model_not_found",
        "cannot be decrypted",
        "The admin API is disabled",
        "unauthorized",
    ],
)
def test_troubleshooting_covers_symptom(symptom: str) -> None:
    assert symptom in text(DOCS / "troubleshooting.md")


# --------------------------------------------------------------------------- #
# Operations: routes, errors, the audit event, the status report
# --------------------------------------------------------------------------- #


def documented_paths() -> dict[str, str]:
    """Path -> the table row, for every ``METHOD /path`` in the operations endpoints table."""
    out = {}
    for row in table_rows(DOCS / "operations.md", "HTTP endpoints"):
        for path in re.findall(r"`(?:GET|POST|PUT|DELETE) (/[^` ?]*)`", " ".join(row)):
            out[path] = " ".join(row)
    return out


def test_operations_documents_every_route() -> None:
    documented = documented_paths()
    for canonical in app_routes():
        probe = canonical.replace("{tail}", "chat/completions")
        assert probe in documented or canonical.replace("{tail}", "") in text(DOCS / "operations.md"), canonical
    routes = app_routes()
    for path, row in documented.items():
        served = any(r == path or (r.endswith("{tail}") and path.startswith(r[: -len("{tail}")])) for r in routes)
        assert served or "planned" in row.lower() or "planned" in text(DOCS / "operations.md").split(path)[1][:200], (
            path
        )


def error_classes() -> list[type[errors.ProxyError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.ProxyError)]


def raised_anywhere(cls: type[errors.ProxyError]) -> bool:
    package = ROOT / "airgap_proxy"
    return any(f"{cls.__name__}(" in text(p) for p in package.rglob("*.py") if p.name != "errors.py")


def test_operations_error_table_matches_the_error_tree() -> None:
    rows = table_rows(DOCS / "operations.md", "Errors")
    documented = {(int(r[0]), r[1].strip("`")) for r in rows if r[0].isdigit()}
    real = {(c.status, c.code) for c in error_classes() if c is not errors.ProxyError}
    assert documented <= real, documented - real
    undocumented = {c for c in error_classes() if (c.status, c.code) in real - documented}
    assert not [c.__name__ for c in undocumented if raised_anywhere(c)]


def test_operations_audit_table_matches_the_audit_event() -> None:
    fields = set(Audit(request_id="r", method="GET", route="/").fields(0.0))
    assert set(first_cells(DOCS / "operations.md", "The audit event")) == fields
    rows = {r[0].strip("`"): r[-1] for r in table_rows(DOCS / "operations.md", "The audit event")}

    def listed(field: str, values: type[enum.Enum]) -> None:
        missing = [v.value for v in values if f"`{v.value}`" not in rows[field]]
        assert not missing, f"{field}: {missing}"

    listed("decision", Action)
    listed("verdict", policy.Verdict)
    listed("rule", policy.Rule)


def test_operations_documents_the_forward_proxy_fields() -> None:
    assert set(first_cells(DOCS / "operations.md", "Forward-proxy fields")) == set(Tunnel().fields())


async def test_operations_status_table_matches_the_status_report(aiohttp_client: Any) -> None:
    raw = {"upstreams": [{"name": "local", "base_url": "http://127.0.0.1:9/v1"}]}
    app = create_app(config.parse_config(raw, {}, lambda path: ""))
    client = await aiohttp_client(app)
    resp = await client.get("/api/v1/llm/status")
    assert resp.status == 200
    report = await resp.json()
    documented = set(first_cells(DOCS / "operations.md", "`/api/v1/llm/status`"))
    assert documented == set(report)
    detail_row = next(r for r in table_rows(DOCS / "operations.md", "`/api/v1/llm/status`") if r[0] == "`upstreams`")
    for key in report["upstreams"][0]:
        assert f"`{key}`" in detail_row[1], key


# --------------------------------------------------------------------------- #
# Deployment commands in the docs
# --------------------------------------------------------------------------- #


def shell_lines() -> list[tuple[Path, str]]:
    """Commands in shell blocks and in inline code, continuation lines joined."""
    out = []
    for path in [README, *DOC_FILES]:
        for block in blocks(path):
            if block.lang in ("sh", "bash", "shell"):
                for line in block.content.replace("\\\n", " ").splitlines():
                    out.append((path, line.strip()))
        out += [(path, code) for code in re.findall(r"`([^`\n]+)`", prose(path))]
    return out


def compose_commands() -> list[tuple[Path, str]]:
    return [(p, line) for p, line in shell_lines() if re.search(r"\bdocker compose (-f|\.\.\.) ", line)]


def test_docs_show_the_compose_story() -> None:
    wanted = "docker compose -f compose/docker-compose.demo.yml -f compose/docker-compose.airgap.yml up"
    assert any(wanted in line for p, line in compose_commands() if p.name == "quickstart.md")


@pytest.mark.parametrize("index", range(len(compose_commands())))
def test_compose_commands_in_docs_name_real_files_services_and_variables(index: int) -> None:
    path, line = compose_commands()[index]
    words = shlex.split(line)
    assignments = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    assert words[:2] == ["docker", "compose"], line
    if "..." in words:  # abbreviated: "docker compose ... logs ollama-pull"
        files: tuple[str, ...] = ()
        services = set().union(*(load_compose(c).services for c in COMPOSE_COMBINATIONS.values()))
        rest = words[words.index("...") + 1 :]
    else:
        files = tuple(words[i + 1] for i, w in enumerate(words) if w == "-f")
        for name in files:
            assert (ROOT / name).resolve().parent == COMPOSE_DIR.resolve(), f"{path.name}: {name}"
        project = load_compose(tuple(Path(f).name for f in files), assignments)
        unknown = set(assignments) - project.variables
        assert not unknown, f"{path.name}: {unknown} is not used by {files}"
        services = set(project.services)
        rest = [w for i, w in enumerate(words[2:], 2) if words[i - 1] != "-f"]
    rest = [w for w in rest if not w.startswith("-")]
    if rest and rest[0] in {"logs", "ps", "up", "restart", "stop", "start", "exec", "run", "pull"}:
        for service in rest[1:]:
            assert service in services, f"{path.name}: no service {service} in {files or 'any project'}"


def test_compose_variables_are_documented() -> None:
    used = set().union(*(load_compose(c).variables for c in COMPOSE_COMBINATIONS.values()))
    documented = set(first_cells(DOCS / "deployment.md", "Compose variables"))
    assert used == documented


def test_compose_services_in_the_docs_exist() -> None:
    services = set().union(*(load_compose(c).services for c in COMPOSE_COMBINATIONS.values()))
    documented = set(first_cells(DOCS / "deployment.md", "Docker Compose")) - {
        c for c in first_cells(DOCS / "deployment.md", "Compose variables")
    }
    documented = {d for d in documented if not d.startswith("docker compose")}
    assert documented == services


def test_kubernetes_commands_in_docs_name_real_kustomizations_and_secrets() -> None:
    kustomize = [line for _, line in shell_lines() if "kubectl apply -k" in line]
    secrets = [line for _, line in shell_lines() if "kubectl create secret generic" in line]
    assert kustomize and secrets
    for line in kustomize:
        target = shlex.split(line)[shlex.split(line).index("-k") + 1]
        assert (ROOT / target / "kustomization.yaml").is_file(), line
    for line in secrets:
        words = shlex.split(line)
        name = words[words.index("generic") + 1]
        keys = [w.split("=", 2)[1] for w in words if w.startswith("--from-literal=")]
        assert (name, keys) == (SECRET_NAME, [SECRET_KEY]), line
