"""``serve --workers N``: a supervisor process and N forked workers sharing one port.

Each worker is the ordinary server (:func:`airgap_proxy.server.serve`) with
its own listening socket bound with ``SO_REUSEPORT``: the kernel spreads new
connections over the workers, and no process hands sockets to another.

Why ``fork`` and not a spawned interpreter per worker: the supervisor has
already parsed and validated the configuration, so every worker runs exactly
that object (a file edited between the check and a spawned worker's own parse
cannot make workers disagree), and imports are paid once. Forking is safe here
because at that point the supervisor has no event loop, no thread, no open
tenant store and no socket: the port check below runs on a throw-away loop
that is closed, its resolver threads joined, and the tenant store it prepares
is closed, before the first fork.

The supervisor, in order:

1. Checks the port: binds it *without* ``SO_REUSEPORT`` (as a single process
   would) and closes it. ``SO_REUSEPORT`` alone would let the workers join the
   sockets of another program of the same user on that port, silently; this
   check fails fast instead. Residual race: a process that binds the port
   between this check and the first worker's bind wins it (the workers then
   fail to start and the supervisor exits 1), or, if it too uses
   ``SO_REUSEPORT`` under the same user, shares it.
2. Creates or upgrades the tenant store if the workers will open it
   (:func:`prepare_tenant_store`; an unusable store exits 1 here).
3. Forks the workers, with the stop and reload signals blocked until each
   worker's loop has its handlers, and waits until every worker listens
   (``workers_started``). A worker that exits before then fails the start:
   the others are stopped and the exit status is 1.
4. Forwards ``SIGTERM``/``SIGINT`` once to each worker (graceful drain), exits
   0 when all have exited; a worker still alive after
   ``timeouts.shutdown_grace_s`` + :data:`KILL_MARGIN_S` is killed. A second
   stop signal kills the workers at once.
5. Forwards ``SIGHUP``: every worker reloads the file itself. A worker started
   later (a replacement) gets a ``SIGHUP`` as it starts if any reload happened,
   so it runs the same file as the others.
6. Reads worker pids from the control pipe (:mod:`airgap_proxy.group`): a
   worker that took ``POST /api/v1/admin/reload`` asks for every other worker
   to get ``SIGHUP``, which counts as a reload for the replacements too.
7. Replaces a worker that exits unexpectedly, at most one start per
   :data:`RESTART_INTERVAL_S`; :data:`CRASH_LIMIT` abnormal exits within
   :data:`CRASH_WINDOW_S` mean a crash loop: it stops the others and exits 1.

The group's run directory (multiprocess metrics, the workers' records) is a
fresh temporary directory per run, removed when the supervisor returns; a
worker's live gauges and record are removed as soon as it exits, its counters
stay (they still count in the sums).

Workers die with the supervisor (``PR_SET_PDEATHSIG``: a killed supervisor
leaves no orphan holding the port; they get ``SIGTERM`` and drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import io
import os
import selectors
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from prometheus_client.multiprocess import mark_process_dead

from airgap_proxy import group, logs, reload, server
from airgap_proxy.app import create_app
from airgap_proxy.config import Config, ConfigError
from airgap_proxy.tenant_store import StoreError, TenantStore

KILL_MARGIN_S = 5.0
RESTART_INTERVAL_S = 1.0
CRASH_LIMIT = 5
CRASH_WINDOW_S = 10.0
EXIT_FAILED = 1

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Blocked around fork; a worker keeps the first three blocked until its loop handles them.
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1
_CONTROL = "control"  # the selector's mark for the control pipe
_log = logs.get_logger("airgap_proxy.workers")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def worker_count(requested: int) -> int:
    """``requested`` workers; 0 (``auto``) is one per available CPU."""
    return requested if requested > 0 else available_cpus()


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class Worker:
    """A forked worker; ``ready_fd`` reads one byte once it listens (-1 once closed)."""

    pid: int
    ready_fd: int
    ready: bool = False


class Supervisor:
    """The parent process of ``serve --workers N``; :meth:`run` returns its exit status."""

    def __init__(
        self, config: Config, host: str, port: int, count: int, loader: reload.Loader | None, *, run_dir: Path
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.host = host
        self.port = port
        self.count = count
        self.loader = loader
        self.workers: dict[int, Worker] = {}
        self.phase = Phase.STARTING
        self.status = 0
        self.reloads = 0  # SIGHUPs forwarded so far
        self.crashes: deque[float] = deque()  # when workers exited abnormally, within CRASH_WINDOW_S
        self.pending_starts = 0  # replacements waiting for RESTART_INTERVAL_S
        self.last_start = float("-inf")
        self.kill_at: float | None = None  # the drain's deadline
        self._selector = selectors.DefaultSelector()
        self._wakeup = (-1, -1)
        self._control = (-1, -1)  # the workers write pids to [1]; read here from [0]

    def run(self) -> int:
        self._install_signals()
        read, write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read, False)
        self._control = (read, write)
        self._selector.register(read, selectors.EVENT_READ, _CONTROL)
        try:
            for _ in range(self.count):
                self._start_worker()
            while self.workers or self.phase is not Phase.STOPPING:
                self._step()
        except BaseException:
            for pid in list(self.workers):  # the supervisor itself failed: take its workers along
                _send(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise
        finally:
            self._restore_signals()
        _log.info("workers_stopped", status=self.status)
        return self.status

    # --- signals ---------------------------------------------------------------

    def _install_signals(self) -> None:
        """Signals reach the supervisor as bytes on a pipe (``set_wakeup_fd``), read with the ready pipes."""
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = (read, write)
        self._selector.register(read, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for sig in _SIGNALS:
            signal.signal(sig, _noop)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        self._selector.close()
        for fd in (*self._wakeup, *self._control):
            if fd >= 0:
                os.close(fd)

    def _read_signals(self) -> list[int]:
        try:
            return list(os.read(self._wakeup[0], 512))
        except BlockingIOError:
            return []

    # --- the loop --------------------------------------------------------------

    def _step(self) -> None:
        timeout = self._timeout()
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                for signum in self._read_signals():
                    self._on_signal(signal.Signals(signum))
            elif key.data is _CONTROL:
                self._on_control()
            else:
                self._on_ready_pipe(key.data)
        self._reap()
        now = time.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._kill_all(reason="shutdown_grace_s exceeded")
        while self.pending_starts and self.phase is not Phase.STOPPING and now >= self.last_start + RESTART_INTERVAL_S:
            self.pending_starts -= 1
            self._start_worker()

    def _timeout(self) -> float | None:
        deadlines = []
        if self.kill_at is not None:
            deadlines.append(self.kill_at)
        if self.pending_starts and self.phase is not Phase.STOPPING:
            deadlines.append(self.last_start + RESTART_INTERVAL_S)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig in _STOP_SIGNALS:
            if self.phase is Phase.STOPPING:
                self._kill_all(reason=f"second {sig.name}")
            else:
                self._stop(sig, status=0)
        elif sig == signal.SIGHUP and self.phase is not Phase.STOPPING:
            self.reloads += 1
            _log.info("workers_reloading", pids=sorted(self.workers))
            self._signal_all(signal.SIGHUP)
        # SIGCHLD needs nothing more: every step reaps.

    def _on_control(self) -> None:
        """A worker reloaded itself (the admin endpoint): ``SIGHUP`` to every other worker."""
        try:
            data = os.read(self._control[0], 4096)
        except BlockingIOError:
            return
        for asker in group.parse_control(data):
            if self.phase is Phase.STOPPING:
                return
            self.reloads += 1
            others = sorted(pid for pid in self.workers if pid != asker)
            _log.info("workers_reloading", pids=others, requested_by=asker)
            for pid in others:
                _send(pid, signal.SIGHUP)

    def _on_ready_pipe(self, worker: Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 16)
        except BlockingIOError:
            return
        if data:
            worker.ready = True
        self._close_ready_pipe(worker)  # written once; EOF: the worker exited first
        if data and self.phase is Phase.STARTING and all(w.ready for w in self.workers.values()):
            self.phase = Phase.RUNNING
            _log.info("workers_started", count=len(self.workers), pids=sorted(self.workers), port=self.port)
        elif data and self.phase is Phase.RUNNING:
            _log.info("worker_ready", pid=worker.pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._close_ready_pipe(worker)
                self._forget(pid)
                self._on_exit(worker, os.waitstatus_to_exitcode(wait_status))

    def _forget(self, pid: int) -> None:
        """Drop an exited worker's live gauges and record; its counters stay in the sums."""
        with contextlib.suppress(OSError):
            mark_process_dead(pid, str(self.run_dir / group.METRICS_DIR))  # type: ignore[no-untyped-call]
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / group.WORKERS_DIR / f"{pid}.json").unlink()

    def _on_exit(self, worker: Worker, code: int) -> None:
        """``code``: the exit status, or minus the number of the signal that killed the worker."""
        described = {"pid": worker.pid, **_describe(code)}
        if self.phase is Phase.STOPPING:
            _log.info("worker_stopped", **described)
            return
        _log.warning("worker_exited", ready=worker.ready, **described)
        if self.phase is Phase.STARTING:
            _log.error("workers_start_failed", reason="a worker exited before listening", **described)
            self._stop(None, status=EXIT_FAILED)
            return
        now = time.monotonic()
        if code != 0:
            self.crashes.append(now)
            while self.crashes and self.crashes[0] < now - CRASH_WINDOW_S:
                self.crashes.popleft()
            if len(self.crashes) >= CRASH_LIMIT:
                _log.error("workers_crash_loop", crashes=len(self.crashes), window_s=CRASH_WINDOW_S)
                self._stop(None, status=EXIT_FAILED)
                return
        self.pending_starts += 1

    def _stop(self, sig: signal.Signals | None, *, status: int) -> None:
        """Drain every worker (once), then exit with ``status``."""
        self.phase = Phase.STOPPING
        self.status = status
        self.pending_starts = 0
        grace = self.config.timeouts.shutdown_grace_s
        self.kill_at = time.monotonic() + grace + KILL_MARGIN_S
        _log.info("workers_stopping", signal=sig.name if sig else None, pids=sorted(self.workers), grace_s=grace)
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: signal.Signals) -> None:
        for pid in list(self.workers):
            _send(pid, sig)

    def _kill_all(self, *, reason: str) -> None:
        for pid in sorted(self.workers):
            _log.warning("worker_killed", pid=pid, reason=reason)
            _send(pid, signal.SIGKILL)

    # --- workers ---------------------------------------------------------------

    def _start_worker(self) -> None:
        replacement = self.phase is Phase.RUNNING
        read, write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read, False)
        sys.stdout.flush()
        sys.stderr.flush()  # a child would write the parent's buffered output again
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the process tests
            os.close(read)
            self._in_child(parent, write)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(write)
        self.last_start = time.monotonic()
        worker = Worker(pid=pid, ready_fd=read)
        self.workers[pid] = worker
        self._selector.register(read, selectors.EVENT_READ, worker)
        if replacement:
            _log.info("worker_started", pid=pid)
            if self.reloads:  # pending until its loop handles it: it then reloads like the others did
                _send(pid, signal.SIGHUP)

    def _close_ready_pipe(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self._selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _in_child(self, parent: int, ready_fd: int) -> None:
        """The worker's side of the fork: drop the supervisor's state, serve, never return."""
        code = EXIT_FAILED
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            self._selector.close()
            for fd in (
                *self._wakeup,
                self._control[0],
                *(w.ready_fd for w in self.workers.values() if w.ready_fd >= 0),
            ):
                os.close(fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            _die_with_parent(parent)
            shared = group.WorkerGroup(self.run_dir, self._control[1])
            code = _serve_worker(self.config, self.host, self.port, self.loader, ready_fd, shared=shared)
        except StoreError as exc:
            print(f"airgap-proxy: {exc}", file=sys.stderr)
        except BaseException as exc:  # noqa: BLE001 - whatever happens, the child must not return into the parent's code
            _log.error("worker_failed", pid=os.getpid(), error=f"{type(exc).__name__}: {exc}")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _serve_worker(
    config: Config, host: str, port: int, loader: reload.Loader | None, ready_fd: int, *, shared: group.WorkerGroup
) -> int:
    def on_listening() -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: PR_SET_PDEATHSIG stops this worker
            os.write(ready_fd, b"1")
        os.close(ready_fd)

    app = create_app(config, loader=loader, group=shared)
    return server.run_app(app, config, host, port, worker=True, on_listening=on_listening)


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
        os.kill(pid, sig)


def _noop(signum: int, frame: object) -> None:
    """A handler, so the signal is delivered (to the wakeup pipe) rather than ignored or fatal."""


def _describe(code: int) -> dict[str, object]:
    if code < 0:
        return {"exit_code": None, "signal": signal.Signals(-code).name}
    return {"exit_code": code, "signal": None}


def _whole_lines(stream: TextIO) -> TextIO:
    """``stream``'s file, line-buffered: one ``write(2)`` per log line.

    Unbuffered, as ``PYTHONUNBUFFERED=1`` (set in the container image) makes
    it, ``print`` writes a line and its newline separately, and the lines of
    workers sharing the stream interleave into invalid JSON. A single write of
    up to ``PIPE_BUF`` (4096) bytes to a pipe is atomic.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture): leave it
        return stream
    buffered = io.BufferedWriter(io.FileIO(fd, "w", closefd=False))
    return io.TextIOWrapper(buffered, encoding=stream.encoding, errors=stream.errors, line_buffering=True)


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` as a single server would (no ``SO_REUSEPORT``), then release it.

    Raises :class:`OSError` if another socket holds it. Runs on a stdlib loop
    that is closed (and its resolver threads joined) on return, so the caller
    can fork afterwards.
    """

    async def bind() -> None:
        loop = asyncio.get_running_loop()
        probe = await loop.create_server(asyncio.Protocol, host, port, reuse_address=True)
        probe.close()
        await probe.wait_closed()

    asyncio.run(bind())


def supervise(
    config: Config, count: int, *, host: str | None = None, port: int | None = None, loader: reload.Loader | None = None
) -> int:
    """Serve with ``count`` (> 1) worker processes on one port; the exit status of ``serve``."""
    sys.stderr = _whole_lines(sys.stderr)
    logs.configure(config.logging, stream=sys.stderr, secrets=logs.secrets_of(config))
    host, port = server.listen_address(config, host, port)
    if port == 0:
        raise ConfigError("listen.port", "port 0 (any free port) would give each worker its own port; set a port")
    try:
        check_port_free(host, port)
    except OSError as exc:
        # asyncio words it "error while attempting to bind on ...": say it as a single process would.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"airgap-proxy: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    _log.info(
        "starting",
        host=host,
        port=port,
        workers=count,
        airgapped=config.airgapped,
        upstreams=[u.name for u in config.upstreams],
        config=config.source,
    )
    prepare_tenant_store(config)
    try:
        run_dir = make_run_dir()
    except OSError as exc:
        print(f"airgap-proxy: cannot create the workers' run directory: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return Supervisor(config, host, port, count, loader, run_dir=run_dir).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def make_run_dir() -> Path:
    """A fresh private directory (mode 0700, under ``TMPDIR`` or ``/tmp``) for this run's shared files."""
    run_dir = Path(tempfile.mkdtemp(prefix="airgap-proxy-workers-"))
    (run_dir / group.METRICS_DIR).mkdir()
    (run_dir / group.WORKERS_DIR).mkdir()
    return run_dir


def prepare_tenant_store(config: Config) -> None:
    """Create or upgrade the tenant store once, before the workers open it together.

    The workers open it as a single process does (always with the admin API
    on, else only if the file exists). Several connections racing to turn a
    new file into a WAL database can fail at once with "database is locked",
    without waiting out the busy timeout; an existing WAL file opens
    concurrently without trouble. The connection is closed before any fork.
    Raises :class:`StoreError` if the store cannot be opened. A PostgreSQL
    store needs nothing here: each worker migrates it under an advisory lock.
    """
    path = config.tenants.store
    if config.tenants.is_postgres:
        return
    if config.admin.token is None and not TenantStore.exists(path):
        return
    store = TenantStore(path)
    try:
        store.open()
    finally:
        store.close()
