"""Deterministic bodies and NDJSON streams for Ollama's native API (pure).

``/api/chat`` and ``/api/generate`` answer, in this order:

1. No input (``messages`` absent or empty; ``prompt`` absent or empty): the
   model-load answer Ollama gives, ``done_reason: "load"`` (``"unload"`` with
   ``keep_alive`` 0), with empty content and no counts.
2. ``format`` a JSON Schema object: the content is an instance of it;
   ``"json"``: a JSON object (the canned text if it is one, else
   ``{"response": <text>}``). Structured content is never cut by ``stop`` or
   ``num_predict``: a valid document matters more than the budget.
3. Otherwise text: the canned reply for the model and the last user message
   (or the prompt), else three neutral sentences, then ``options.stop`` and
   ``options.num_predict`` (negative: no limit) as
   :func:`~airgap_proxy.fallback.text.shape` applies them; a cut reply ends
   with ``done_reason: "length"``.

Ollama has no forced tool choice (the model decides), so ``tools`` are
validated and answered with text: the fallback never invents a call.
``think``, ``images``, ``suffix``, ``template``, ``raw``, ``context`` and the
sampling options are accepted and change nothing but the timestamp.

Seeds: ``created_at`` (RFC 3339, UTC, nanoseconds) comes from the whole
request but ``stream``; the content from the messages (or system and prompt)
and the model only, so a reply cut by ``num_predict`` is a prefix of the uncut
one. Counts use :func:`~airgap_proxy.fallback.text.count_tokens`; durations
are fixed nanoseconds per token (:func:`_metrics`), never measured, and
never zero (clients divide by them). ``context`` is not sent: it is
deprecated, and there are no real token ids to put in it.

Streams are NDJSON: lines with ``done: false`` and a few words (or a
fixed-size fragment of JSON) each, then one ``done: true`` line with empty
content, ``done_reason`` and the counts; joining the pieces gives exactly the
non-streaming content. Ollama streams when ``stream`` is absent
(:func:`streams`).

``/api/embed`` and ``/api/embeddings`` reuse
:func:`~airgap_proxy.fallback.embeddings.unit_vector` with the seed of the
OpenAI fallback, so a text embeds to the same vector on both surfaces. The
model endpoints describe the served ids as tiny local ``gguf`` models of the
``airgap`` family; their timestamps derive from the name, as in
:mod:`.models`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from airgap_proxy.errors import InvalidRequest, ModelNotFound
from airgap_proxy.fallback import request, text, wire
from airgap_proxy.fallback.canned import Canned
from airgap_proxy.fallback.embeddings import DEFAULT_DIMENSIONS, MAX_DIMENSIONS, MAX_INPUTS, unit_vector
from airgap_proxy.fallback.jsonschema.instance import instance_for
from airgap_proxy.fallback.jsonschema.schema import SchemaError
from airgap_proxy.fallback.limits import DEFAULT_LIMITS, Limits, check_embedding_values, spend
from airgap_proxy.fallback.seed import Seed, canonical_json, request_seed

# The Ollama API level the fallback speaks (the one DESIGN §7 targets), for clients that gate features on it.
VERSION = "0.14.0"
ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_STOP = 64
STREAMING_ENDPOINTS = frozenset({"chat", "generate"})
# Durations, in nanoseconds: fixed rates, so the same counts give the same figures.
LOAD_NS = 1_000_000
PROMPT_NS_PER_TOKEN = 100_000
EVAL_NS_PER_TOKEN = 1_000_000
# What the model endpoints say of the served models.
CONTEXT_LENGTH = 131072
FAMILY = "airgap"
DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": FAMILY,
    "families": [FAMILY],
    "parameter_size": "0B",
    "quantization_level": "none",
}
CAPABILITIES = ["completion", "tools", "embedding"]
TEMPLATE = "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}"
# A fallback model is never unloaded: like Ollama with ``keep_alive: -1``, it expires centuries from now.
NEVER_EXPIRES = "2318-01-01T00:00:00Z"
_ZERO_DURATION = re.compile(r"[+-]?(0+(\.0*)?(ns|us|µs|μs|ms|s|m|h)?)+")


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated chat or generate request: what to answer and within which limits."""

    idle: str | None  # "load" / "unload" when there is nothing to answer
    json_mode: bool
    schema: object  # a JSON Schema object, or None
    stop: tuple[str, ...]
    num_predict: int | None


@dataclass(frozen=True, slots=True)
class _Answer:
    model: str
    created_at: str
    content: str
    done_reason: str
    structured: bool
    metrics: dict[str, int] | None  # None for a load answer


# ------------------------------------------------------------------ chat / generate


def chat(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``/api/chat`` JSON body for ``data``, as bytes."""
    return wire.encode(_chat_final(_chat_answer(data, model, canned), streamed=False))


def chat_stream(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """The ``/api/chat`` NDJSON lines for ``data``, the last one with ``done: true``."""
    answer = _chat_answer(data, model, canned)
    lines = []
    for piece in _pieces(answer):
        spend()
        lines.append(_line({**_head(answer), "message": {"role": "assistant", "content": piece}, "done": False}))
    lines.append(_line(_chat_final(answer, streamed=True)))
    return lines


def generate(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``/api/generate`` JSON body for ``data``, as bytes."""
    return wire.encode(_generate_final(_generate_answer(data, model, canned), streamed=False))


def generate_stream(data: dict[str, Any], model: str, canned: Canned, caps: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """The ``/api/generate`` NDJSON lines for ``data``, the last one with ``done: true``."""
    answer = _generate_answer(data, model, canned)
    lines = []
    for piece in _pieces(answer):
        spend()
        lines.append(_line({**_head(answer), "response": piece, "done": False}))
    lines.append(_line(_generate_final(answer, streamed=True)))
    return lines


def streams(endpoint: str, data: dict[str, Any]) -> bool:
    """Is the answer to ``endpoint`` (``chat``, ``/api/generate``...) a stream?

    Ollama streams chat and generate answers unless ``stream`` is ``false``.
    """
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(f"Invalid value for 'stream': expected a boolean, got {stream!r}", param="stream")
    name = endpoint.strip("/").removeprefix("api/")
    return name in STREAMING_ENDPOINTS and stream is not False


def _head(answer: _Answer) -> dict[str, Any]:
    return {"model": answer.model, "created_at": answer.created_at}


def _line(value: Any) -> bytes:
    return wire.encode(value) + b"\n"


def _pieces(answer: _Answer) -> list[str]:
    if answer.metrics is None:
        return []
    return text.fragments(answer.content) if answer.structured else text.word_pieces(answer.content)


def _chat_final(answer: _Answer, *, streamed: bool) -> dict[str, Any]:
    message = {"role": "assistant", "content": "" if streamed else answer.content}
    body: dict[str, Any] = {**_head(answer), "message": message, "done": True, "done_reason": answer.done_reason}
    return body | (answer.metrics or {})


def _generate_final(answer: _Answer, *, streamed: bool) -> dict[str, Any]:
    response = "" if streamed else answer.content
    body: dict[str, Any] = {**_head(answer), "response": response, "done": True, "done_reason": answer.done_reason}
    return body | (answer.metrics or {})


def _chat_answer(data: dict[str, Any], model: str, canned: Canned) -> _Answer:
    messages = _read_messages(data)
    _read_tools(data)
    plan = _plan(data, idle=not messages)
    prompt_text = "\n".join(m["content"] for m in messages if m.get("content"))
    prompt = next((m.get("content") or "" for m in reversed(messages) if m["role"].lower() == "user"), None)
    content_seed = Seed.of(b"ollama-chat", canonical_json(messages), _utf8(model))
    return _answer(data, model, canned, plan, content_seed, prompt=prompt, prompt_text=prompt_text)


def _generate_answer(data: dict[str, Any], model: str, canned: Canned) -> _Answer:
    prompt = _optional_str(data, "prompt")
    system = _optional_str(data, "system")
    for param in ("suffix", "template"):
        _optional_str(data, param)
    _read_images(data.get("images"), "images")
    context = data.get("context")
    if context is not None and not (isinstance(context, list) and all(request.is_int(t) for t in context)):
        raise InvalidRequest("Invalid value for 'context': expected an array of integers", param="context")
    request.read_bool(data, "raw")
    plan = _plan(data, idle=not prompt)
    prompt_text = f"{system}\n{prompt}" if system else prompt
    content_seed = Seed.of(b"ollama-generate", _utf8(system), _utf8(prompt), _utf8(model))
    return _answer(data, model, canned, plan, content_seed, prompt=prompt, prompt_text=prompt_text)


def _answer(
    data: dict[str, Any],
    model: str,
    canned: Canned,
    plan: _Plan,
    seed: Seed,
    *,
    prompt: str | None,
    prompt_text: str,
) -> _Answer:
    created_at = created_at_of(request_seed(data, model))
    if plan.idle is not None:
        return _Answer(model, created_at, "", plan.idle, False, None)
    spend()
    structured = True
    reason = "stop"
    if plan.schema is not None:
        try:
            content = wire.dumps(instance_for(plan.schema, seed.child("content")))
        except SchemaError as exc:
            raise InvalidRequest(f"format: {exc}", param="format") from None
    elif plan.json_mode:
        content = text.json_object(canned.reply_for(model, prompt), seed)
    else:
        structured = False
        reply = canned.reply_for(model, prompt)
        shaped = text.shape(reply if reply is not None else text.neutral_text(seed), plan.stop, plan.num_predict)
        content, reason = shaped.text, shaped.finish_reason
    metrics = _metrics(text.count_tokens(prompt_text), text.count_tokens(content))
    return _Answer(model, created_at, content, reason, structured, metrics)


def _metrics(prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
    """Ollama's counts and durations (ns): fixed rates, at least one token's worth each."""
    prompt_ns = max(prompt_tokens, 1) * PROMPT_NS_PER_TOKEN
    eval_ns = max(eval_tokens, 1) * EVAL_NS_PER_TOKEN
    return {
        "total_duration": LOAD_NS + prompt_ns + eval_ns,
        "load_duration": LOAD_NS,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_tokens,
        "eval_duration": eval_ns,
    }


# ------------------------------------------------------------------ embeddings


def embed(data: dict[str, Any], model: str, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The ``/api/embed`` JSON body: one unit vector per input (none for an empty input, as Ollama loads)."""
    inputs = _read_embed_inputs(data)
    dimensions = _read_dimensions(data)
    check_embedding_values(len(inputs), dimensions, caps)
    vectors = []
    tokens = 0
    for value in inputs:
        spend()
        vectors.append(_vector(model, value, dimensions))
        tokens += text.count_tokens(value)
    body: dict[str, Any] = {"model": model, "embeddings": vectors}
    if inputs:
        body |= {"total_duration": LOAD_NS + max(tokens, 1) * PROMPT_NS_PER_TOKEN, "load_duration": LOAD_NS}
        body["prompt_eval_count"] = tokens
    return wire.encode(body)


def embeddings(data: dict[str, Any], model: str, caps: Limits = DEFAULT_LIMITS) -> bytes:
    """The legacy ``/api/embeddings`` JSON body: ``{"embedding": [...]}`` for ``prompt`` (empty: ``[]``)."""
    prompt = _optional_str(data, "prompt")
    _read_options(data)
    if not prompt:
        return wire.encode({"embedding": []})
    check_embedding_values(1, DEFAULT_DIMENSIONS, caps)
    spend()
    return wire.encode({"embedding": _vector(model, prompt, DEFAULT_DIMENSIONS)})


def _vector(model: str, value: str, dimensions: int) -> list[float]:
    # The seed of fallback.embeddings for a text input: the same text, the same vector on every surface.
    return unit_vector(Seed.of(b"embedding", _utf8(model), b"s" + _utf8(value)), dimensions)


def _read_embed_inputs(data: dict[str, Any]) -> list[str]:
    raw = data.get("input")
    _read_options(data)
    request.read_bool(data, "truncate")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, list) and len(raw) <= MAX_INPUTS and all(isinstance(x, str) for x in raw):
        return raw
    raise InvalidRequest(
        f"Invalid value for 'input': expected a string or an array of at most {MAX_INPUTS} strings", param="input"
    )


def _read_dimensions(data: dict[str, Any]) -> int:
    dimensions = data.get("dimensions")
    if dimensions is None or dimensions == 0:
        return DEFAULT_DIMENSIONS
    if not request.is_int(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise InvalidRequest(
            f"Invalid value for 'dimensions': expected an integer from 1 to {MAX_DIMENSIONS}, got {dimensions!r}",
            param="dimensions",
        )
    return int(dimensions)


# ------------------------------------------------------------------ models


def tags(model_ids: list[str]) -> bytes:
    """The ``/api/tags`` body: the served models, in order, without repeats."""
    return wire.encode({"models": [_model_entry(name) for name in dict.fromkeys(model_ids)]})


def ps(model_ids: list[str]) -> bytes:
    """The ``/api/ps`` body: every served model, always loaded."""
    models = [
        _model_entry(name, modified=False)
        | {"expires_at": NEVER_EXPIRES, "size_vram": 0, "context_length": CONTEXT_LENGTH}
        for name in dict.fromkeys(model_ids)
    ]
    return wire.encode({"models": models})


def show(data: dict[str, Any], model_ids: list[str]) -> bytes:
    """The ``/api/show`` body for ``model`` (or the legacy ``name``); ``ModelNotFound`` if it is not served."""
    wanted = data.get("model") or data.get("name")
    if not isinstance(wanted, str) or not wanted:
        raise InvalidRequest("model is required", param="model")
    request.read_bool(data, "verbose")
    name = _served_name(wanted, model_ids)
    if name is None:
        raise ModelNotFound(f"model '{wanted}' not found", param="model")
    parameters = f"{'num_ctx':<30} {CONTEXT_LENGTH}"
    modelfile = (
        "# Modelfile generated by airgap-proxy: a deterministic fallback, no weights\n"
        f'FROM {name}\nTEMPLATE """{TEMPLATE}"""\nPARAMETER num_ctx {CONTEXT_LENGTH}\n'
    )
    model_info = {
        "general.architecture": FAMILY,
        "general.basename": name,
        "general.file_type": 0,
        "general.parameter_count": 0,
        f"{FAMILY}.context_length": CONTEXT_LENGTH,
        f"{FAMILY}.embedding_length": DEFAULT_DIMENSIONS,
    }
    return wire.encode(
        {
            "modelfile": modelfile,
            "parameters": parameters,
            "template": TEMPLATE,
            "details": DETAILS,
            "model_info": model_info,
            "capabilities": CAPABILITIES,
            "modified_at": created_at_of(_name_seed(name), nanos=False),
        }
    )


def version() -> bytes:
    """The ``/api/version`` body."""
    return wire.encode({"version": VERSION})


def _model_entry(name: str, *, modified: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "model": name}
    if modified:
        entry["modified_at"] = created_at_of(_name_seed(name), nanos=False)
    digest = hashlib.sha256(_utf8(name)).hexdigest()
    return entry | {"size": 0, "digest": digest, "details": DETAILS}


def _name_seed(name: str) -> Seed:
    # The seed of fallback.models, so /api/tags and /v1/models date a model alike.
    return Seed.of(b"model", _utf8(name))


def _served_name(wanted: str, model_ids: list[str]) -> str | None:
    """The served id ``wanted`` names: exactly, else with Ollama's implied ``:latest`` tag added or dropped."""
    if wanted in model_ids:
        return wanted
    bare = wanted.removesuffix(":latest")
    for name in model_ids:
        if name.removesuffix(":latest") == bare:
            return name
    return None


# ------------------------------------------------------------------ timestamps


def created_at_of(seed: Seed, *, nanos: bool = True) -> str:
    """The RFC 3339 UTC timestamp of ``seed`` (Go's ``RFC3339Nano``, as Ollama prints), never the clock."""
    seconds = seed.created()
    days, rest = divmod(seconds, 86400)
    year, month, day = _civil(days)
    stamp = f"{year:04d}-{month:02d}-{day:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}"
    fraction = int.from_bytes(seed.digest[24:28], "big") % 1_000_000_000 if nanos else 0
    if fraction:
        stamp += "." + f"{fraction:09d}".rstrip("0")
    return stamp + "Z"


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of ``days`` since 1970-01-01 (Howard Hinnant's ``civil_from_days``)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


# ------------------------------------------------------------------ validation


def _utf8(value: str | None) -> bytes:
    return (value or "").encode("utf-8", "surrogatepass")


def _optional_str(data: dict[str, Any], param: str) -> str:
    value = data.get(param)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid value for '{param}': expected a string, got {value!r}", param=param)
    return value


def _plan(data: dict[str, Any], *, idle: bool) -> _Plan:
    json_mode, schema = _read_format(data)
    stop, num_predict = _read_options(data)
    request.read_bool(data, "stream")
    think = data.get("think")
    if think is not None and not isinstance(think, (bool, str)):
        raise InvalidRequest("Invalid value for 'think': expected a boolean or a level", param="think")
    unload = _unloads(data.get("keep_alive"))
    return _Plan(("unload" if unload else "load") if idle else None, json_mode, schema, stop, num_predict)


def _unloads(keep_alive: object) -> bool:
    """Does ``keep_alive`` (seconds, or a Go duration such as ``"5m"``) ask to unload now?"""
    if keep_alive is None:
        return False
    if isinstance(keep_alive, (int, float)) and not isinstance(keep_alive, bool):
        return keep_alive == 0
    if isinstance(keep_alive, str):
        return _ZERO_DURATION.fullmatch(keep_alive) is not None
    raise InvalidRequest(
        "Invalid value for 'keep_alive': expected a number of seconds or a duration such as '5m'", param="keep_alive"
    )


def _read_format(data: dict[str, Any]) -> tuple[bool, object]:
    """``(json_mode, schema)`` from ``format``: ``"json"``, a JSON Schema object, or nothing."""
    fmt = data.get("format")
    if fmt is None or fmt == "":
        return False, None
    if fmt == "json":
        return True, None
    if isinstance(fmt, dict):
        return False, fmt
    raise InvalidRequest(
        f'invalid format: {wire.dumps(fmt)}; expected "json" or a valid JSON Schema object', param="format"
    )


def _read_options(data: dict[str, Any]) -> tuple[tuple[str, ...], int | None]:
    """``(stop, num_predict)`` from ``options``; ``num_predict`` below zero means no limit (Ollama's -1, -2)."""
    options = data.get("options")
    if options is None:
        return (), None
    if not isinstance(options, dict):
        raise InvalidRequest("Invalid value for 'options': expected an object", param="options")
    num_predict = options.get("num_predict")
    if num_predict is not None and not request.is_int(num_predict):
        raise InvalidRequest(
            f"Invalid value for 'options.num_predict': expected an integer, got {num_predict!r}",
            param="options.num_predict",
        )
    stop = options.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise InvalidRequest(
            f"Invalid value for 'options.stop': expected an array of at most {MAX_STOP} strings",
            param="options.stop",
        )
    limit = None if num_predict is None or num_predict < 0 else int(num_predict)
    return stops, limit


def _read_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``messages``: objects with a role, a string ``content`` and optional images and tool calls."""
    messages = data.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
        raise InvalidRequest(
            f"Invalid value for 'messages': expected an array of at most {MAX_MESSAGES} objects", param="messages"
        )
    for i, message in enumerate(messages):
        spend()
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid value for '{where}': expected an object", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected one of {', '.join(sorted(ROLES))}, got {role!r}",
                param=f"{where}.role",
            )
        for key in ("content", "thinking", "tool_name"):
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidRequest(
                    f"Invalid value for '{where}.{key}': expected a string, got {type(value).__name__}",
                    param=f"{where}.{key}",
                )
        _read_images(message.get("images"), f"{where}.images")
        _read_tool_calls(message.get("tool_calls"), f"{where}.tool_calls")
    return messages


def _read_images(images: object, where: str) -> None:
    if images is not None and not (isinstance(images, list) and all(isinstance(x, str) for x in images)):
        raise InvalidRequest(f"Invalid value for '{where}': expected an array of base64 strings", param=where)


def _read_tool_calls(calls: object, where: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise InvalidRequest(f"Invalid value for '{where}': expected an array of tool calls", param=where)
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", {}) if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise InvalidRequest(
                f'Invalid value for \'{where}[{j}]\': expected {{"function": {{"name": ..., "arguments": {{...}}}}}}',
                param=f"{where}[{j}]",
            )


def _read_tools(data: dict[str, Any]) -> None:
    tools = data.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise InvalidRequest(
            f"Invalid value for 'tools': expected an array of at most {MAX_TOOLS} tools", param="tools"
        )
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(
                f'Invalid value for \'{where}\': expected {{"type": "function", "function": {{...}}}}',
                param=where,
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(
                f"Invalid value for '{where}.function.name': expected a string", param=f"{where}.function.name"
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(
                f"Invalid value for '{where}.function.parameters': expected a JSON Schema object",
                param=f"{where}.function.parameters",
            )
