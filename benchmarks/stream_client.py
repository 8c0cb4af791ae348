"""A minimal streaming load client: raw asyncio streams on uvloop, HTTP/1.1 keep-alive.

Not a test. Each of ``--concurrency`` workers holds one connection and sends
POSTs one after another until ``--requests`` have been started or
``--seconds`` have passed. For every response it records the time from
writing the request to the first body byte (TTFB) and to the end; with
``--pace-ms`` it also timestamps each server-sent event and compares the
gaps between the first ``--chunks`` of them with the pace, which shows
whether a proxy passes chunks on as they come or coalesces them.

Prints one JSON object::

    python benchmarks/stream_client.py URL [--concurrency 1] [--seconds 5 | --requests N]
        [--body JSON] [--header 'Name: value'] [--pace-ms 5 --chunks 20] [--ramp-s 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import uvloop

DEFAULT_BODY = '{"model":"bench","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'


@dataclass
class Tally:
    """Everything the workers observed."""

    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    deviations: list[float] = field(default_factory=list)
    coalesced: int = 0
    short_streams: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    started: int = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    request: bytes
    requests: int | None
    deadline: float | None
    pace_s: float
    chunks: int


class Reply:
    """One response read off the connection, with arrival times."""

    def __init__(self) -> None:
        self.status = 0
        self.first: float | None = None
        self.events: list[float] = []
        self.keep_alive = True
        self._pending = b""

    def body(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self._pending += data
        complete = self._pending.count(b"\n\n")
        if complete:
            self.events.extend([now] * complete)
            self._pending = self._pending[self._pending.rfind(b"\n\n") + 2 :]


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one HTTP/1.1 response: Content-Length, chunked, or up to EOF."""
    reply = Reply()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    reply.status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    reply.keep_alive = headers.get("connection") != "close"
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readline()).strip():
                    pass  # trailers
                return reply
            reply.body((await reader.readexactly(size + 2))[:-2])
    if "content-length" in headers:
        reply.body(await reader.readexactly(int(headers["content-length"])))
        return reply
    reply.keep_alive = False
    while data := await reader.read(65536):
        reply.body(data)
    return reply


def check_pace(reply: Reply, plan: Plan, tally: Tally) -> None:
    if len(reply.events) < plan.chunks:
        tally.short_streams += 1
        return
    for before, after in zip(reply.events[: plan.chunks - 1], reply.events[1 : plan.chunks], strict=True):
        gap = after - before
        tally.deviations.append(abs(gap - plan.pace_s))
        if gap < plan.pace_s / 2:
            tally.coalesced += 1


def more(plan: Plan, tally: Tally) -> bool:
    if plan.requests is not None and tally.started >= plan.requests:
        return False
    return plan.deadline is None or time.perf_counter() < plan.deadline


async def worker(plan: Plan, tally: Tally, delay: float) -> None:
    await asyncio.sleep(delay)
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while more(plan, tally):
            tally.started += 1
            try:
                if connection is None:
                    connection = await asyncio.open_connection(plan.host, plan.port)
                reader, writer = connection
                sent = time.perf_counter()
                writer.write(plan.request)
                reply = await read_reply(reader)
                done = time.perf_counter()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                if connection is not None:
                    connection[1].close()
                connection = None
                await asyncio.sleep(0.05)
                continue
            if reply.status != 200 or reply.first is None:
                tally.error(f"status {reply.status}")
            else:
                tally.ttfb.append(reply.first - sent)
                tally.total.append(done - sent)
                if plan.pace_s:
                    check_pace(reply, plan, tally)
            if not reply.keep_alive:
                writer.close()
                connection = None
    finally:
        if connection is not None:
            connection[1].close()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds (nearest rank)."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    last = len(ordered) - 1
    quantiles = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    return {name: round(ordered[min(last, int(q * len(ordered)))] * 1000, 4) for name, q in quantiles}


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path + (f"?{url.query}" if url.query else "")
    body = args.body.encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    head += [*args.header, f"Content-Length: {len(body)}"]
    started = time.perf_counter()
    plan = Plan(
        host=host,
        port=port,
        request=("\r\n".join(head) + "\r\n\r\n").encode() + body,
        requests=args.requests,
        deadline=started + args.seconds if args.seconds else None,
        pace_s=args.pace_ms / 1000,
        chunks=args.chunks,
    )
    tally = Tally()
    async with asyncio.TaskGroup() as group:
        for i in range(args.concurrency):
            group.create_task(worker(plan, tally, args.ramp_s * i / args.concurrency))
    seconds = time.perf_counter() - started
    report: dict[str, object] = {
        "completed": len(tally.total),
        "errors": tally.errors,
        "seconds": round(seconds, 4),
        "ttfb_ms": percentiles(tally.ttfb),
        "total_ms": percentiles(tally.total),
    }
    if tally.error_samples:
        report["error_samples"] = tally.error_samples
    if plan.pace_s:
        report["pace"] = {
            "pace_ms": args.pace_ms,
            "gaps_checked": len(tally.deviations),
            "deviation_ms": percentiles(tally.deviations),
            "coalesced": tally.coalesced,
            "short_streams": tally.short_streams,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, help="stop starting requests after this long")
    parser.add_argument("--requests", type=int, help="start at most this many requests")
    parser.add_argument("--body", default=DEFAULT_BODY)
    parser.add_argument("--header", action="append", default=[], help="extra request header, 'Name: value'")
    parser.add_argument("--pace-ms", type=float, default=0, help="the upstream's pace: check chunk gaps against it")
    parser.add_argument("--chunks", type=int, default=20, help="paced events per stream to check")
    parser.add_argument("--ramp-s", type=float, default=0, help="spread the workers' starts over this long")
    args = parser.parse_args()
    if args.seconds is None and args.requests is None:
        parser.error("give --seconds or --requests")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    json.dump(uvloop.run(run(args)), sys.stdout)
    print()


if __name__ == "__main__":
    main()
