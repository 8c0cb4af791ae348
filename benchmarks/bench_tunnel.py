"""The forward proxy's ``CONNECT`` tunnels beside a direct connection: throughput and set-up latency.

The blaster (``benchmarks/blaster.py``, on the upstream's CPU) is the far
end. The runner's client (uvloop) does
the same directly and through ``CONNECT`` to airgap-proxy (pinned to its CPU,
``forward_proxy.enabled``, the JSON audit log on): download and upload MB/s
(10^6 bytes), and the time from ``connect()`` to the first byte back through
a new tunnel (TCP connect, ``CONNECT``, ``200``, one round trip) beside the
same without the proxy.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import sys
import time

from benchmarks.measure import cpu_seconds, settle
from benchmarks.report import Row
from benchmarks.scenarios import Settings
from benchmarks.servers import HERE, UPSTREAM_CPU, Fleet, Server, child_env, free_port

CHUNK = 256 * 1024  # as the blaster's
SETUP_TITLE = "CONNECT set-up (connect to first byte back)"


async def _open(port: int, proxy: int | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy or port)
    if proxy is not None:
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    return reader, writer


async def _download(port: int, proxy: int | None, size: int) -> float:
    reader, writer = await _open(port, proxy)
    started = time.perf_counter()
    writer.write(b"D" + struct.pack("!Q", size))
    got = 0
    while chunk := await reader.read(1 << 20):
        got += len(chunk)
    elapsed = time.perf_counter() - started
    writer.close()
    if got != size:
        raise RuntimeError(f"downloaded {got} of {size} bytes")
    return size / elapsed / 1e6


async def _upload(port: int, proxy: int | None, size: int) -> float:
    reader, writer = await _open(port, proxy)
    payload = b"\1" * CHUNK
    started = time.perf_counter()
    writer.write(b"U" + struct.pack("!Q", size))
    left = size
    while left > 0:
        writer.write(payload[: min(left, CHUNK)])
        left -= min(left, CHUNK)
        await writer.drain()
    if await reader.readexactly(1) != b"K":
        raise RuntimeError("no acknowledgement")
    elapsed = time.perf_counter() - started
    writer.close()
    return size / elapsed / 1e6


async def _setups(port: int, proxy: int | None, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        reader, writer = await _open(port, proxy)
        writer.write(b"E")
        await reader.readexactly(1)
        times.append((time.perf_counter() - started) * 1000)
        writer.close()
        await writer.wait_closed()
    return times


def _run(coro: object) -> object:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wait_listening(server: Server, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"blaster exited: {server.log_tail()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("blaster did not listen")


def tunnel(fleet: Fleet, s: Settings) -> list[Row]:
    """Download, upload and set-up rows for ``direct`` and ``airgap-proxy``."""
    port = free_port()
    blaster = fleet.spawn(
        "blaster", [sys.executable, str(HERE / "blaster.py"), str(port)], child_env(), UPSTREAM_CPU, port
    )
    _wait_listening(blaster)
    config = {"forward_proxy": {"enabled": True, "allow_ports": [port]}, "logging": {"format": "json"}}
    proxy = fleet.airgap_proxy(None, config=config)
    size = (64 if s.seconds <= 2 else 512) * 1_000_000
    setups = 200 if s.seconds <= 2 else 1000
    rows: list[Row] = []
    try:
        for name, via in (("direct", None), ("airgap-proxy", proxy.port)):
            settle(proxy.pid)
            for title, measure in (("tunnel download", _download), ("tunnel upload", _upload)):
                before = cpu_seconds(proxy.pid)
                rates = [float(_run(measure(port, via, size))) for _ in range(3)]  # type: ignore[arg-type]
                cpu_ms = (cpu_seconds(proxy.pid) - before) * 1000 / (3 * size / 1e8)
                notes = f"MB/s, median of 3 × {size // 1_000_000} MB"
                if via is not None:
                    notes += f"; proxy CPU {cpu_ms:.0f} ms per 100 MB"
                rows.append(Row(f"{title} (MB/s)", name, rate=statistics.median(rates), notes=notes))
            before = cpu_seconds(proxy.pid)
            started = time.perf_counter()
            times: list[float] = _run(_setups(port, via, setups))  # type: ignore[assignment]
            rate = setups / (time.perf_counter() - started)
            cpu = (cpu_seconds(proxy.pid) - before) / setups * 1e6 if via is not None else None
            rows.append(
                Row(
                    SETUP_TITLE,
                    name,
                    rate=rate,
                    p50=statistics.median(times),
                    p90=_percentile(times, 0.9),
                    p99=_percentile(times, 0.99),
                    cpu_us=cpu,
                    notes=f"{setups} new connections one after the other"
                    + ("; CPU is per tunnel, audit line included" if via is not None else ""),
                )
            )
    finally:
        fleet.stop(proxy)
        fleet.stop(blaster)
    return rows
