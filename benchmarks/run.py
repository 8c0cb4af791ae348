"""The benchmark suite in one command: airgap-proxy against the upstream direct, a minimal aiohttp
pass-through, nginx and the LiteLLM proxy. Not a test.

    python benchmarks/run.py [--quick] [--duration 10] [--only chat-c1,ttfb-c1] [--targets direct,airgap-proxy]
                             [--json results.json]

Each proxy runs pinned to CPU 0; the upstream instrument, the load generators
(wrk, stream_client.py) and this runner share CPU 1. The workers-scaling
scenario pins nothing. Prints one markdown table; docs/performance.md
explains every column. Every process started here is stopped on exit,
Ctrl-C included. Needs wrk and taskset; nginx and LiteLLM
(``scripts/real-servers setup``) are skipped when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_tunnel, report, scenarios, servers
from benchmarks.measure import memory_mib, settle
from benchmarks.report import Row
from benchmarks.scenarios import Settings, Target
from benchmarks.servers import Fleet, Server

TARGETS = ("direct", "airgap-proxy", "passthrough", "nginx", "litellm")
OTHERS = {
    "fallback": scenarios.fallback,
    "surfaces": scenarios.surfaces,
    "tunnel": bench_tunnel.tunnel,
    "workers": scenarios.workers,
}
SCENARIOS = (*scenarios.SUITE, "fallback", "surfaces", "tunnel", "classifier", "workers")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 200 slow streams of 3 chunks")
    parser.add_argument("--only", help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    parser.add_argument("--targets", help=f"comma-separated targets: {','.join(TARGETS)}")
    parser.add_argument("--slow-streams", type=int, help="concurrent slow streams (default 1000; --quick 200)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir (process logs, audit log)")
    args = parser.parse_args()
    for option, known in (("only", SCENARIOS), ("targets", TARGETS)):
        unknown = set(_names(getattr(args, option), known)) - set(known)
        if unknown:
            parser.error(f"--{option}: unknown {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    return args


def _names(value: str | None, default: tuple[str, ...]) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()] if value else list(default)


def settings_of(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            seconds=2, litellm_seconds=2, slow_streams=args.slow_streams or 200, slow_chunks=3, slow_pace_ms=500
        )
    return Settings(
        seconds=args.duration,
        litellm_seconds=max(2, args.duration // 2),
        slow_streams=args.slow_streams or 1000,
        slow_chunks=10,
        slow_pace_ms=1000,
    )


def log(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def start_target(name: str, fleet: Fleet, upstream: Server, settings: Settings) -> Target:
    """Start ``name`` in front of ``upstream``; raise LookupError when it is not installed."""
    if name == "direct":
        return Target("direct", upstream, measured=False)
    if name == "airgap-proxy":
        needed = settings.slow_streams + 64
        limits = {"max_in_flight": needed, "max_connections": needed + 1024} if needed > 1024 else None
        return Target(name, fleet.airgap_proxy(upstream, limits=limits))
    if name == "passthrough":
        return Target(name, fleet.passthrough(upstream))
    if name == "nginx":
        if shutil.which("nginx") is None:
            raise LookupError("nginx is not installed (apt-get install nginx-light)")
        return Target(name, fleet.nginx(upstream))
    binary = servers.litellm_path()
    if not binary.exists():
        raise LookupError(f"{binary} not found (scripts/real-servers setup)")
    paced = fleet.instrument(settings.paced_chunks, settings.paced_pace_ms)
    proxy = fleet.litellm({"bench": upstream, "bench-paced": paced}, binary)
    return Target(
        name,
        proxy,
        headers=(f"Authorization: Bearer {servers.LITELLM_KEY}",),
        paced_model="bench-paced",
        slow_streams=False,
        litellm=True,
    )


def run_suite(
    fleet: Fleet, settings: Settings, targets: list[str], only: list[str], started: float, rows: list[Row]
) -> None:
    """The per-target scenarios; rows are appended as they come (kept on Ctrl-C).

    Every target is started first; then each scenario runs on one target after
    the other. The rows compared in a ratio are so measured within a minute
    of each other: on a shared machine, whose speed drifts over minutes, that
    matters more than anything else.
    """
    suite = [key for key in scenarios.SUITE if key in only]
    if not suite:
        return
    upstream = fleet.instrument()
    running: list[Target] = []
    try:
        for name in targets:
            log(started, f"{name}: starting")
            try:
                target = start_target(name, fleet, upstream, settings)
            except LookupError as exc:
                log(started, f"{name}: skipped: {exc}")
                rows.append(Row("(all)", name, notes=f"skipped: {exc}"))
                continue
            except Exception as exc:
                rows.append(Row("(all)", name, error=f"did not start: {exc}"))
                continue
            time.sleep(0.5)
            if target.measured:
                target.idle_mib = memory_mib(target.server.pid)
            scenarios.warm_up(target, settings)
            running.append(target)
        for key in suite:
            for target in running:
                log(started, f"{target.name}: {key}")
                settle(target.server.pid)
                try:
                    rows.append(scenarios.SUITE[key](target, settings))
                except Exception as exc:
                    rows.append(Row(key, target.name, error=f"{type(exc).__name__}: {exc}"))
    finally:
        for server in list(fleet.servers):
            fleet.stop(server)


def run_others(fleet: Fleet, settings: Settings, only: list[str], started: float, rows: list[Row]) -> None:
    for key in ("fallback", "surfaces", "tunnel", "classifier", "workers"):
        if key not in only:
            continue
        log(started, key)
        try:
            rows += [scenarios.classifier(settings)] if key == "classifier" else OTHERS[key](fleet, settings)
        except Exception as exc:
            rows.append(Row(key, "airgap-proxy", error=f"{type(exc).__name__}: {exc}"))


def environment() -> dict[str, str]:
    """Versions and hardware, for the JSON report."""
    from airgap_proxy import __version__

    def output(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "not found"
        return (done.stdout or done.stderr).strip()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    litellm = servers.litellm_path()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "airgap-proxy": f"{__version__} ({output(['git', '-C', str(servers.ROOT), 'describe', '--always', '--dirty'])})",
        "nginx": output(["nginx", "-v"]).removeprefix("nginx version: "),
        "wrk": output(["wrk", "-v"]).split(" [", 1)[0].removeprefix("wrk "),
        "litellm": output(
            [str(litellm.parent / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
        )
        if litellm.exists()
        else "not installed",
    }


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("run.py needs wrk and taskset (apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    settings = settings_of(args)
    only, targets = _names(args.only, SCENARIOS), _names(args.targets, TARGETS)
    os.sched_setaffinity(0, {1} if (os.cpu_count() or 1) > 1 else {0})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="airgap-bench-"))
    try:
        with Fleet(work) as fleet:
            run_suite(fleet, settings, targets, only, started, rows)
            run_others(fleet, settings, only, started, rows)
    except KeyboardInterrupt:
        log(started, "interrupted: every process stopped; partial results follow")
    finally:
        if args.keep_logs:
            log(started, f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    env = environment()
    print(report.markdown(rows))
    print(f"\nwall time {wall:.0f} s; {settings}")
    print("; ".join(f"{k}: {v}" for k, v in env.items()))
    if args.json:
        data = {"environment": env, "settings": asdict(settings), "wall_s": wall, "rows": report.as_json(rows)}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
