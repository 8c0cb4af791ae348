"""``limits.max_connections``: a crowd of idle connections cannot starve the proxy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.test_serve import ROOT, clean_env, free_port, wait_for_port


def read_reply(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_connections_past_the_cap_get_503_and_the_proxy_recovers(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("limits: {max_connections: 3}\ntimeouts: {client_header_s: 30}\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "airgap_proxy", "serve", "--config", str(config), "--port", str(port)],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    idle: list[socket.socket] = []
    try:
        wait_for_port(port, process)
        time.sleep(0.2)  # the port probe's connection is gone
        for _ in range(3):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            reply = read_reply(extra)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 1" in head
        assert json.loads(body)["error"]["code"] == "overloaded"

        idle.pop().close()
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as fresh:
            fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_reply(fresh).startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert '"connection_refused"' in err
    assert "Traceback" not in err
