"""A fast OpenAI-shaped upstream for benchmarks: raw asyncio protocol on uvloop.

Not a test and not product code. It answers, with HTTP/1.1 keep-alive:

- ``GET`` anything: a one-model ``/v1/models`` list (probes, ``/health``).
- ``POST`` with ``"stream": false`` (or no ``stream``): a fixed small chat completion.
- ``POST`` with ``"stream": true``: an SSE stream of ``chunks`` events and
  ``[DONE]``, chunked transfer encoding. Query parameters shape it:
  ``chunks`` (default 20) and ``pace_ms`` (default 0: every chunk written at
  once, each as its own write; above 0, one chunk every ``pace_ms``).
  Their defaults can be changed on the command line, for clients (LiteLLM)
  that do not pass a query string on.

So that the load generator and the proxy, not this instrument, are what a
benchmark measures, it does the least work possible: no HTTP framework, one
pre-built response per shape.

    python benchmarks/instrument.py PORT [CHUNKS [PACE_MS]]
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import cast
from urllib.parse import parse_qsl

import uvloop

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    },
    separators=(",", ":"),
).encode()
MODELS = json.dumps(
    {"object": "list", "data": [{"id": "bench", "object": "model", "created": 0, "owned_by": "bench"}]},
    separators=(",", ":"),
).encode()
EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)
LAST = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":20,"total_tokens":29}}\n\ndata: [DONE]\n\n'
)


def _fixed(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


COMPLETION_RESPONSE = _fixed(COMPLETION, b"application/json")
MODELS_RESPONSE = _fixed(MODELS, b"application/json")
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT_CHUNK = _chunk(EVENT)
LAST_CHUNKS = _chunk(LAST) + b"0\r\n\r\n"


class Upstream(asyncio.Protocol):
    chunks = 20
    pace_ms = 0.0

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line = head.split(b"\r\n", 1)[0].split(b" ")
        if line[0] != b"POST":
            self.transport.write(MODELS_RESPONSE)
            return
        if b'"stream":true' not in body.replace(b" ", b""):
            self.transport.write(COMPLETION_RESPONSE)
            return
        _, _, query = line[1].partition(b"?")
        params = dict(parse_qsl(query.decode()))
        chunks, pace_ms = int(params.get("chunks", self.chunks)), float(params.get("pace_ms", self.pace_ms))
        self.transport.write(STREAM_HEAD)
        if pace_ms <= 0:
            for _ in range(chunks):
                self.transport.write(EVENT_CHUNK)
            self.transport.write(LAST_CHUNKS)
            return
        asyncio.get_running_loop().create_task(self.paced(chunks, pace_ms / 1000))

    async def paced(self, chunks: int, pace_s: float) -> None:
        assert self.transport is not None
        for _ in range(chunks):
            await asyncio.sleep(pace_s)
            if self.transport.is_closing():
                return
            self.transport.write(EVENT_CHUNK)
        self.transport.write(LAST_CHUNKS)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        Upstream.chunks = int(sys.argv[2])
    if len(sys.argv) > 3:
        Upstream.pace_ms = float(sys.argv[3])
    uvloop.run(main(int(sys.argv[1])))
