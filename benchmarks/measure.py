"""Readings for the benchmark runner: /proc (CPU time, memory) and load runs (wrk, stream_client).

CPU and memory are summed over a process and its descendants, so that nginx
(master and worker), LiteLLM and a multi-process airgap-proxy are measured
whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POST_LUA = HERE / "post.lua"
STREAM_CLIENT = HERE / "stream_client.py"
LOAD_CPU = "1"  # the load generators share CPU 1 with the upstream instrument
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c cpus``; ``None`` means every CPU (undo the runner's own pinning)."""
    return ["taskset", "-c", cpus or f"0-{(os.cpu_count() or 1) - 1}", *argv]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return total * TICK_S


def memory_mib(pid: int, key: str = "VmRSS") -> float:
    """``key`` of /proc/PID/status (``VmRSS`` now, ``VmHWM`` peak) summed over the tree, in MiB."""
    total_kib = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in lines if line.startswith(key + ":")), 0)
    return total_kib / 1024


def settle(pid: int, share: float = 0.05, window: float = 0.25, timeout: float = 20) -> None:
    """Wait until the tree of ``pid`` uses under ``share`` of a CPU over ``window`` seconds.

    So that work left from the previous run (LiteLLM finishing requests that
    wrk abandoned) is neither measured nor in the way of the next run.
    """
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - before < share * window:
            return
        before = now


class RssSampler:
    """The largest summed VmRSS of a process tree, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak_mib = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, memory_mib(self.pid))
            if self._stop.wait(self.interval):
                return


@dataclass
class Load:
    """What one load run measured. Latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk(
    url: str,
    connections: int,
    seconds: int,
    body: str | None = None,
    headers: Sequence[str] = (),
    cpus: str | None = LOAD_CPU,
) -> Load:
    """One ``wrk -t1`` run with post.lua; errors count sockets errors and non-2xx/3xx answers."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(POST_LUA)]
    for header in headers:
        argv += ["-H", header]
    env = {**os.environ, "BENCH_BODY": body} if body else None
    done = subprocess.run(pinned(cpus, [*argv, url]), capture_output=True, text=True, env=env, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Load(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        extra={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
    )


def streams(
    url: str,
    concurrency: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
    body: str | None = None,
    headers: Sequence[str] = (),
    pace_ms: float = 0,
    chunks: int = 0,
    ramp_s: float = 0,
    cpus: str | None = LOAD_CPU,
) -> Load:
    """One stream_client.py run (TTFB percentiles, chunk arrival checks) in its own process."""
    argv = [sys.executable, str(STREAM_CLIENT), url, "--concurrency", str(concurrency)]
    if seconds is not None:
        argv += ["--seconds", str(seconds)]
    if requests is not None:
        argv += ["--requests", str(requests)]
    if body is not None:
        argv += ["--body", body]
    for header in headers:
        argv += ["--header", header]
    if pace_ms:
        argv += ["--pace-ms", str(pace_ms), "--chunks", str(chunks)]
    if ramp_s:
        argv += ["--ramp-s", str(ramp_s)]
    done = subprocess.run(pinned(cpus, argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stream_client failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout)
    return Load(
        requests=data["completed"],
        seconds=data["seconds"],
        p50_ms=data["ttfb_ms"]["p50"],
        p90_ms=data["ttfb_ms"]["p90"],
        p99_ms=data["ttfb_ms"]["p99"],
        errors=data["errors"],
        extra={k: v for k, v in data.items() if k not in ("completed", "seconds", "errors")},
    )
