"""The scenarios: which load each sends to a target, and the row it yields.

Per-target scenarios (``SUITE``) run against every target in turn; the
others (fallback, classifier, workers scaling) concern airgap-proxy alone.
A scenario that fails yields a row carrying the error; the run goes on.
"""

from __future__ import annotations

import functools
import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.measure import Load, RssSampler, cpu_seconds, memory_mib, settle, streams, wrk
from benchmarks.report import Row
from benchmarks.servers import ROOT, Fleet, Server

CHAT_BODY = '{"model":"bench","messages":[{"role":"user","content":"Say hello."}]}'
CHAT_PATH = "/v1/chat/completions"


def stream_body(model: str = "bench") -> str:
    return f'{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"Say hello."}}]}}'


@dataclass(frozen=True)
class Settings:
    """Durations and sizes of one run."""

    seconds: int
    litellm_seconds: int
    slow_streams: int
    slow_chunks: int
    slow_pace_ms: int
    warmup_s: int = 1
    stream_chunks: int = 20
    paced_chunks: int = 20
    paced_pace_ms: int = 5


@dataclass
class Target:
    """Where the load goes. ``measured``: whether the process's CPU and memory are the target's own."""

    name: str
    server: Server
    measured: bool = True
    headers: tuple[str, ...] = ()
    paced_model: str = "bench"  # LiteLLM does not pass the query string on: a model whose upstream paces
    slow_streams: bool = True
    litellm: bool = False
    idle_mib: float | None = None

    def url(self, query: str = "") -> str:
        return self.server.url + CHAT_PATH + (f"?{query}" if query else "")

    def seconds(self, settings: Settings) -> int:
        return settings.litellm_seconds if self.litellm else settings.seconds


def measured_row(title: str, target: Target, run: Callable[[], Load], *, sample_peak: bool = False) -> Row:
    """Run ``run`` and read the target's CPU time around it and its memory after (or its peak during)."""
    pid, own = target.server.pid, target.measured
    before = cpu_seconds(pid) if own else 0.0
    if sample_peak and own:
        with RssSampler(pid) as sampler:
            load = run()
        rss: float | None = sampler.peak_mib
    else:
        load = run()
        rss = memory_mib(pid) if own else None
    cpu = (cpu_seconds(pid) - before) / load.requests * 1e6 if own and load.requests else None
    notes = f"{load.errors} errors {load.extra.get('error_samples') or ''}".strip() if load.errors else ""
    detail = {"requests": load.requests, "seconds": load.seconds, "errors": load.errors, **load.extra}
    return Row(title, target.name, load.rate, load.p50_ms, load.p90_ms, load.p99_ms, cpu, rss, notes, detail=detail)


def chat_c1(target: Target, s: Settings) -> Row:
    return measured_row("chat c=1", target, lambda: wrk(target.url(), 1, target.seconds(s), headers=target.headers))


def chat_c64(target: Target, s: Settings) -> Row:
    return measured_row("chat c=64", target, lambda: wrk(target.url(), 64, target.seconds(s), headers=target.headers))


def ttfb_c1(target: Target, s: Settings) -> Row:
    url = target.url(f"chunks={s.stream_chunks}")
    return measured_row(
        "stream TTFB c=1",
        target,
        lambda: streams(url, 1, seconds=target.seconds(s), body=stream_body(), headers=target.headers),
    )


def burst_c32(target: Target, s: Settings) -> Row:
    url = target.url(f"chunks={s.stream_chunks}")
    return measured_row(
        "stream burst c=32",
        target,
        lambda: wrk(url, 32, target.seconds(s), body=stream_body(), headers=target.headers),
    )


def paced_c32(target: Target, s: Settings) -> Row:
    url = target.url(f"chunks={s.paced_chunks}&pace_ms={s.paced_pace_ms}")
    row = measured_row(
        f"stream paced c=32 ({s.paced_chunks}×{s.paced_pace_ms} ms)",
        target,
        lambda: streams(
            url,
            32,
            seconds=target.seconds(s),
            body=stream_body(target.paced_model),
            headers=target.headers,
            pace_ms=s.paced_pace_ms,
            chunks=s.paced_chunks,
        ),
    )
    pace = row.detail.get("pace")
    if pace:
        dev = pace["deviation_ms"]
        row.notes = (
            f"gap vs pace: p99 {dev['p99']:.2f} ms, max {dev['max']:.2f} ms; "
            f"coalesced {pace['coalesced']}/{pace['gaps_checked']}"
            + (f"; {pace['short_streams']} short" if pace["short_streams"] else "")
            + (f"; {row.notes}" if row.notes else "")
        )
    return row


def slow_streams(target: Target, s: Settings) -> Row:
    title = f"{s.slow_streams:,} slow streams ({s.slow_chunks}×{s.slow_pace_ms} ms)"
    if not target.slow_streams:
        return Row(title, target.name, notes="not run: too slow for this many streams")
    url = target.url(f"chunks={s.slow_chunks}&pace_ms={s.slow_pace_ms}")
    row = measured_row(
        title,
        target,
        lambda: streams(
            url,
            s.slow_streams,
            requests=s.slow_streams,
            body=stream_body(),
            headers=target.headers,
            pace_ms=s.slow_pace_ms,
            chunks=s.slow_chunks,
            ramp_s=1,
        ),
        sample_peak=True,
    )
    completed = row.detail["requests"]
    row.notes = f"{completed}/{s.slow_streams} complete; RSS is the peak during the run" + (
        f"; {row.notes}" if row.notes else ""
    )
    return row


def memory(target: Target, s: Settings) -> Row:
    """Idle RSS (read just after start) in ``rss_mib``; the peak (VmHWM) over the whole suite in the notes."""
    if not target.measured:
        return Row("idle RSS", target.name, notes="the instrument: not measured")
    peak = memory_mib(target.server.pid, "VmHWM")
    return Row("idle RSS", target.name, rss_mib=target.idle_mib, notes=f"peak (VmHWM) over the suite: {peak:.1f} MiB")


SUITE: dict[str, Callable[[Target, Settings], Row]] = {
    "chat-c1": chat_c1,
    "chat-c64": chat_c64,
    "ttfb-c1": ttfb_c1,
    "burst-c32": burst_c32,
    "paced-c32": paced_c32,
    "slow": slow_streams,
    "memory": memory,
}


def warm_up(target: Target, s: Settings) -> None:
    """A short c=64 run, discarded: connection pools, caches and allocators settle."""
    wrk(target.url(), 64, s.warmup_s, headers=target.headers)
    settle(target.server.pid)


def fallback(fleet: Fleet, s: Settings) -> list[Row]:
    """airgap-proxy with no upstream answers from the deterministic fallback; c=64 on one core."""
    from benchmarks.bench_fallback import CASES, measure

    proxy = fleet.airgap_proxy(None)
    try:
        target = Target("airgap-proxy, no upstream", proxy)
        warm_up(target, s)
        row = measured_row("fallback chat c=64", target, lambda: wrk(target.url(), 64, s.seconds))
        in_process = measure(dict(CASES)["chat"], 1.0)
        row.notes = f"synthesizer alone, in-process: {in_process:,.0f}/s" + (f"; {row.notes}" if row.notes else "")
        return [row]
    finally:
        fleet.stop(proxy)


# Each surface's smallest request: (row title, path, body). The instrument answers any POST alike,
# so the rows compare what the proxy does per surface (parse, route, relay), not the upstream.
SURFACE_CASES = (
    ("chat completions", CHAT_PATH, CHAT_BODY),
    (
        "anthropic messages",
        "/v1/messages",
        '{"model":"bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}',
    ),
    ("responses", "/v1/responses", '{"model":"bench","input":"Say hello."}'),
    (
        "ollama /api/chat",
        "/api/chat",
        '{"model":"bench","stream":false,"messages":[{"role":"user","content":"Say hello."}]}',
    ),
    ("chat completions stream (20 chunks)", CHAT_PATH + "?chunks=20", stream_body()),
    ("ollama /api/chat stream (20 chunks)", "/api/chat?chunks=20", stream_body()),
)


def surfaces(fleet: Fleet, s: Settings) -> list[Row]:
    """Each API surface at c=64, through an upstream that speaks all four, then from the fallback."""
    rows: list[Row] = []
    upstream = fleet.instrument()
    try:
        proxy = fleet.airgap_proxy(upstream, provider_type="local-ollama")
        try:
            rows += _surface_rows(Target("airgap-proxy", proxy), s, "pass-through")
        finally:
            fleet.stop(proxy)
    finally:
        fleet.stop(upstream)
    proxy = fleet.airgap_proxy(None)
    try:
        rows += _surface_rows(Target("airgap-proxy, no upstream", proxy), s, "fallback")
    finally:
        fleet.stop(proxy)
    return rows


def _surface_rows(target: Target, s: Settings, kind: str) -> list[Row]:
    warm_up(target, s)
    rows = []
    for title, path, body in SURFACE_CASES:
        url = target.server.url + path
        try:
            rows.append(measured_row(f"{kind} {title} c=64", target, functools.partial(wrk, url, 64, s.seconds, body)))
        except Exception as exc:
            rows.append(Row(f"{kind} {title} c=64", target.name, error=str(exc)))
    return rows


CLASSIFIER_NAMES = {
    "vllm.internal": "10.0.0.5",
    "gpu-box.lan": "192.168.1.20",
    "v6.internal": "fd00::5",
    "example.com": "93.184.215.14",
    "metadata.example": "169.254.169.254",
}
CLASSIFIER_URLS = (
    "http://127.0.0.1:8000/v1",
    "http://10.1.2.3:11434/v1",
    "http://[::1]:8080/v1",
    "http://0x7f000001/v1",
    "http://localhost:11434/v1",
    "http://ollama.llm.svc.cluster.local:11434/v1",
    "http://vllm.internal:8000/v1",
    "http://gpu-box.lan/v1",
    "http://v6.internal/v1",
    "https://api.openai.com/v1",
    "https://my-resource.openai.azure.com/openai",
    "https://example.com/v1",
    "http://169.254.169.254/latest/meta-data",
    "http://metadata.example/",
    "http://user:pw@10.0.0.1/v1",
    "ftp://10.0.0.1/v1",
)


def classifier(s: Settings) -> Row:
    """``policy.classify`` (parse + classify) in a tight loop over a mix of URLs; names from a static resolver."""
    from airgap_proxy import policy
    from airgap_proxy.config import Config
    from airgap_proxy.policy.targets import IPAddress

    def resolve(host: str) -> Sequence[IPAddress]:
        if host not in CLASSIFIER_NAMES:
            raise policy.ResolutionError(host)
        return [ipaddress.ip_address(CLASSIFIER_NAMES[host])]

    rules = Config().rules
    verdicts: dict[str, int] = {}
    for url in CLASSIFIER_URLS:
        verdict = policy.classify(url, rules, resolve).verdict.value
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    calls, started = 0, time.perf_counter()
    deadline = started + min(s.seconds, 3)
    while time.perf_counter() < deadline:
        for url in CLASSIFIER_URLS:
            policy.classify(url, rules, resolve)
        calls += len(CLASSIFIER_URLS)
    rate = calls / (time.perf_counter() - started)
    mix = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
    return Row(
        "policy classifier",
        "in-process",
        rate=rate,
        notes=f"{len(CLASSIFIER_URLS)} URLs ({mix}); {1e6 / rate:.1f} µs each",
    )


def workers_supported() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "airgap_proxy", "serve", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    return "--workers" in done.stdout


def workers(fleet: Fleet, s: Settings) -> list[Row]:
    """chat c=64 through ``serve --workers 1`` and ``--workers 2``; nothing pinned (2 cores for everyone)."""
    title = "workers scaling chat c=64 (unpinned)"
    if not workers_supported():
        return [Row(title, "airgap-proxy", notes="skipped: `airgap-proxy serve --help` lists no --workers")]
    upstream = fleet.instrument(cpus=None)
    rows = []
    try:
        for count in (1, 2):
            name = f"airgap-proxy --workers {count}"
            try:
                proxy = fleet.airgap_proxy(upstream, cpus=None, workers=count)
            except Exception as exc:
                rows.append(Row(title, name, error=str(exc)))
                continue
            try:
                target = Target(name, proxy)
                warm_up(target, s)
                rows.append(measured_row(title, target, functools.partial(wrk, target.url(), 64, s.seconds, cpus=None)))
            except Exception as exc:
                rows.append(Row(title, name, error=str(exc)))
            finally:
                fleet.stop(proxy)
    finally:
        fleet.stop(upstream)
    if len(rows) == 2 and rows[0].rate and rows[1].rate:
        rows[1].notes = f"{rows[1].rate / rows[0].rate:.2f}× --workers 1" + (
            f"; {rows[1].notes}" if rows[1].notes else ""
        )
    return rows
