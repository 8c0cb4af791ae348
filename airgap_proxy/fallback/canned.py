"""Canned replies: operator-chosen texts per model or per prompt pattern (pure).

The responses file (``fallback.responses_file``) is YAML of this shape; the
caller loads it and hands the data to :func:`parse_canned` once, at start-up::

    version: 1                # optional
    default: "optional text for requests no reply matches"
    replies:
      - model: "llama3*"      # optional: glob (fnmatch, case-sensitive) or exact name
        pattern: "(?i)weather" # optional: regex searched in the last user message
        text: "It is sunny."  # required

The first reply whose ``model`` and ``pattern`` both match wins; a reply with
neither matches everything.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

_REPLY_KEYS = ("model", "pattern", "text")
_TOP_KEYS = ("version", "default", "replies")


@dataclass(frozen=True, slots=True)
class CannedReply:
    """One canned text and when it applies."""

    text: str
    model: str | None = None
    pattern: str | None = None
    _model_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)
    _pattern_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def matches(self, model: str, prompt: str | None) -> bool:
        if self._model_re is not None and self._model_re.fullmatch(model) is None:
            return False
        if self._pattern_re is not None:
            return prompt is not None and self._pattern_re.search(prompt) is not None
        return True


@dataclass(frozen=True, slots=True)
class Canned:
    """The parsed responses file: ordered replies and an optional default."""

    replies: tuple[CannedReply, ...] = ()
    default: str | None = None

    def reply_for(self, model: str, prompt: str | None) -> str | None:
        """The text of the first matching reply, else the default, else ``None``.

        ``prompt`` is the last user message (chat) or the prompt (completions).
        """
        for reply in self.replies:
            if reply.matches(model, prompt):
                return reply.text
        return self.default


EMPTY_CANNED = Canned()


def parse_canned(raw: object) -> Canned:
    """Validate YAML-loaded data into :class:`Canned`.

    Raises ``ValueError`` whose message starts with the offending path, e.g.
    ``replies[2].pattern: invalid regex ...``. ``None`` (an empty file) is
    the empty configuration.
    """
    if raw is None:
        return EMPTY_CANNED
    if not isinstance(raw, dict):
        raise ValueError(f"<root>: expected a mapping with 'replies' and 'default', got {_kind(raw)}")
    for key in raw:
        if key not in _TOP_KEYS:
            raise ValueError(f"{key}: unknown key; expected one of {', '.join(_TOP_KEYS)}")
    version = raw.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise ValueError(f"version: unsupported version {version!r}; expected 1")
    default = raw.get("default")
    if default is not None and not isinstance(default, str):
        raise ValueError(f"default: expected a string, got {_kind(default)}")
    replies_raw = raw.get("replies")
    if replies_raw is None:
        replies_raw = []
    if not isinstance(replies_raw, list):
        raise ValueError(f"replies: expected a list, got {_kind(replies_raw)}")
    replies = tuple(_parse_reply(item, f"replies[{i}]") for i, item in enumerate(replies_raw))
    return Canned(replies=replies, default=default)


def _parse_reply(item: object, path: str) -> CannedReply:
    if not isinstance(item, dict):
        raise ValueError(f"{path}: expected a mapping with 'text' and optional 'model', 'pattern', got {_kind(item)}")
    for key in item:
        if key not in _REPLY_KEYS:
            raise ValueError(f"{path}.{key}: unknown key; expected one of {', '.join(_REPLY_KEYS)}")
    text = item.get("text")
    if not isinstance(text, str):
        missing = "text" not in item
        raise ValueError(f"{path}.text: " + ("required" if missing else f"expected a string, got {_kind(text)}"))
    model = _optional_str(item, "model", path)
    pattern = _optional_str(item, "pattern", path)
    model_re = re.compile(fnmatch.translate(model)) if model is not None else None
    pattern_re = None
    if pattern is not None:
        try:
            pattern_re = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{path}.pattern: invalid regex {pattern!r}: {exc}") from None
    return CannedReply(text=text, model=model, pattern=pattern, _model_re=model_re, _pattern_re=pattern_re)


def _optional_str(item: dict[Any, Any], key: str, path: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}.{key}: expected a non-empty string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
