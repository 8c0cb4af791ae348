"""What the workers of ``serve --workers N`` share: a run directory and a line to the supervisor.

The supervisor (:mod:`airgap_proxy.workers`) makes one fresh directory per
run and removes it on exit:

- ``metrics/``: prometheus-client's multiprocess files
  (``PROMETHEUS_MULTIPROC_DIR``), read by whichever worker answers a scrape
  (:mod:`airgap_proxy.metrics`).
- ``workers/PID.json``: each live worker's record (its configuration
  generation and how many reloads it has attempted), replaced atomically
  after each reload; the supervisor removes it when the worker exits.

A worker asks the supervisor to reload every *other* worker by writing its
pid to the control pipe (one short write: atomic); the supervisor sends them
``SIGHUP``, as it does on its own ``SIGHUP``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web

from airgap_proxy.logs import get_logger

METRICS_DIR = "metrics"
WORKERS_DIR = "workers"
# How long POST /api/v1/admin/reload waits for the other workers to report.
RELOAD_WAIT_S = 5.0
_POLL_S = 0.02
_log = get_logger("airgap_proxy.workers")


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker as it last reported itself."""

    pid: int
    generation: int
    reloads: int  # reload attempts so far, failed ones included
    error: str | None = None  # why the last attempt failed, if it did


class WorkerGroup:
    """This worker's handle on the group: publish its record, read the others', ask for a reload."""

    def __init__(self, run_dir: Path, control_fd: int, pid: int | None = None) -> None:
        self.run_dir = run_dir
        self.control_fd = control_fd
        self.pid = os.getpid() if pid is None else pid
        self.reloads = 0

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / METRICS_DIR

    @property
    def workers_dir(self) -> Path:
        return self.run_dir / WORKERS_DIR

    def publish(self, generation: int, *, error: str | None = None, attempted: bool = False) -> None:
        """Replace this worker's record (``attempted``: after a reload attempt)."""
        if attempted:
            self.reloads += 1
        record = WorkerRecord(self.pid, generation, self.reloads, error)
        path = self.workers_dir / f"{self.pid}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record)), encoding="utf-8")
        os.replace(temporary, path)

    def records(self) -> dict[int, WorkerRecord]:
        """Every live worker's record, by pid."""
        found: dict[int, WorkerRecord] = {}
        for path in self.workers_dir.glob("*.json"):
            try:
                found_record = WorkerRecord(**json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:  # the worker exited between the listing and the read
                continue
            found[found_record.pid] = found_record
        return found

    def reload_others(self) -> None:
        """Ask the supervisor to send ``SIGHUP`` to every worker but this one."""
        try:
            os.write(self.control_fd, f"{self.pid}\n".encode())
        except OSError as exc:  # the supervisor is gone (this worker is stopping too)
            _log.warning("workers_reload_not_requested", error=f"{type(exc).__name__}: {exc}")

    async def wait_reloaded(self, before: dict[int, WorkerRecord], timeout_s: float) -> dict[int, bool]:
        """Wait (up to ``timeout_s``) until each worker of ``before`` has attempted one more reload.

        Returns, per worker still alive, whether its reload succeeded in time.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.records()
            pending = [pid for pid, old in before.items() if pid in now and now[pid].reloads <= old.reloads]
            if not pending or time.monotonic() >= deadline:
                return {
                    pid: now[pid].reloads > old.reloads and now[pid].error is None
                    for pid, old in before.items()
                    if pid in now
                }
            await asyncio.sleep(_POLL_S)


GROUP = web.AppKey("group", WorkerGroup)


def parse_control(data: bytes) -> list[int]:
    """The pids in what the supervisor read from the control pipe (whole lines only are ever written)."""
    return [int(line) for line in data.split(b"\n") if line.strip().isdigit()]
