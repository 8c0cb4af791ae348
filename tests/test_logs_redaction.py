"""What a served proxy writes to its log when clients send what aiohttp cannot parse.

``airgap-proxy serve`` runs as a real process; the attacks go over raw
sockets. Every line it writes is one JSON object, a secret sent in a
malformed header never reaches the log, a malformed request costs at most
one line, and a flood of them a bounded number.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap_proxy import logs
from tests.test_admin import ADMIN_TOKEN, SECRET_KEY
from tests.test_serve import ROOT, clean_env, free_port, wait_for_port

CLIENT_SECRET = "sk-live-client-secret-0123456789"
FLOOD = 500


class Served:
    """The proxy process and every line it wrote to stdout and stderr, as they come."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.lines: list[bytes] = []
        self._lock = threading.Lock()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (process.stdout, process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self.lines.append(line)

    def count(self) -> int:
        with self._lock:
            return len(self.lines)

    def settle(self, quiet_s: float = 0.4, timeout: float = 5.0) -> int:
        """Wait until no line has come for ``quiet_s``; the line count then."""
        deadline = time.monotonic() + timeout
        seen = self.count()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = self.count()
            if now == seen:
                return now
            seen = now
        return seen

    def stop(self) -> list[bytes]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return list(self.lines)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.strip()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    key_hash = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    (tmp_path / "config.yaml").write_text(
        f"clients:\n  - name: app\n    tenant: team-a\n    key_hash: {key_hash}\n", encoding="utf-8"
    )
    env = clean_env(
        AIRGAP_PROXY_ADMIN_TOKEN=ADMIN_TOKEN,
        AIRGAP_PROXY_SECRET_KEY=SECRET_KEY,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "airgap_proxy", "serve", "--port", str(port), "--config", "config.yaml"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proxy = Served(process, port)
    try:
        wait_for_port(port, process)  # type: ignore[arg-type]
        proxy.settle(quiet_s=0.2)
        yield proxy
    finally:
        proxy.stop()


def send(port: int, data: bytes) -> bytes:
    """``data`` on a fresh connection; whatever comes back until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


HEALTHZ = head(b"GET /healthz HTTP/1.1", b"Host: proxy", b"Connection: close")

MALFORMED = {
    "control byte in Authorization": head(
        b"POST /v1/chat/completions HTTP/1.1",
        b"Host: proxy",
        b"Authorization: Bearer " + CLIENT_SECRET.encode() + b"\x01",
        b"Content-Length: 0",
    ),
    "garbage request line": b"\x16\x03\x01 " + CLIENT_SECRET.encode() + b" GARBAGE\x00\r\n\r\n",
    "garbage after a first request": HEALTHZ.replace(b"close", b"keep-alive")
    + b"G\x01T / "
    + CLIENT_SECRET.encode()
    + b"\r\n\r\n",
    "oversized header": head(
        b"GET /v1/models HTTP/1.1",
        b"Host: proxy",
        b"X-Api-Key: " + CLIENT_SECRET.encode() + b"a" * 20_000,
    ),
    "admin token in a malformed header line": head(
        b"GET /api/v1/admin/tenants HTTP/1.1",
        b"Host: proxy",
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\x7f\x00",
    ),
    "admin token in a header without a colon": head(
        b"GET /api/v1/admin/tenants HTTP/1.1",
        b"Host: proxy",
        b"Bearer " + ADMIN_TOKEN.encode(),
    ),
}

SECRETS = (CLIENT_SECRET.encode(), ADMIN_TOKEN.encode(), SECRET_KEY.encode())


def assert_clean(lines: list[bytes]) -> None:
    """No secret in ``lines``, and every non-empty one is a JSON object."""
    for line in lines:
        for secret in SECRETS:
            assert secret not in line, line
        if line.strip():
            assert isinstance(json.loads(line), dict), line


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_writes_at_most_one_json_line_without_secrets(served: Served, data: bytes) -> None:
    before = served.count()
    reply = send(served.port, data)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    after = served.settle()
    written = served.lines[before:after]
    assert len(written) <= 1, b"".join(written).decode(errors="replace")
    assert_clean(written)
    for event in map(json.loads, written):
        assert event["event"] == "bad_request"
        assert event["level"] in {"info", "warning"}
    assert b'"status":"ok"' in send(served.port, HEALTHZ).replace(b" ", b"")
    assert_clean(served.stop())


def test_a_flood_of_malformed_requests_is_rate_limited_and_counted(served: Served) -> None:
    data = MALFORMED["control byte in Authorization"]
    before = served.count()
    started = time.monotonic()
    for _ in range(FLOOD):
        send(served.port, data)
    elapsed = time.monotonic() - started
    served.settle(quiet_s=1.5, timeout=10)
    assert b'"status":"ok"' in send(served.port, HEALTHZ).replace(b" ", b"")
    lines = served.stop()
    assert_clean(lines)
    flood = [json.loads(line) for line in lines[before:] if line.strip()]
    logged = [e for e in flood if e["event"] == "bad_request"]
    suppressed = [e for e in flood if e["event"] == "log_suppressed" and e["suppressed_event"] == "bad_request"]
    windows = int(elapsed) + 2
    assert len(logged) <= windows * logs.RATE_LIMIT_PER_S, (len(logged), elapsed)
    assert len(suppressed) <= windows
    assert len(logged) + sum(e["count"] for e in suppressed) == FLOOD
