"""The deterministic fallback: answers in each surface's shape when no local model is healthy (pure).

Same request body and model -> identical response bytes, across calls,
processes and machines: every id, timestamp, text and value derives from a
SHA-256 of the canonical request (:mod:`.seed`), never from the clock or a
random source. Bodies are compact JSON; streams are lists of SSE events.

Modules: :mod:`.chat` and :mod:`.completions` (texts, tool calls, JSON
output, streams), :mod:`.anthropic` (Anthropic messages, streams, token
counts), :mod:`.responses` (OpenAI Responses API bodies, event streams,
input token counts), :mod:`.embeddings`, :mod:`.models`, :mod:`.ollama`
(Ollama's native API: chat, generate, embed, model list), :mod:`.canned` (the
operator's replies file), :mod:`.jsonschema` (the JSON Schema engine:
instances, patterns, formats), :mod:`.text`
(sentences, token estimate, stop and max_tokens), :mod:`.request` (shared
request fields), :mod:`.wire` (serialisation).

Request errors raise :class:`airgap_proxy.errors.InvalidRequest` with
``param`` set; nothing here does I/O.
"""

from __future__ import annotations

from airgap_proxy.fallback.canned import EMPTY_CANNED, Canned, CannedReply, parse_canned
from airgap_proxy.fallback.chat import Kind, chat_completion, chat_completion_stream, kind_of
from airgap_proxy.fallback.completions import completion, completion_stream
from airgap_proxy.fallback.embeddings import embeddings
from airgap_proxy.fallback.models import models_list
from airgap_proxy.fallback.wire import SYSTEM_FINGERPRINT

__all__ = [
    "EMPTY_CANNED",
    "SYSTEM_FINGERPRINT",
    "Canned",
    "CannedReply",
    "Kind",
    "chat_completion",
    "chat_completion_stream",
    "completion",
    "completion_stream",
    "embeddings",
    "kind_of",
    "models_list",
    "parse_canned",
]
