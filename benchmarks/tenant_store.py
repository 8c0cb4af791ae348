"""Tenant-routed requests per second: the SQLite tenant store beside PostgreSQL. Not a test.

    python benchmarks/tenant_store.py [--duration 10] [--connections 16]

One proxy per store (pinned to CPU 0), a tenant provider registered through
the admin API pointing at the benchmark instrument, then ``wrk`` with
``X-Tenant-ID``. PostgreSQL is started in a temp dir as the tests do
(``tests/postgres_server.py``). Prints one markdown row per store.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import cpu_seconds, wrk
from benchmarks.scenarios import CHAT_BODY, CHAT_PATH
from benchmarks.servers import PROXY_CPU, Fleet, Server, child_env, free_port, wait_ready
from tests.postgres_server import PostgresServer, require_binaries

ADMIN_TOKEN = "bench-admin-token-0123456789"
SECRET_KEY = "bench-secret-key-0123456789abcdef"


def proxy(fleet: Fleet, work: Path, store: str) -> Server:
    port = free_port()
    config = work / f"proxy-{port}.yaml"
    config.write_text(json.dumps({"version": 1, "tenants": {"store": store}}))
    env = child_env(
        AIRGAP_PROXY_HOST="127.0.0.1",
        AIRGAP_PROXY_PORT=str(port),
        AIRGAP_PROXY_ADMIN_TOKEN=ADMIN_TOKEN,
        AIRGAP_PROXY_SECRET_KEY=SECRET_KEY,
    )
    argv = [sys.executable, "-m", "airgap_proxy", "serve", "--config", str(config)]
    server = fleet.spawn("airgap-proxy", argv, env, PROXY_CPU, port, cwd=work)
    wait_ready(server, "/healthz", 30)
    return server


def register(server: Server, upstream: Server) -> None:
    body = json.dumps({"provider_type": "local-vllm", "base_url": f"{upstream.url}/v1", "model": "bench"})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        connection.request("PUT", "/api/v1/tenants/team-a/llm-provider", body=body, headers=headers)
        assert connection.getresponse().status in (200, 201)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    postgres = PostgresServer(require_binaries())
    postgres.start()
    try:
        database = postgres.create_database()
        with tempfile.TemporaryDirectory() as tmp, Fleet(Path(tmp)) as fleet:
            work = Path(tmp)
            upstream = fleet.instrument()
            print("| store | tenant requests/s | p50 ms | p99 ms | proxy CPU µs/request | errors |")
            print("|---|---|---|---|---|---|")
            for name, store in (("sqlite", str(work / "tenants.db")), ("postgresql", postgres.url(database))):
                server = proxy(fleet, work, store)
                register(server, upstream)
                headers = ("X-Tenant-ID: team-a", "Content-Type: application/json")
                wrk(server.url + CHAT_PATH, args.connections, 1, CHAT_BODY, headers)  # warm-up
                before = cpu_seconds(server.pid)
                load = wrk(server.url + CHAT_PATH, args.connections, args.duration, CHAT_BODY, headers)
                cpu = (cpu_seconds(server.pid) - before) / max(load.requests, 1) * 1e6
                print(
                    f"| {name} | {load.rate:.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | {cpu:.0f} | {load.errors} |"
                )
                fleet.stop(server)
    finally:
        postgres.stop()
        postgres.remove()


if __name__ == "__main__":
    main()
