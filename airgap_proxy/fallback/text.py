"""Reply text: neutral sentences, the token estimate, ``stop`` and ``max_tokens`` (pure).

Token estimate: ``ceil(characters / 4)``, the usual rule of thumb for English
with OpenAI tokenizers. It is used for every ``usage`` figure and for
``max_tokens``, so a truncated reply never reports more completion tokens than
were allowed. Truncation keeps whole words (a single word longer than the
budget is cut), and a reply that was cut ends with ``finish_reason: "length"``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from airgap_proxy.fallback import wire
from airgap_proxy.fallback.seed import Seed

# Neutral, self-describing sentences. A reply is three of them, picked by the seed.
SENTENCES = (
    "This is a deterministic reply from airgap-proxy.",
    "No local language model is available right now, so the proxy answered on its own.",
    "The same request always receives exactly the same response.",
    "Nothing in this request left the network.",
    "Configure a healthy local upstream to get answers from a real model.",
    "This text is a placeholder that keeps offline demos and tests running.",
    "Replies like this one can be replaced with canned texts per model or per prompt.",
    "The response follows the OpenAI format, so clients need no changes.",
)
SENTENCES_PER_REPLY = 3
WORDS_PER_CHUNK = 3
FRAGMENT_CHARS = 16

_WORD = re.compile(r"\S+")


def count_tokens(text: str) -> int:
    """The deterministic token estimate of ``text``."""
    return (len(text) + 3) // 4


def neutral_text(seed: Seed) -> str:
    """Three distinct sentences chosen and ordered by ``seed``."""
    pool = list(SENTENCES)
    picked = [pool.pop(seed.digest[k] % len(pool)) for k in range(SENTENCES_PER_REPLY)]
    return " ".join(picked)


@dataclass(frozen=True, slots=True)
class Shaped:
    """A reply after ``stop`` and ``max_tokens``: the text and why it ended."""

    text: str
    finish_reason: str


def shape(text: str, stop: Sequence[str], max_tokens: int | None) -> Shaped:
    """Apply ``stop`` (cut before the earliest stop sequence) then ``max_tokens``.

    1. Cut at the earliest occurrence of any stop sequence.
    2. If the rest is over ``max_tokens``, keep the longest whole-word prefix
       that fits (``finish_reason: "length"``); otherwise ``"stop"``.
    """
    cut = len(text)
    for sequence in stop:
        at = text.find(sequence) if sequence else -1
        if 0 <= at < cut:
            cut = at
    text = text[:cut]
    if max_tokens is None or count_tokens(text) <= max_tokens:
        return Shaped(text, "stop")
    return Shaped(truncate(text, max_tokens), "length")


def truncate(text: str, max_tokens: int) -> str:
    """The longest whole-word prefix of ``text`` within ``max_tokens``."""
    budget = max_tokens * 4
    end = 0
    for match in _WORD.finditer(text):
        if match.end() > budget:
            break
        end = match.end()
    if end == 0:
        # The first word alone is over the budget: cut it (still a prefix).
        return text[:budget] if _WORD.search(text[:budget]) else ""
    return text[:end]


def word_pieces(text: str, words: int = WORDS_PER_CHUNK) -> list[str]:
    """``text`` split into pieces of ``words`` words; they join back to ``text``."""
    starts = [m.start() for m in _WORD.finditer(text)]
    cuts = [0, *starts[words::words], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def fragments(text: str, size: int = FRAGMENT_CHARS) -> list[str]:
    """``text`` split into fixed-size fragments (for JSON, which has no words)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def json_object(reply: str | None, seed: Seed) -> str:
    """A JSON object answer: the reply itself when it is one, else ``{"response": <text>}``."""
    if reply is not None and reply.lstrip().startswith("{"):
        try:
            value = wire.loads_object(reply)
        except ValueError:
            value = None
        if value is not None:
            return wire.dumps(value)
    return wire.dumps({"response": reply if reply is not None else neutral_text(seed)})
