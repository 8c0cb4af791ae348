"""Benchmark results: one row per scenario and target, as a markdown table and as JSON.

Derived columns are computed here, from rows of the same scenario:

- added p50: the row's p50 minus the ``direct`` row's p50 (the latency the proxy adds);
- ×passthrough, ×litellm: the row's rate divided by that reference's rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DIRECT = "direct"
PASSTHROUGH = "passthrough"
LITELLM = "litellm"


@dataclass
class Row:
    """One measurement. Rates per second, latencies in ms, CPU in µs per request, memory in MiB."""

    scenario: str
    target: str
    rate: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    cpu_us: float | None = None
    rss_mib: float | None = None
    notes: str = ""
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _peer(rows: list[Row], row: Row, target: str) -> Row | None:
    return next((r for r in rows if r.scenario == row.scenario and r.target == target and not r.error), None)


def derived(rows: list[Row], row: Row) -> dict[str, float | None]:
    """Added p50 (vs direct) and rate ratios (vs passthrough, vs LiteLLM) for ``row``."""
    out: dict[str, float | None] = {"added_p50": None, "x_passthrough": None, "x_litellm": None}
    if row.error:
        return out
    direct = _peer(rows, row, DIRECT)
    if direct is not None and row.target != DIRECT and row.p50 is not None and direct.p50 is not None:
        out["added_p50"] = row.p50 - direct.p50
    for key, target in (("x_passthrough", PASSTHROUGH), ("x_litellm", LITELLM)):
        peer = _peer(rows, row, target)
        if peer is not None and row.target not in (DIRECT, target) and row.rate and peer.rate:
            out[key] = row.rate / peer.rate
    return out


def _cell(value: float | None, form: str) -> str:
    return "" if value is None else format(value, form)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


COLUMNS = (
    "scenario",
    "target",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "added p50 ms",
    "CPU µs/req",
    "RSS MiB",
    "×passthrough",
    "×litellm",
    "notes",
)


def markdown(rows: list[Row]) -> str:
    """The results as one GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        more = derived(rows, row)
        cells = [
            row.scenario,
            row.target,
            _cell(row.rate, ",.0f"),
            _cell(row.p50, ".3f"),
            _cell(row.p90, ".3f"),
            _cell(row.p99, ".3f"),
            _cell(more["added_p50"], "+.3f"),
            _cell(row.cpu_us, ",.0f"),
            _cell(row.rss_mib, ".1f"),
            _ratio(more["x_passthrough"]),
            _ratio(more["x_litellm"]),
            f"ERROR: {row.error}" if row.error else row.notes,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [{**asdict(row), **derived(rows, row)} for row in rows]
