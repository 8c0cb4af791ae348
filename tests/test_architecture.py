"""Architecture rules, enforced on the source with ``ast``.

1. The pure core imports nothing that does I/O, reads the clock or the environment.
2. Only the egress client (``egress/client.py``) creates an HTTP client session or connector.
3. No module outside the edges reads ``os.environ``.
4. Layering: ``policy/`` is the bottom and imports only itself; nothing below the
   server layer (wiring and entry points) imports it or ``api/``; imports point
   ``api -> pipeline -> surfaces -> fallback/upstreams/tenants -> egress -> policy``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "airgap_proxy"
CORE = [
    "policy/__init__",
    "policy/targets",
    "policy/decide",
    "upstreams/routing",
    "pipeline/plan",
    "payload",
    "headers",
    "errors",
    "audit",
    "upstreams/health",
    "usage",
]
PURE = CORE + sorted(f"fallback/{p.stem}" for p in (PACKAGE / "fallback").glob("*.py"))
IO_MODULES = {
    "aiohttp",
    "asyncio",
    "socket",
    "ssl",
    "http",
    "urllib",
    "requests",
    "httpx",
    "time",
    "datetime",
    "random",
    "secrets",
    "uuid",
    "os",
    "subprocess",
    "logging",
    "structlog",
    "sqlite3",
    "pathlib",
    "threading",
}
CLIENT_FACTORIES = {
    "ClientSession",
    "TCPConnector",
    "UnixConnector",
    "open_connection",
    "create_connection",
    "socket",
    "urlopen",
    "getaddrinfo",
}


def module_source(name: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{name}.py").read_text(), filename=f"{name}.py")


def imported_roots(tree: ast.Module) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def imported_package_modules(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "airgap_proxy":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("airgap_proxy."):
                found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_no_io(name: str) -> None:
    tree = module_source(name)
    assert not (imported_roots(tree) & IO_MODULES), imported_roots(tree) & IO_MODULES
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id not in {"open", "print", "input", "hash"}, f"{name} uses {node.id}"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_only_pure_modules(name: str) -> None:
    allowed = {p.split("/")[0] for p in PURE} | {"config", "__version__"}
    assert imported_package_modules(module_source(name)) <= allowed


def test_config_parsing_does_not_read_the_environment() -> None:
    tree = module_source("config")
    assert not (imported_roots(tree) & (IO_MODULES - {"pathlib"}))
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Attribute) and node.attr == "environ"), "config reads os.environ"


def test_only_the_egress_module_creates_clients() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "egress" / "client.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name in CLIENT_FACTORIES or _is_aiohttp_request(func):
                    offenders.append(f"{path.name}:{node.lineno} {name}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                if "ClientSession" in names or "TCPConnector" in names:
                    offenders.append(f"{path.name}:{node.lineno} imports {names}")
    assert offenders == []


def _is_aiohttp_request(func: ast.expr) -> bool:
    """``aiohttp.request(...)`` opens its own session."""
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "request"
        and isinstance(func.value, ast.Name)
        and func.value.id == "aiohttp"
    )


def test_the_egress_client_has_no_proxy_or_redirect_machinery() -> None:
    """The one client is our own: it cannot read proxy variables or follow a ``Location``."""
    for name in ("egress/client.py", "egress/http1.py"):
        source = (PACKAGE / name).read_text()
        for needle in ("environ", "getproxies", "trust_env", "Location", "ClientSession"):
            assert needle not in source, f"{name} mentions {needle}"
    for path in PACKAGE.rglob("*.py"):
        assert "ClientSession(" not in path.read_text(), f"{path.name} creates an aiohttp client session"


def test_only_cli_reads_the_environment() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"}:
                pytest.fail(f"{path.name}:{node.lineno} reads the environment")


def package_imports(path: Path) -> set[str]:
    """Every ``airgap_proxy...`` module name that ``path`` imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "airgap_proxy":
                found.update(f"airgap_proxy.{alias.name}" for alias in node.names)
            elif node.module.startswith("airgap_proxy."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("airgap_proxy."))
    return found


@pytest.mark.parametrize("path", sorted((PACKAGE / "policy").glob("*.py")), ids=lambda p: p.name)
def test_the_policy_is_the_bottom_layer(path: Path) -> None:
    """``policy/`` imports nothing of the package but itself: every other layer may use it."""
    outside = {m for m in package_imports(path) if not m.startswith("airgap_proxy.policy")}
    assert not outside, outside


# The wiring and the entry points; the target layout puts them in server/.
SERVER_LAYER = {"app", "server", "workers", "cli", "__main__"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_below_the_server_imports_the_server_or_the_api(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    if relative.parts[0] == "api" or (relative.stem in SERVER_LAYER and len(relative.parts) == 1):
        return
    upward = {m for m in package_imports(path) if m.split(".")[1] == "api" or m.split(".")[1] in SERVER_LAYER}
    assert not upward, upward


# What each layer may not import: the layers above it.
ABOVE = {
    "egress": {"upstreams", "tenants", "tenant_store", "fallback", "surfaces", "pipeline"},
    "fallback": {"upstreams", "tenants", "egress", "surfaces", "pipeline"},
    "upstreams": {"tenants", "fallback", "surfaces", "pipeline"},
    "surfaces": {"upstreams", "tenants", "egress", "pipeline"},
    "pipeline": set(),
}


@pytest.mark.parametrize(
    "path",
    sorted(p for layer in ABOVE for p in (PACKAGE / layer).rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_imports_point_down_the_layers(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0]
    upward = {m for m in package_imports(path) if m.split(".")[1] in ABOVE[layer]}
    assert not upward, upward


def test_the_planner_decides_from_facts_alone() -> None:
    """``pipeline/plan`` is pure: it imports no other pipeline stage, no surface, no I/O."""
    imported = package_imports(PACKAGE / "pipeline" / "plan.py")
    assert imported <= {"airgap_proxy.policy", "airgap_proxy.config", "airgap_proxy.upstreams"}, imported
