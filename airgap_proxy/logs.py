"""Structured logging with structlog: JSON lines off a terminal, console on one.

The audit event is written once per request, so the chain is kept cheap:
level filtering before any processor runs, a timestamp whose date and time
text is formatted once per second, and JSON rendered by orjson straight to
bytes.

Everything else the process would print goes through the same chain, so
that every line is one JSON object and no request content reaches it:

- The standard library's loggers (aiohttp's ``aiohttp.server``,
  ``aiohttp.access``..., ``asyncio``) end in :class:`_StdlibBridge`, which
  keeps a record's format string, never its arguments. A request aiohttp
  cannot parse becomes one ``bad_request`` event: the exception's class and
  the fixed text of its message, never the offending bytes.
- An exception is logged as its type and where it was raised
  (:func:`describe_exception`), never its message or a frame's locals: both
  can hold what a client sent.
- Python warnings, uncaught exceptions (main thread, threads, unraisable)
  and the event loop's exception handler log events too.
- Events a client can cause at will (:data:`RATE_LIMITED`) are capped at
  :data:`RATE_LIMIT_PER_S` lines a second each; what is dropped is counted
  in a ``log_suppressed`` event.
- :func:`_redact` masks bearer tokens, ``sk-`` keys, ``key=value`` secrets
  and the configured secrets in every string of those events (not in the
  audit event, which carries no free text).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, MutableMapping
from types import TracebackType
from typing import Any, ClassVar, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from airgap_proxy.config import Config, LogFormat, LoggingConfig

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


# --------------------------------------------------------------------------- #
# No request content in a log line
# --------------------------------------------------------------------------- #

REDACTED = "***"
# Lines a second, per process, for each event in RATE_LIMITED; the rest are counted.
RATE_LIMIT_PER_S = 10
RATE_LIMITED = frozenset(
    {
        "bad_request",
        "request_error",
        "internal_error",
        "connection_refused",
        "library_log",
        "asyncio_error",
        "python_warning",
        "uncaught_exception",
    }
)
# Innermost frames an exception's ``exc_stack`` lists.
STACK_FRAMES = 8
MESSAGE_CHARS = 200
_SECRET_NAME = r"[A-Za-z_\-]*(?i:key|token|secret|password)"  # noqa: S105 - a pattern of names
_SECRET_PATTERNS = (
    # An authorization scheme and its credentials.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+"), rf"\1\2{REDACTED}"),
    # An OpenAI-style key.
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}"), f"sk-{REDACTED}"),
    # name=value (a query string, a form), "name": "value" (JSON). Not "name: text": config errors read so.
    (re.compile(rf"\b({_SECRET_NAME})(=[\"']?)[^\s\"'&,;]+"), rf"\1\2{REDACTED}"),
    (re.compile(rf"\b({_SECRET_NAME})([\"']\s*:\s*[\"'])[^\"']+"), rf"\1\2{REDACTED}"),
)
# A parse error's fixed text: what comes before a colon, a quote or the raw bytes.
_QUOTED = re.compile(r"""b?(['"]).*?\1""")
_FIXED_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9 ,.()_-]{0,79}")


class _Secrets:
    """The configured secrets (admin token, keys), masked wherever they appear in an event."""

    values: ClassVar[tuple[str, ...]] = ()


def secrets_of(config: Config) -> tuple[str, ...]:
    """The secret values ``config`` holds, longest first."""
    found = {config.admin.token, config.secret_key, *config.previous_secret_keys}
    found.update(u.api_key for u in config.upstreams)
    return tuple(sorted((v for v in found if v and len(v) >= 8), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with bearer tokens, ``sk-`` keys, ``key=value`` secrets and the configured secrets masked."""
    for secret in _Secrets.values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def _redact(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if key != "event":
            event_dict[key] = _redact_value(value)
    return event_dict


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "airgap_proxy/"):
        at = filename.rfind(marker)
        if at >= 0:
            return filename[at + len(marker) :] if marker == "site-packages/" else filename[at:]
    return filename.rsplit("/", 1)[-1]


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """``exc`` as its qualified type and the innermost frames (``file:line in function``).

    Not its message, arguments or any frame's locals: an exception raised
    while handling a request can quote it (a parse error the raw header, a
    ``ValueError`` the value, a ``KeyError`` the key); an ``OSError`` keeps
    its errno and the system's text. The request id in the same line leads
    to the request; the frames to the code.
    """
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    frames = [
        f"{_short_path(frame.f_code.co_filename)}:{lineno} in {frame.f_code.co_name}"
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
    ][-STACK_FRAMES:]
    described: dict[str, Any] = {"exc_type": name, "exc_where": frames[-1] if frames else None}
    if isinstance(exc, OSError) and exc.errno is not None:  # the system's fixed text, not the file name
        described["exc_errno"] = errno.errorcode.get(exc.errno, exc.errno)
        described["exc_strerror"] = exc.strerror
    if len(frames) > 1:
        described["exc_stack"] = frames
    return described


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) > 1 and isinstance(exc_info[1], BaseException) else None
    return sys.exc_info()[1] if exc_info else None


def _describe_exc_info(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """In place of ``format_exc_info``: ``exc_info`` becomes :func:`describe_exception`'s fields."""
    exc = _exception(event_dict.pop("exc_info", None))
    if exc is not None:
        event_dict.update(describe_exception(exc))
    return event_dict


class _Window:
    __slots__ = ("logged", "second", "suppressed")

    def __init__(self) -> None:
        self.second = -1
        self.logged = 0
        self.suppressed = 0

    def roll(self, second: int) -> int:
        """Start ``second``'s window if it is a new one; the count suppressed in the one before."""
        if second == self.second:
            return 0
        dropped = self.suppressed
        self.second, self.logged, self.suppressed = second, 0, 0
        return dropped


class _RateLimit:
    """At most ``per_s`` lines a second of each event in :data:`RATE_LIMITED`; counts the rest.

    The count of a window is logged (``log_suppressed``) with the first line of
    a later window or, on an event loop, once the window is over.
    """

    def __init__(self, per_s: int) -> None:
        self.per_s = per_s
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event = event_dict.get("event")
        if event not in RATE_LIMITED:
            return event_dict
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(event, _Window())
            dropped = window.roll(int(now))
            allowed = window.logged < self.per_s
            if allowed:
                window.logged += 1
            else:
                window.suppressed += 1
            first_dropped = not allowed and window.suppressed == 1
        if dropped:
            _report_suppressed(event, dropped)
        if first_dropped:
            self._report_later(event, int(now) + 1 - now)
        if not allowed:
            raise structlog.DropEvent
        return event_dict

    def _report_later(self, event: str, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the next line or report() tells
            return
        loop.call_later(delay + 0.01, self.report, event)

    def report(self, event: str | None = None) -> None:
        """Log the counts of windows that are over (all of them if ``event`` is None, as at exit)."""
        now = int(time.monotonic())
        for name in [event] if event else list(self._windows):
            with self._lock:
                window = self._windows.get(name or "")
                if window is None or not window.suppressed:
                    continue
                if event and window.second == now:  # early timer: the window is still open
                    self._report_later(name or "", 0.05)
                    continue
                dropped, window.suppressed = window.suppressed, 0
            _report_suppressed(name or "", dropped)


def _report_suppressed(event: str, count: int) -> None:
    _write(logging.WARNING, "log_suppressed", suppressed_event=event, count=count, limit_per_s=RATE_LIMIT_PER_S)


_RATE_LIMIT = _RateLimit(RATE_LIMIT_PER_S)


def report_suppressed() -> None:
    """Log every pending ``log_suppressed`` count now (at shutdown)."""
    _RATE_LIMIT.report()


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0][:MESSAGE_CHARS]


def _fixed_text(message: str) -> str | None:
    """The fixed part of an aiohttp parse error's message ("Invalid header value char"), if any."""
    head = _QUOTED.sub("_", message.strip().split("\n", 1)[0])
    head = re.split(r"[:'\"\\]", head, maxsplit=1)[0].strip()
    return head if _FIXED_TEXT.fullmatch(head) else None


def _client(record: logging.LogRecord) -> str | None:
    """The peer address of aiohttp's "Error handling request from %s", if it is one."""
    args = record.args if isinstance(record.args, tuple) else ()
    try:
        return str(ipaddress.ip_address(args[0])) if args and isinstance(args[0], str) else None
    except ValueError:
        return None


def _translate(record: logging.LogRecord) -> tuple[int, str, dict[str, Any]]:
    """A standard library record as (level, event, fields): its format string, never its arguments."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        fields: dict[str, Any] = {"reason": type(exc).__name__, "status": exc.code, "client": _client(record)}
        detail = _fixed_text(exc.message)
        if detail:
            fields["detail"] = detail
        return min(record.levelno, logging.INFO), "bad_request", fields
    # aiohttp's access log and asyncio's default handler format their data into the message itself.
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    fields = {"logger": record.name, "message": "access" if record.name == "aiohttp.access" else _first_line(template)}
    if exc is not None:
        fields.update(describe_exception(exc))
    event = "request_error" if record.name == "aiohttp.server" else "library_log"
    return record.levelno, event, fields


def _write(level: int, event: str, *, logger_name: str = "airgap_proxy.logs", **fields: Any) -> None:
    """Log ``event`` from a hook or the bridge, where an error must not fall back to printing a traceback."""
    # Not the fallbacks (a traceback on stderr): they could print request content.
    with contextlib.suppress(Exception):
        structlog.get_logger(logger_name).log(level, event, **fields)


class _StdlibBridge(logging.Handler):
    """The root logger's handler: every standard library record becomes a structlog event."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level, event, fields = _translate(record)
        except Exception:  # noqa: BLE001 - logging.Handler's fallback prints the record on stderr
            return
        _write(level, event, logger_name=record.name, **fields)


def _show_warning(  # noqa: PLR0917 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    _write(
        logging.WARNING,
        "python_warning",
        category=category.__name__,
        where=f"{_short_path(filename)}:{lineno}",
        message=_first_line(str(message)),
    )


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _write(logging.ERROR, "uncaught_exception", where="main thread", **describe_exception(exc.with_traceback(tb)))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        thread = args.thread.name if args.thread else None
        _write(logging.ERROR, "uncaught_exception", where=f"thread {thread}", **describe_exception(args.exc_value))


def _unraisablehook(unraisable: Any) -> None:
    if unraisable.exc_value is not None:
        _write(logging.ERROR, "uncaught_exception", where="unraisable", **describe_exception(unraisable.exc_value))


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: asyncio's fixed message and the exception's type and place.

    asyncio's default handler logs the ``repr`` of the task, handle and
    exception, which can quote a request.
    """
    exc = context.get("exception")
    fields: dict[str, Any] = {"message": _first_line(str(context.get("message", "")))}
    if isinstance(exc, BaseException):
        fields.update(describe_exception(exc))
    _write(logging.ERROR, "asyncio_error", **fields)


def _route_stdlib(level: int) -> None:
    """Send the standard library's records, warnings and uncaught exceptions through structlog."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(_StdlibBridge())
    root.setLevel(level)
    logging.raiseExceptions = False
    warnings.showwarning = _show_warning
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook


def configure(config: LoggingConfig, stream: TextIO | None = None, *, secrets: Iterable[str] = ()) -> None:
    """Configure structlog once, at start-up, and route everything else the process logs through it.

    ``secrets`` (:func:`secrets_of`) are masked wherever they appear.
    """
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
    processors = [
        _RATE_LIMIT,
        structlog.processors.add_log_level,
        _UtcTimestamp(),
        _describe_exc_info,
        _redact,
        renderer,
    ]
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
    _Secrets.values = tuple(secrets)
    _route_stdlib(level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
