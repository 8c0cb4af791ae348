"""What a served proxy writes to its log when clients send what aiohttp cannot parse.

``airgap-proxy serve`` runs as a real process; the attacks go over raw
sockets. Every line it writes is one JSON object, a secret sent in a
malformed header never reaches the log, a malformed request costs at most
one line, and a flood of them a bounded number.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from airgap_proxy import logs
from airgap_proxy.config import LogFormat, LoggingConfig
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


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_the_error_answer_does_not_echo_the_request(served: Served, data: bytes) -> None:
    # aiohttp's own 400 repeats the refused header line, key included, as text/plain.
    reply = send(served.port, data)
    for secret in SECRETS:
        assert secret not in reply, reply
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), reply
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_request"
    assert error["message"].startswith("Malformed HTTP request")
    assert b'"status":"ok"' in send(served.port, HEALTHZ).replace(b" ", b"")


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


# --------------------------------------------------------------------------- #
# In process: exceptions, warnings, the event loop
# --------------------------------------------------------------------------- #


class Lines:
    """What :func:`logs.configure` (JSON, to a captured stream) wrote."""

    def __init__(self) -> None:
        self.stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")

    def events(self) -> list[dict[str, Any]]:
        raw: bytes = self.stream.buffer.getvalue()
        for secret in SECRETS:
            assert secret not in raw, raw
        return [json.loads(line) for line in raw.splitlines() if line.strip()]


@pytest.fixture
def configured() -> Iterator[Lines]:
    """The process-wide logging of ``serve``, to a captured stream; the test run's own afterwards."""
    saved = (
        structlog.get_config(),
        logging.getLogger().handlers[:],
        logging.getLogger().level,
        logging.raiseExceptions,
        warnings.showwarning,
        sys.excepthook,
        threading.excepthook,
        sys.unraisablehook,
    )
    lines = Lines()
    logs.configure(LoggingConfig(format=LogFormat.JSON), stream=lines.stream, secrets=[ADMIN_TOKEN])
    try:
        yield lines
    finally:
        config, handlers, level, raise_exceptions, show, hook, thread_hook, unraisable = saved
        structlog.reset_defaults()
        structlog.configure(**config)
        logs._Fast.processors = None
        logs._Secrets.values = ()
        logging.getLogger().handlers[:] = handlers
        logging.getLogger().setLevel(level)
        logging.raiseExceptions = raise_exceptions
        warnings.showwarning = show
        sys.excepthook, threading.excepthook, sys.unraisablehook = hook, thread_hook, unraisable


def leak() -> None:
    """A bug that quotes what the client sent in its exception."""
    raise ValueError(f"invalid literal for int(): 'Bearer {CLIENT_SECRET}' {ADMIN_TOKEN}")


def test_a_handler_exception_is_logged_as_its_type_and_place_not_its_message(configured: Lines) -> None:
    log = logs.get_logger("airgap_proxy.middleware")
    try:
        leak()
    except ValueError:
        log.error("internal_error", request_id="r1", exc_type="ValueError", exc_info=True)
    [event] = configured.events()
    assert event["event"] == "internal_error"
    assert event["exc_type"] == "ValueError"
    assert event["exc_where"].endswith("test_logs_redaction.py:" + str(leak.__code__.co_firstlineno + 2) + " in leak")
    assert "exception" not in event


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        pytest.param(f"Authorization: Bearer {CLIENT_SECRET}", "Authorization: Bearer ***", id="bearer"),
        pytest.param("Basic dXNlcjpwYXNz", "Basic ***", id="basic"),
        pytest.param("key sk-proj-abcdef123456 leaked", "key sk-*** leaked", id="sk- key"),
        pytest.param("GET /v1?api_key=K123&x=1", "GET /v1?api_key=***&x=1", id="query string"),
        pytest.param('{"x_api_key": "K123", "n": 1}', '{"x_api_key": "***", "n": 1}', id="json"),
        pytest.param(f"the admin token is {ADMIN_TOKEN}.", "the admin token is ***.", id="configured secret"),
        pytest.param(
            "admin.token_file: the token must be at least 16 characters",
            "admin.token_file: the token must be at least 16 characters",
            id="config error untouched",
        ),
    ],
)
def test_redact(configured: Lines, text: str, masked: str) -> None:
    assert logs.redact(text) == masked


def test_an_os_error_keeps_its_errno_and_the_systems_text_not_the_file_name() -> None:
    described = logs.describe_exception(PermissionError(13, "Permission denied", f"/data/{CLIENT_SECRET}"))
    assert described == {
        "exc_type": "PermissionError",
        "exc_where": None,
        "exc_errno": "EACCES",
        "exc_strerror": "Permission denied",
    }


def test_aiohttp_records_keep_their_format_string_never_their_arguments(configured: Lines) -> None:
    try:
        leak()
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", f"Bearer {CLIENT_SECRET}")
    logging.getLogger("aiohttp.access").info(f'127.0.0.1 "GET /?key={CLIENT_SECRET} HTTP/1.1" 200')
    logging.getLogger("aiohttp.client").warning("Unclosed %s", ADMIN_TOKEN)
    error, access, client = configured.events()
    assert (error["event"], error["message"], error["exc_type"]) == (
        "request_error",
        "Error handling request from %s",
        "ValueError",
    )
    assert (access["event"], access["message"]) == ("library_log", "access")
    assert (client["event"], client["logger"], client["message"]) == ("library_log", "aiohttp.client", "Unclosed %s")


def test_a_warning_is_one_json_line_with_secrets_masked(configured: Lines) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"retrying with Authorization: Bearer {CLIENT_SECRET}\nand {ADMIN_TOKEN}", stacklevel=1)
    [event] = configured.events()
    assert event["event"] == "python_warning"
    assert event["category"] == "UserWarning"
    assert event["message"] == "retrying with Authorization: Bearer ***"


def test_the_event_loop_reports_an_unretrieved_task_exception_without_its_repr(configured: Lines) -> None:
    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(logs.loop_exception_handler)
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(leak))
        await asyncio.wait([task])
        del task
        gc.collect()

    asyncio.run(main())
    [event] = [e for e in configured.events() if e["event"] == "asyncio_error"]
    assert event["message"] == "Task exception was never retrieved"
    assert event["exc_type"] == "ValueError"


def test_uncaught_exceptions_are_json_lines(configured: Lines) -> None:
    thread = threading.Thread(target=leak, name="worker-1")
    thread.start()
    thread.join()
    try:
        leak()
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    in_thread, in_main = configured.events()
    assert (in_thread["event"], in_thread["where"], in_thread["exc_type"]) == (
        "uncaught_exception",
        "thread worker-1",
        "ValueError",
    )
    assert (in_main["event"], in_main["where"]) == ("uncaught_exception", "main thread")
