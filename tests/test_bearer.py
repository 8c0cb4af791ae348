"""Bearer credentials that are not valid UTF-8 are 401 on every authenticated route, never a 500."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from airgap_proxy import tenants
from airgap_proxy.app import create_app
from tests.conftest import make_config

ADMIN_TOKEN = "admin-token-0123456789abcdef"
SECRET_KEY = "tenant-secret-key-0123456789abcdef"
CLIENT_KEY = "client-key-0123456789"
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def raw(port: int, method: str, path: str, authorization: bytes, body: bytes = b"") -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode()
    writer.write(head + b"Authorization: " + authorization + b"\r\n\r\n" + body)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


@pytest.fixture
async def port(aiohttp_server: Any, tmp_path: Path) -> int:
    raw_config = {
        "tenants": {"store": str(tmp_path / "tenants.db")},
        "clients": [{"name": "c", "key_hash": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(), "tenant": "team-a"}],
    }
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN, "AIRGAP_PROXY_SECRET_KEY": SECRET_KEY}
    server = await aiohttp_server(create_app(make_config(raw_config, env)))
    return int(server.port)


ROUTES = [
    pytest.param("GET", "/api/v1/tenants", b"", id="admin api"),
    pytest.param("PUT", "/api/v1/tenants/team-a/llm-provider", b"{}", id="admin put"),
    pytest.param("POST", "/api/v1/admin/reload", b"", id="admin reload"),
    pytest.param("POST", "/v1/chat/completions", CHAT, id="v1 with clients"),
    pytest.param("GET", "/api/v1/llm/status?tenant=team-a", b"", id="status with clients"),
]
BAD_TOKENS = [
    pytest.param(b"Bearer \xff\xfe" + ADMIN_TOKEN.encode(), id="latin-1 bytes"),
    pytest.param(b"Bearer " + ADMIN_TOKEN.encode() + b"\xc3", id="truncated utf-8"),
    pytest.param(b"Bearer \xed\xa0\x80", id="encoded surrogate"),
    pytest.param("Bearer ключ".encode("cp1251"), id="cp1251"),
]


@pytest.mark.parametrize("authorization", BAD_TOKENS)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_undecodable_bearer_token_is_401(
    port: int, method: str, path: str, body: bytes, authorization: bytes
) -> None:
    with capture_logs() as logs:
        status, answer = await raw(port, method, path, authorization, body)
    assert status == 401, answer
    assert answer["error"]["code"] == "unauthorized"
    assert not [entry for entry in logs if entry.get("log_level") in ("error", "critical")]
    # The proxy keeps serving, and good tokens still work.
    assert (await raw(port, "GET", "/api/v1/tenants", b"Bearer " + ADMIN_TOKEN.encode()))[0] == 200
    assert (await raw(port, "POST", "/v1/chat/completions", b"Bearer " + CLIENT_KEY.encode(), CHAT))[0] == 200


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        pytest.param("Bearer abc", b"abc", id="plain"),
        pytest.param("bearer   abc  ", b"abc", id="case and spaces"),
        pytest.param("Bearer ключ", "ключ".encode(), id="utf-8 is fine"),
        pytest.param("Bearer \udcff\udcfe", None, id="undecodable bytes"),
        pytest.param("Basic abc", None, id="other scheme"),
        pytest.param("Bearer ", None, id="empty"),
        pytest.param(None, None, id="missing"),
    ],
)
def test_bearer_token_bytes(authorization: str | None, expected: bytes | None) -> None:
    assert tenants.bearer_token_bytes(authorization) == expected


def test_bearer_matches_compares_bytes() -> None:
    assert tenants.bearer_matches("Bearer ключ", "ключ")
    assert not tenants.bearer_matches("Bearer \udcff", "ключ")
    assert not tenants.bearer_matches("Bearer ключ2", "ключ")
    assert not tenants.bearer_matches(None, "ключ")
