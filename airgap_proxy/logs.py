"""Structured logging with structlog: JSON lines off a terminal, console on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from airgap_proxy.config import LogFormat, LoggingConfig

AUDIT_EVENT = "request"


def configure(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Configure structlog once, at start-up."""
    stream = stream or sys.stderr
    use_json = config.format is LogFormat.JSON or (config.format is LogFormat.AUTO and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(config.level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
