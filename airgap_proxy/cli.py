"""Command line: ``serve``, ``classify``, ``check-config``, ``status``, ``rotate-keys``, ``env``,
``suggest-policy`` and ``tenants migrate``.

Exit status: 0 success (every URL / upstream local), 1 a target is not local
(or the server could not start, or a tenant key could not be re-encrypted),
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from airgap_proxy import __version__, client_env, crypto, database_url, policy, suggest_policy, tenant_commands, workers
from airgap_proxy.config import ENV_CONFIG, ENV_SECRET_KEY, Config, ConfigError, load_config, parse_workers
from airgap_proxy.egress import EgressClient, guard, system_resolve
from airgap_proxy.errors import ProxyError, UpstreamError
from airgap_proxy.server import run
from airgap_proxy.tenant_store import RotationReport, StoreError, TenantStore
from airgap_proxy.upstreams import routing

EXIT_OK = 0
EXIT_NOT_LOCAL = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airgap-proxy", description="OpenAI-compatible proxy that keeps LLM traffic inside the network."
    )
    parser.add_argument("--version", action="version", version=f"airgap-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config file (default: $AIRGAP_PROXY_CONFIG)")
    serve.add_argument("--host", help="listen address (overrides config and $AIRGAP_PROXY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (overrides config and $AIRGAP_PROXY_PORT)")
    serve.add_argument(
        "--workers",
        metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT; 0 or auto: one per CPU "
        "(overrides $AIRGAP_PROXY_WORKERS; default 1: a single process)",
    )

    classify = sub.add_parser("classify", help="print the egress verdict for URLs")
    classify.add_argument("urls", nargs="+", metavar="URL")
    classify.add_argument("--config", help="take the policy from this config file")
    classify.add_argument("--json", action="store_true", help="print one JSON object per line")
    classify.add_argument("--no-resolve", action="store_true", help="do not resolve names (they count as external)")

    status = sub.add_parser("status", help="show a running proxy's status")
    status.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of the proxy (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    check = sub.add_parser("check-config", help="load the config as serve would and report")
    check.add_argument("--config", help="YAML config file (default: $AIRGAP_PROXY_CONFIG)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    env = sub.add_parser("env", help="print the variables that point an agent client at the proxy")
    env.add_argument("--client", required=True, choices=sorted(client_env.CLIENTS), help="the agent client")
    env.add_argument(
        "--proxy-url", default="http://127.0.0.1:8080", help="the proxy as the client reaches it (default: %(default)s)"
    )
    env.add_argument("--format", choices=client_env.FORMATS, default="shell", help="output format (default: shell)")
    env.add_argument(
        "--no-forward-proxy", action="store_true", help="leave out HTTPS_PROXY/HTTP_PROXY/NO_PROXY (the backstop)"
    )

    suggest = sub.add_parser(
        "suggest-policy", help="from a report-only run's audit log, the allow_networks that would keep it working"
    )
    suggest.add_argument("logfile", help="the proxy's log (JSON lines; '-' for stdin)")
    suggest.add_argument("--config", help="the config whose policy is extended (default: $AIRGAP_PROXY_CONFIG)")

    rotate = sub.add_parser(
        "rotate-keys", help="re-encrypt every tenant API key with the current secret key (AIRGAP_PROXY_SECRET_KEY)"
    )
    rotate.add_argument("--config", help="YAML config file (default: $AIRGAP_PROXY_CONFIG)")

    tenants = sub.add_parser("tenants", help="manage the tenant store")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    migrate = tenants_sub.add_parser(
        "migrate", help="copy a SQLite tenant store into a PostgreSQL one (sealed keys unchanged)"
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="PATH", help="the SQLite tenant store")
    migrate.add_argument(
        "--to",
        dest="target",
        metavar="URL",
        help="postgresql:// URL (default: the configured tenants.store / tenants.store_url_env, "
        "which keeps the password off the command line)",
    )
    migrate.add_argument("--config", help="YAML config file (default: $AIRGAP_PROXY_CONFIG)")
    migrate.add_argument("--overwrite", action="store_true", help="replace tenants the target already has")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    env = dict(os.environ)
    try:
        if args.command == "serve":
            return _serve(args, env)
        if args.command == "classify":
            return _classify(args, env)
        if args.command == "status":
            return _status(args)
        if args.command == "rotate-keys":
            return _rotate_keys(args, env)
        if args.command == "env":
            return _env(args)
        if args.command == "suggest-policy":
            return _suggest_policy(args, env)
        if args.command == "tenants":
            return _migrate(args, env)
        return _check_config(args, env)
    except ConfigError as exc:
        print(f"airgap-proxy: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _env(args: argparse.Namespace) -> int:
    """Print the variables for one agent client, in the chosen format."""
    try:
        pairs = client_env.variables(args.client, args.proxy_url, forward_proxy=not args.no_forward_proxy)
    except ValueError as exc:
        print(f"airgap-proxy: --proxy-url: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(client_env.render(pairs, args.format))
    return EXIT_OK


def _suggest_policy(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Read a report-only run's audit log and print the policy that would keep its local destinations working."""
    config = load_config(args.config, env) if args.config or env.get(ENV_CONFIG) else Config()
    try:
        if args.logfile == "-":
            events = suggest_policy.read_events(sys.stdin)
        else:
            with open(args.logfile, encoding="utf-8", errors="replace") as log:
                events = suggest_policy.read_events(log)
    except OSError as exc:
        print(f"airgap-proxy: cannot read {args.logfile}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    suggestion = suggest_policy.suggest(events, config.rules)
    sys.stdout.write(suggest_policy.render(suggestion, config.rules))
    return EXIT_OK


def _serve(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Serve; a reload (SIGHUP, admin API) re-reads the same file with the environment captured now.

    One worker (the default) is a single process; more run under a supervisor
    (:mod:`airgap_proxy.workers`), once the configuration has loaded.
    """
    config = load_config(args.config, env)
    # First, before anything serves: from here on no connection leaves but through the egress client.
    guard.install(config.rules, enforce=config.airgapped)
    count = workers.worker_count(config.workers if args.workers is None else parse_workers("--workers", args.workers))
    try:
        if count > 1:
            return workers.supervise(
                config, count, host=args.host, port=args.port, loader=lambda: load_config(args.config, env)
            )
        return run(config, host=args.host, port=args.port, loader=lambda: load_config(args.config, env))
    except StoreError as exc:
        print(f"airgap-proxy: {database_url.scrub(str(exc), config.tenants.store)}", file=sys.stderr)
        return EXIT_NOT_LOCAL


def _rotate_keys(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Re-seal every tenant API key with the current secret key; print counts, never keys.

    The previous keys (``AIRGAP_PROXY_PREVIOUS_SECRET_KEYS``) must include every
    key a record was sealed with; records that cannot be opened are left as they
    are and named (exit status 1).
    """
    config = load_config(args.config, env)
    if config.secret_key is None:
        print(
            f"airgap-proxy: rotate-keys needs the new secret key in {ENV_SECRET_KEY} (or tenants.secret_key_file)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    keyring = crypto.Keyring.from_texts(config.secret_key, config.previous_secret_keys, os.urandom)
    assert keyring.current is not None
    try:
        report = _rotate(config, keyring)
    except StoreError as exc:
        print(f"airgap-proxy: {database_url.scrub(str(exc), config.tenants.store)}", file=sys.stderr)
        return EXIT_NOT_LOCAL
    if report is None:
        print(f"tenant store {config.tenants.store} does not exist: nothing to re-encrypt")
        return EXIT_OK
    print(
        f"re-encrypted {report.resealed} tenant API key(s) with secret key id {keyring.current.key_id}; "
        f"{report.current} already current, {report.without_key} without a key, {len(report.failed)} failed"
    )
    for tenant, why in report.failed:
        print(f"airgap-proxy: tenant {tenant}: {why}", file=sys.stderr)
    return EXIT_OK if not report.failed else EXIT_NOT_LOCAL


def _rotate(config: Config, keyring: crypto.Keyring) -> RotationReport | None:
    """Rotate in PostgreSQL or in the SQLite file (None: there is no file)."""
    if config.tenants.is_postgres:
        return asyncio.run(tenant_commands.rotate(config.tenants, keyring))
    path = config.tenants.store
    if not TenantStore.exists(path):
        return None
    store = TenantStore(path)
    try:
        store.open()
        return store.rotate(keyring)
    finally:
        store.close()


def _migrate(args: argparse.Namespace, env: dict[str, str]) -> int:
    """``tenants migrate``: copy a SQLite store into PostgreSQL; print counts, never keys or passwords."""
    config = load_config(args.config, env)
    target = args.target or config.tenants.store
    if not database_url.is_postgres(target):
        print(
            "airgap-proxy: tenants migrate needs a postgresql:// target: --to URL, or tenants.store / "
            "tenants.store_url_env in the configuration",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        report = asyncio.run(tenant_commands.migrate(args.source, target, config.tenants, overwrite=args.overwrite))
    except StoreError as exc:
        print(f"airgap-proxy: {database_url.scrub(str(exc), target)}", file=sys.stderr)
        return EXIT_NOT_LOCAL
    print(
        f"copied {report.added + report.replaced} of {report.read} tenant provider(s) to {database_url.mask(target)}: "
        f"{report.added} added, {report.replaced} replaced, {report.skipped} skipped (already there; --overwrite "
        "replaces them)"
    )
    return EXIT_OK


def _classify(args: argparse.Namespace, env: dict[str, str]) -> int:
    # The same policy serve would use: --config, else $AIRGAP_PROXY_CONFIG, else built-in.
    config = load_config(args.config, env) if args.config or env.get(ENV_CONFIG) else Config()
    resolve = None if args.no_resolve else system_resolve
    status = EXIT_OK
    for url in args.urls:
        decision = policy.classify(url, config.rules, resolve)
        if not decision.is_local:
            status = EXIT_NOT_LOCAL
        if args.json:
            print(json.dumps(_decision_json(url, decision)))
        else:
            print(f"{decision.verdict.value:<8}  {url}  {decision.reason}")
    return status


def _decision_json(url: str, decision: policy.Decision) -> dict[str, Any]:
    return {
        "url": url,
        "verdict": decision.verdict.value,
        "reason": decision.reason,
        "rule": decision.rule.value,
        "host": decision.host or None,
        "addresses": list(decision.addresses),
    }


def _check_config(args: argparse.Namespace, env: dict[str, str]) -> int:
    config = load_config(args.config, env)
    report = config.redacted()
    status = EXIT_OK
    verdicts = []
    for upstream in config.upstreams:
        decision = routing.full_decision(upstream, config.rules, system_resolve)
        verdicts.append({"upstream": upstream.name, **_decision_json(upstream.base_url, decision)})
        if not decision.is_local and config.airgapped:
            status = EXIT_NOT_LOCAL
    report["verdicts"] = verdicts
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(yaml.safe_dump({k: v for k, v in report.items() if k != "verdicts"}, sort_keys=False).rstrip())
        print("upstream verdicts:")
        if not verdicts:
            print("  (no upstream configured)")
        for item in verdicts:
            print(f"  {item['upstream']}: {item['verdict']} - {item['reason']}")
    mode = "air-gapped (enforcing)" if config.airgapped else "report-only (NOT enforcing)"
    print(
        f"config OK; mode: {mode}"
        if status == EXIT_OK
        else f"config loads, but an upstream is not local; mode: {mode}",
        file=sys.stderr,
    )
    return status


def _status(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(fetch_status(args.url))
    except ProxyError as exc:
        print(f"airgap-proxy: cannot read status from {args.url}: {exc.message}", file=sys.stderr)
        return EXIT_NOT_LOCAL
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_status(report))
    healthy = report.get("reachable") is True and report.get("airgap_compliant") is True
    return EXIT_OK if healthy else EXIT_NOT_LOCAL


async def fetch_status(base_url: str) -> dict[str, Any]:
    """GET the proxy's status through the egress client (so the policy applies here too)."""
    client = EgressClient(Config().rules, enforce=True, connect_timeout_s=5, read_timeout_s=10)
    await client.start()
    try:
        response = await client.request(
            "GET", base_url.rstrip("/") + "/api/v1/llm/status", headers={"Accept": "application/json"}, body=None
        )
        try:
            body = await client.read_limited(response, 1 << 20)
        finally:
            response.release()
    finally:
        await client.close()
    if response.status != 200:
        raise UpstreamError(f"HTTP {response.status}")
    try:
        data = json.loads(body)
    except ValueError:
        raise UpstreamError("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("the answer is not a JSON object")
    return data


def format_status(report: dict[str, Any]) -> str:
    """A readable summary and one table row per upstream."""
    lines = [
        f"provider_type     {report.get('provider_type')}",
        f"model             {report.get('model')}",
        f"reachable         {report.get('reachable')}",
        f"airgap_compliant  {report.get('airgap_compliant')}",
        f"airgapped         {report.get('airgapped')}",
        f"fallback_active   {report.get('fallback_active')}",
    ]
    if report.get("reachable") is not True and report.get("fallback_active") is True and report.get("upstream"):
        lines.append("")
        answer = (
            "the deterministic fallback answers"
            if report.get("fallback_mode") == "deterministic"
            else "requests get 503 (fallback.mode: error)"
        )
        lines.append(f"upstream {report.get('upstream')} is not reachable: {answer}")
    upstreams = report.get("upstreams") or []
    if upstreams:
        columns = ("name", "provider_type", "verdict", "health", "in_flight", "base_url")
        rows = [[str(u.get(c, "")) for c in columns] for u in upstreams]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines.append("")
        lines.append("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in rows:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        for u in upstreams:
            if u.get("verdict") != "local" or u.get("last_error"):
                lines.append(
                    f"  {u.get('name')}: {u.get('reason')}"
                    + (f"; last error: {u['last_error']}" if u.get("last_error") else "")
                )
    return "\n".join(lines)
