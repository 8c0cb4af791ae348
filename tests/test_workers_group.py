"""``serve --workers 2`` acting as one: one ``/metrics`` for the group, a reload of every worker.

Real processes on 127.0.0.1, as in ``tests/test_workers.py`` (whose helpers
tell which worker holds a connection, from ``/proc``). Each scrape is read
while its connection is still open, so the test knows which worker answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests import test_workers
from tests.fakes import FakeUpstream
from tests.test_admin import ADMIN, ADMIN_TOKEN
from tests.test_openapi import resolve, schema_validator, spec
from tests.test_operations import ServedProxy, write_config
from tests.test_workers import (
    FRESH_CONNECTIONS,
    Answer,
    assert_every_worker_answers,
    children,
    connections_by_worker,
    fresh_connections,
    request,
    serve_workers,
)

proxies = test_workers.proxies  # the fixture: supervisors stopped at the end
CHAT_ROUTE = "/v1/chat/completions"
METRICS_DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
SCRAPES = FRESH_CONNECTIONS  # enough that both workers answer some (all on one: 2**-23)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in found.items() if sample == name and wanted <= have)


def label_values(found: Samples, name: str, label: str) -> set[str]:
    return {dict(have)[label] for (sample, have), _ in found.items() if sample == name and label in dict(have)}


def combined(row: str) -> str:
    """The ``--workers N`` column of a row of docs/metrics.md."""
    return row.strip().strip("|").split("|")[3].strip()


def documented_modes() -> dict[str, str]:
    """Each documented metric's ``--workers N`` column: ``sum`` or ``per worker``."""
    modes = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            for name in re.findall(r"`(\w+)`", line.split(" | ")[0]):
                modes[name] = combined(line)
    return modes


async def scrape_everywhere(proxy: ServedProxy, pids: list[int]) -> list[Samples]:
    """:data:`SCRAPES` scrapes on fresh connections, answered by every worker (each must tell the same)."""
    async with fresh_connections(proxy.port, "GET", "/metrics") as answers:
        assert [a.status for a in answers] == [200] * SCRAPES
        held = connections_by_worker(proxy.port, pids)
    assert all(held.values()), f"a worker answered no scrape: {held}"
    check_documented_modes(answers[0].body.decode())
    return [samples(a.body.decode()) for a in answers]


def check_documented_modes(text: str) -> None:
    """A metric with a ``worker`` label is documented ``per worker``; any other, ``sum``."""
    modes = documented_modes()
    for family in text_string_to_metric_families(text):
        shown = f"{family.name}_total" if family.type == "counter" else family.name
        mode = modes.get(shown) or modes.get(family.name) or ("per worker" if shown.startswith("process_") else None)
        assert mode is not None, f"{shown} is not documented in docs/metrics.md"
        labelled = {"worker" in sample.labels for sample in family.samples}
        assert labelled <= {mode == "per worker"}, f"{shown}: documented as {mode!r}"


async def requests_logged(proxy: ServedProxy, count: int) -> None:
    """Wait until ``count`` request lines are logged (each worker counts a request as it logs it)."""
    await proxy.event("request", count, timeout=20)


async def send_chats(proxy: ServedProxy, pids: list[int]) -> None:
    """:data:`FRESH_CONNECTIONS` chat requests, answered by every worker."""
    await assert_every_worker_answers(proxy, pids)


def run_dir_of(pid: int) -> Path:
    """The group's run directory, from the multiprocess files a worker holds open."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if "/airgap-proxy-workers-" in target and target.endswith(".db"):
            return Path(target).parent.parent
    raise AssertionError(f"worker {pid} holds no multiprocess file")


# --------------------------------------------------------------------------- #
# /metrics
# --------------------------------------------------------------------------- #


async def test_requests_spread_over_two_workers_appear_in_every_scrape(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    await send_chats(proxy, pids)
    await requests_logged(proxy, FRESH_CONNECTIONS)
    for found in await scrape_everywhere(proxy, pids):
        assert total(found, "airgap_proxy_requests_total", route=CHAT_ROUTE) == FRESH_CONNECTIONS
        assert total(found, "airgap_proxy_fallback_responses_total", kind="chat") == FRESH_CONNECTIONS
        # The histogram too: its count, its +Inf bucket, and cumulative buckets.
        duration = "airgap_proxy_request_duration_seconds"
        assert total(found, f"{duration}_count", route=CHAT_ROUTE) == FRESH_CONNECTIONS
        assert total(found, f"{duration}_bucket", route=CHAT_ROUTE, le="+Inf") == FRESH_CONNECTIONS
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (name, labels), value in found.items()
            if name == f"{duration}_bucket" and ("route", CHAT_ROUTE) in labels
        )
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)
        assert total(found, f"{duration}_sum", route=CHAT_ROUTE) > 0
        # Gauges: summed ones have no worker label; per-worker ones list every live worker.
        assert ("airgap_proxy_in_flight_requests", frozenset()) in found
        assert ("airgap_proxy_active_streams", frozenset()) in found
        assert label_values(found, "process_resident_memory_bytes", "worker") == {str(p) for p in pids}


async def test_gauges_sum_over_workers_and_upstream_health_is_per_worker(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    config = write_config(
        tmp_path / "proxy.yaml",
        {"upstreams": [{"name": "local", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}]},
    )
    proxy = await serve_workers("--workers", "2", "--config", str(config), cwd=tmp_path)
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    await proxy.event("upstream_health_changed", count=2)  # each worker probed it
    await asyncio.sleep(1.5)  # one gauge write (SYNC_S) after the probes
    for found in await scrape_everywhere(proxy, pids):
        health = {dict(k[1])["worker"]: v for k, v in found.items() if k[0] == "airgap_proxy_upstream_health"}
        assert health == {str(p): 1.0 for p in pids}
        assert found[("airgap_proxy_upstream_in_flight", frozenset({("upstream", "local")}))] == 0.0


async def test_a_killed_worker_s_requests_stay_counted(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    await send_chats(proxy, pids)
    await requests_logged(proxy, FRESH_CONNECTIONS)
    os.kill(pids[0], signal.SIGKILL)
    replacement = (await proxy.event("worker_started"))["pid"]
    await proxy.event("worker_ready")
    now = children(proxy.process.pid)
    assert now == sorted([pids[1], replacement])
    for found in await scrape_everywhere(proxy, now):
        assert total(found, "airgap_proxy_requests_total", route=CHAT_ROUTE) == FRESH_CONNECTIONS
        # The dead worker's live gauges are gone; the replacement's are there.
        assert label_values(found, "process_resident_memory_bytes", "worker") == {str(p) for p in now}
    await send_chats(proxy, now)
    await requests_logged(proxy, 2 * FRESH_CONNECTIONS)
    for found in await scrape_everywhere(proxy, now):
        assert total(found, "airgap_proxy_requests_total", route=CHAT_ROUTE) == 2 * FRESH_CONNECTIONS


async def test_the_run_directory_is_removed_when_the_supervisor_stops(proxies: list[ServedProxy]) -> None:
    proxy = await serve_workers("--workers", "2")
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    run_dir = run_dir_of(pids[0])
    assert run_dir_of(pids[1]) == run_dir
    assert sorted(p.name for p in (run_dir / "workers").iterdir()) == sorted(f"{p}.json" for p in pids)
    assert oct(run_dir.stat().st_mode & 0o777) == "0o700"
    proxy.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.process.wait(), 20) == 0
    assert not run_dir.exists()


async def test_one_worker_is_a_single_process_with_its_own_registry(proxies: list[ServedProxy]) -> None:
    """``--workers 1``: no supervisor, no group: gauges have no worker label, no run directory."""
    proxy = await serve_workers("--workers", "1", ready="listening")
    proxies.append(proxy)
    streams = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        answer = await request(streams, "GET", "/metrics")
    finally:
        streams[1].close()
        await streams[1].wait_closed()
    found = samples(answer.body.decode())
    assert ("process_resident_memory_bytes", frozenset()) in found
    assert not label_values(found, "process_resident_memory_bytes", "worker")
    assert not any(
        "airgap-proxy-workers-" in os.readlink(f"/proc/{proxy.process.pid}/fd/{fd}")
        for fd in os.listdir(f"/proc/{proxy.process.pid}/fd")
    )


# --------------------------------------------------------------------------- #
# POST /api/v1/admin/reload
# --------------------------------------------------------------------------- #


def configured(status: dict[str, Any]) -> dict[str, Any]:
    """The status fields that come from the configuration, not from health checks."""
    top = {k: status[k] for k in ("provider_type", "model", "airgap_compliant", "airgapped", "fallback_mode")}
    fields = ("name", "provider_type", "base_url", "priority", "verdict", "reason", "permitted")
    return top | {"upstreams": [{k: u[k] for k in fields} for u in status["upstreams"]]}


async def admin_reload(proxy: ServedProxy) -> Answer:
    streams = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        return await request(streams, "POST", "/api/v1/admin/reload", headers=ADMIN)
    finally:
        streams[1].close()
        await streams[1].wait_closed()


def reload_schema() -> dict[str, Any]:
    operation = spec()["paths"]["/api/v1/admin/reload"]["post"]
    return resolve(operation["responses"]["200"])["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


async def test_an_admin_reload_reloads_every_worker_and_lists_their_generations(
    aiohttp_server: Any, tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    fake = FakeUpstream()
    upstream = await aiohttp_server(fake.app())
    config = write_config(tmp_path / "proxy.yaml", {"health": {"interval_s": 60}})
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    proxy = await serve_workers("--workers", "2", "--config", str(config), env=env, cwd=tmp_path)
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    write_config(
        config,
        {
            "health": {"interval_s": 60},
            "upstreams": [{"name": "local", "base_url": f"http://127.0.0.1:{upstream.port}/v1"}],
        },
    )
    validator = schema_validator(reload_schema())
    for generation in (2, 3):
        answer = await admin_reload(proxy)
        assert answer.status == 200, answer.body
        body = answer.json()
        validator.validate(body)
        assert body["generation"] == generation
        assert body["workers"] == [{"pid": p, "generation": generation, "reloaded": True} for p in pids]
    assert (await proxy.event("workers_reloading"))["requested_by"] in pids

    def local(answer: Answer) -> None:  # the new configuration, on every worker
        assert answer.headers["x-airgap-upstream"] == "local"

    await assert_every_worker_answers(proxy, pids, local)
    for found in await scrape_everywhere(proxy, pids):
        assert total(found, "airgap_proxy_config_reloads_total", result="ok") == 4  # 2 workers, 2 reloads
    # The status view's configuration fields are the same on every worker (health is each worker's own).
    async with fresh_connections(proxy.port, "GET", "/api/v1/llm/status") as answers:
        held = connections_by_worker(proxy.port, pids)
    assert all(held.values()), held
    views = {json.dumps(configured(a.json()), sort_keys=True) for a in answers}
    assert len(views) == 1, views
    assert [u["name"] for u in json.loads(views.pop())["upstreams"]] == ["local"]


async def test_a_replacement_worker_reloads_and_is_listed_after_sighup(
    tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    config = write_config(tmp_path / "proxy.yaml", {"health": {"interval_s": 60}})
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    proxy = await serve_workers("--workers", "2", "--config", str(config), env=env, cwd=tmp_path)
    proxies.append(proxy)
    pids = children(proxy.process.pid)
    proxy.process.send_signal(signal.SIGHUP)  # the supervisor: every worker to generation 2
    await proxy.event("config_reloaded", count=2)
    os.kill(pids[0], signal.SIGKILL)
    replacement = (await proxy.event("worker_started"))["pid"]
    await proxy.event("config_reloaded", count=3)  # it catches up: 1 -> 2
    await proxy.event("worker_ready")
    body = (await admin_reload(proxy)).json()
    assert body["workers"] == sorted(
        [{"pid": pids[1], "generation": 3, "reloaded": True}, {"pid": replacement, "generation": 3, "reloaded": True}],
        key=lambda w: w["pid"],
    )


async def test_a_bad_file_is_refused_by_the_answering_worker_and_reaches_no_other(
    tmp_path: Path, proxies: list[ServedProxy]
) -> None:
    config = write_config(tmp_path / "proxy.yaml", {"health": {"interval_s": 60}})
    env = {"AIRGAP_PROXY_ADMIN_TOKEN": ADMIN_TOKEN}
    proxy = await serve_workers("--workers", "2", "--config", str(config), env=env, cwd=tmp_path)
    proxies.append(proxy)
    config.write_text("upstreams: [{name: broken}]\n", encoding="utf-8")
    answer = await admin_reload(proxy)
    assert answer.status == 400 and answer.json()["error"]["code"] == "invalid_config"
    await asyncio.sleep(0.5)
    assert len([e for e in proxy.events if e["event"] == "config_reload_failed"]) == 1
    assert not [e for e in proxy.events if e["event"] == "workers_reloading"]
