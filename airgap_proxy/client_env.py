"""The variables that point an agent client at the proxy (pure): ``airgap-proxy env --client NAME``.

Each client spells its base URL differently; operators get them wrong. For
every client this gives, in order: its base URL variables; a placeholder key
where the client insists on one (the proxy never forwards a client's key);
every hosted provider's key blanked (a client that refuses an empty key,
as the openai and anthropic SDKs do, gets a placeholder instead), so nothing can fall back to a hosted
API; the client's own switches for non-essential traffic (telemetry, update
checks); and ``HTTPS_PROXY``/``HTTP_PROXY`` pointing at the proxy's
forward-proxy backstop, with ``NO_PROXY`` naming the proxy itself and
loopback so that the client's calls to the proxy are not tunnelled.
"""

from __future__ import annotations

import json
import shlex
from urllib.parse import urlsplit

PLACEHOLDER_KEY = "airgap-proxy"
FORMATS = ("shell", "dotenv", "compose", "k8s")
# Hosted providers' keys, blanked for every client (a client's own placeholder overrides its one).
HOSTED_KEYS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "OPENROUTER_API_KEY",
    "DEEPSEEK_API_KEY",
    "XAI_API_KEY",
    "TOGETHER_API_KEY",
    "COHERE_API_KEY",
)
ROOT, V1 = "{root}", "{v1}"

# Per client: its base URL and key variables ({root}: the proxy; {v1}: the proxy's /v1) and its switches.
CLIENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "claude-code": (
        ("ANTHROPIC_BASE_URL", ROOT),
        ("ANTHROPIC_AUTH_TOKEN", PLACEHOLDER_KEY),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
    ),
    "codex": (("OPENAI_BASE_URL", V1), ("OPENAI_API_KEY", PLACEHOLDER_KEY)),
    "openai": (("OPENAI_BASE_URL", V1), ("OPENAI_API_BASE", V1), ("OPENAI_API_KEY", PLACEHOLDER_KEY)),
    # An agent of the reference page's convention (LLM_BASE_URL, as in deploy/ and compose/).
    "agent": (("LLM_BASE_URL", V1),),
    "anthropic": (("ANTHROPIC_BASE_URL", ROOT), ("ANTHROPIC_API_KEY", PLACEHOLDER_KEY)),
    "ollama": (("OLLAMA_HOST", ROOT),),
    "langchain": (
        ("OPENAI_BASE_URL", V1),
        ("OPENAI_API_BASE", V1),
        ("OPENAI_API_KEY", PLACEHOLDER_KEY),
        ("ANTHROPIC_BASE_URL", ROOT),
        ("ANTHROPIC_API_KEY", PLACEHOLDER_KEY),
        ("OLLAMA_HOST", ROOT),
        ("LANGCHAIN_TRACING_V2", "false"),
        ("LANGSMITH_TRACING", "false"),
    ),
    "aider": (
        ("OPENAI_API_BASE", V1),
        ("OPENAI_API_KEY", PLACEHOLDER_KEY),
        ("AIDER_ANALYTICS_DISABLE", "true"),
        ("AIDER_CHECK_UPDATE", "false"),
    ),
    "openhands": (("LLM_BASE_URL", V1), ("LLM_API_KEY", PLACEHOLDER_KEY)),
}


def variables(client: str, proxy_url: str, *, forward_proxy: bool = True) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs for ``client`` with the proxy at ``proxy_url``; ``KeyError`` if unknown."""
    root = proxy_url.rstrip("/")
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {proxy_url!r}")
    out: dict[str, str] = {}
    for name, value in CLIENTS[client]:
        out[name] = value.replace(ROOT, root).replace(V1, root + "/v1")
    for name in HOSTED_KEYS:
        out.setdefault(name, "")
    if forward_proxy:
        no_proxy = ",".join(dict.fromkeys(("localhost", "127.0.0.1", "::1", parts.hostname)))
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            out[name] = root
        out["NO_PROXY"] = out["no_proxy"] = no_proxy
    return list(out.items())


def render(pairs: list[tuple[str, str]], fmt: str) -> str:
    """``pairs`` as ``export`` lines, a ``.env`` file, a Compose ``environment:`` or a Kubernetes ``env:``."""
    if fmt == "shell":
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in pairs)
    if fmt == "dotenv":
        return "".join(f"{name}={json.dumps(value)}\n" for name, value in pairs)
    if fmt == "compose":
        return "environment:\n" + "".join(f"  {name}: {json.dumps(value)}\n" for name, value in pairs)
    if fmt == "k8s":
        return "env:\n" + "".join(f"  - name: {name}\n    value: {json.dumps(value)}\n" for name, value in pairs)
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
