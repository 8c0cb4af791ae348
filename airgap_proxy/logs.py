"""Structured logging with structlog: JSON lines off a terminal, console on one.

The audit event is written once per request, so the chain is kept cheap:
level filtering before any processor runs, a timestamp whose date and time
text is formatted once per second, and JSON rendered by orjson straight to
bytes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, ClassVar, TextIO

import orjson
import structlog

from airgap_proxy.config import LogFormat, LoggingConfig

AUDIT_EVENT = "request"
# Writes of at most this size to a pipe are atomic (POSIX guarantees 512; Linux gives 4096).
PIPE_BUF = 4096


class _UtcTimestamp:
    """``timestamp`` in ISO 8601 UTC with microseconds, as structlog's ``TimeStamper`` writes it."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


def _orjson_dumps(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS)


class _Fast:
    """The audit event's direct path: the same JSON line structlog would write, built once.

    Taken only while the configuration :func:`configure` installed is the one
    in force (a test's ``capture_logs`` swaps it and gets every event).
    """

    processors: list[Any] | None = None
    timestamp = _UtcTimestamp()
    file: Any = None
    level = logging.INFO
    # Audit lines of one turn of the event loop, written together at its end.
    pending: ClassVar[list[bytes]] = []
    pending_size = 0
    flush_scheduled = False


def flush() -> None:
    """Write the audit lines waiting for the end of this turn of the event loop.

    Whole lines in one ``write`` of at most :data:`PIPE_BUF` bytes, so that the
    lines of several worker processes sharing one pipe never interleave.
    """
    _Fast.flush_scheduled = False
    if _Fast.pending:
        data = b"".join(_Fast.pending)
        _Fast.pending.clear()
        _Fast.pending_size = 0
        _Fast.file.write(data)
        _Fast.file.flush()


def emit(logger: Any, level: int, event: str, fields: dict[str, Any]) -> None:
    """Log ``event`` with ``fields`` at ``level`` (``logging.INFO``/``WARNING``) through ``logger``."""
    if _Fast.processors is not None and structlog.get_config()["processors"] is _Fast.processors:
        if level < _Fast.level:
            return
        fields["event"] = event
        fields["level"] = "warning" if level == logging.WARNING else "info"
        _Fast.timestamp(None, "", fields)
        line = orjson.dumps(fields, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
        if _Fast.pending_size + len(line) > PIPE_BUF:
            flush()
        _Fast.pending.append(line)
        _Fast.pending_size += len(line)
        if not _Fast.flush_scheduled:
            try:
                asyncio.get_running_loop().call_soon(flush)
                _Fast.flush_scheduled = True
            except RuntimeError:
                flush()
    elif level == logging.WARNING:
        logger.warning(event, **fields)
    else:
        logger.info(event, **fields)


def configure(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Configure structlog once, at start-up."""
    stream = stream or sys.stderr
    use_json = config.format is LogFormat.JSON or (config.format is LogFormat.AUTO and not stream.isatty())
    binary = getattr(stream, "buffer", None)
    renderer: Any
    factory: Any
    if use_json and binary is not None:
        stream.flush()
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        factory = structlog.BytesLoggerFactory(file=binary)
    else:
        renderer = (
            structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
        )
        factory = structlog.PrintLoggerFactory(file=stream)
    processors = [structlog.processors.add_log_level, _UtcTimestamp(), structlog.processors.format_exc_info, renderer]
    level = logging.getLevelName(config.level.upper())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    if _Fast.file is not None:
        flush()
    fast = use_json and binary is not None
    _Fast.processors = structlog.get_config()["processors"] if fast else None
    _Fast.file = binary
    _Fast.level = level


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
