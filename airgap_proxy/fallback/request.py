"""Request fields shared by the fallback endpoints, validated (pure).

Each reader returns a typed value or raises :class:`InvalidRequest` naming the
parameter, as the OpenAI API does for the same mistakes.
"""

from __future__ import annotations

import re
from typing import Any

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback.limits import Limits, check_choices

MAX_N = 128  # OpenAI's own ceiling; fallback.max_choices may be lower
MAX_STOP_SEQUENCES = 4
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_n(data: dict[str, Any], caps: Limits) -> int:
    """``n``: 1 to 128, and at most ``fallback.max_choices``."""
    n = data.get("n")
    if n is None:
        return 1
    if not is_int(n) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"Invalid value for 'n': expected an integer from 1 to {MAX_N}, got {n!r}", param="n")
    check_choices(n, caps)
    return int(n)


def read_max_tokens(data: dict[str, Any], default: int | None = None) -> int | None:
    """``max_completion_tokens`` if given, else ``max_tokens``, else ``default``."""
    limit = default
    for param in ("max_tokens", "max_completion_tokens"):
        value = data.get(param)
        if value is None:
            continue
        if not is_int(value) or value < 0:
            raise InvalidRequest(
                f"Invalid value for '{param}': expected a non-negative integer, got {value!r}", param=param
            )
        limit = int(value)
    return limit


def read_stop(data: dict[str, Any]) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and len(stop) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise InvalidRequest(
        f"Invalid value for 'stop': expected a string or a list of at most {MAX_STOP_SEQUENCES} strings", param="stop"
    )


def read_include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("Invalid value for 'stream_options': expected an object", param="stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise InvalidRequest(
            "Invalid value for 'stream_options.include_usage': expected a boolean", param="stream_options.include_usage"
        )
    return include is True


def read_bool(data: dict[str, Any], param: str) -> bool:
    value = data.get(param)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"Invalid value for '{param}': expected a boolean, got {value!r}", param=param)
    return value


def message_text(content: object) -> str | None:
    """The text of a message ``content``: a string, or the text parts joined with newlines."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return None


def read_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``messages``: a non-empty list of objects with a known role and a valid content."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Invalid value for 'messages': expected a non-empty array of objects", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid value for 'messages[{i}]': expected an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': expected one of {', '.join(sorted(ROLES))}, got {role!r}",
                param=f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str) and not _valid_parts(content):
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].content': expected a string, null or an array of content parts",
                param=f"messages[{i}].content",
            )
    return messages


def _valid_parts(content: object) -> bool:
    if not isinstance(content, list):
        return False
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return False
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return False
    return True


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return None
