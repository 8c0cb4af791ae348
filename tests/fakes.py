"""A real OpenAI-compatible upstream on 127.0.0.1:0, used as a test instrument.

It records every request it receives (method, path, headers, body) so tests
can assert what the proxy sent, and it can be told to misbehave.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Health-probe paths of every provider type; probes are logged apart from traffic.
PROBE_PATHS = frozenset({"/v1/models", "/models", "/api/tags", "/health", "/health/liveliness"})
MODELS = {
    "object": "list",
    "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
    "models": [{"name": "fake-model"}],
}


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    """Behaviour knobs and the log of received requests."""

    received: list[Received] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    stream_chunks: int = 3
    chunk_delay_s: float = 0.0
    chunk_sent_at: list[float] = field(default_factory=list)
    die_after_chunks: int | None = None
    status: int = 200
    delay_s: float = 0.0
    redirect_to: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "GET" and request.path in PROBE_PATHS:
            self.probes.append(request.path)
            if self.status != 200:
                return web.json_response({"error": "down"}, status=self.status)
            return web.json_response(MODELS)
        self.received.append(Received(request.method, request.path, request.query_string, dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.redirect_to is not None:
            raise web.HTTPFound(self.redirect_to)
        if self.status != 200:
            return web.json_response({"error": {"message": "upstream says no", "type": "x"}}, status=self.status)
        path = request.path
        if path.endswith("/models"):
            return web.json_response(
                {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]}
            )
        if path.endswith("/audio/transcriptions"):  # a multipart upload, not JSON
            return web.json_response({"text": "transcribed"})
        data = json.loads(body) if body else {}
        if path.endswith("/chat/completions"):
            if data.get("stream"):
                return await self.stream_chat(request, data)
            return web.json_response(chat_body(data.get("model", "?"), "Hello from upstream"))
        if path.endswith("/completions"):
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 1,
                    "model": data.get("model", "?"),
                    "choices": [{"index": 0, "text": "legacy text", "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
                }
            )
        if path.endswith("/embeddings"):
            return web.json_response(
                {
                    "object": "list",
                    "model": data.get("model", "?"),
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                }
            )
        return web.json_response({"echo": path, "method": request.method, "query": request.rel_url.raw_query_string})

    async def stream_chat(self, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        model = data.get("model", "?")
        for index in range(self.stream_chunks):
            if self.die_after_chunks is not None and index == self.die_after_chunks:
                assert request.transport is not None
                request.transport.close()
                return response
            if self.chunk_delay_s and index:
                await asyncio.sleep(self.chunk_delay_s)
            chunk = chunk_body(model, f"tok{index} ")
            self.chunk_sent_at.append(time.monotonic())
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def chat_body(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def chunk_body(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
