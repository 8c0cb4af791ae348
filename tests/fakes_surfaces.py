"""Instruments on loopback that speak Anthropic Messages and the OpenAI Responses API, and record what they got."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Received

# Health probes of the provider types the tests use: not recorded.
PROBES = frozenset({"/v1/models", "/models", "/health"})


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass
class FakeSurfaceUpstream:
    """Answers ``/v1/messages`` and ``/v1/responses`` like a local server that speaks both."""

    received: list[Received] = field(default_factory=list)
    deltas: tuple[str, ...] = ("Hello", " from", " upstream")
    delay_s: float = 0.0
    die_after: int | None = None
    status: int = 200
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "GET" and request.path in PROBES:
            return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})
        self.received.append(Received(request.method, request.path, request.query_string, dict(request.headers), body))
        if self.status != 200:
            return web.json_response({"type": "error", "error": {"type": "x", "message": "no"}}, status=self.status)
        data = json.loads(body) if body else {}
        path = request.path
        if path.endswith("/messages/count_tokens"):
            return web.json_response({"input_tokens": 7})
        if path.endswith("/messages"):
            if data.get("stream"):
                return await self.stream(request, self.message_events(data))
            return web.json_response(self.message(data))
        if path.endswith("/responses/input_tokens"):
            return web.json_response({"object": "response.input_tokens", "input_tokens": 9})
        if path.endswith("/responses"):
            response = self.response(data)
            self.stored[response["id"]] = response
            if data.get("stream"):
                return await self.stream(request, self.response_events(response))
            return web.json_response(response)
        if "/responses/" in path:
            found = self.stored.get(path.rsplit("/", 1)[1])
            if found is None:
                return web.json_response(
                    {"error": {"message": "not found", "type": "invalid_request_error"}}, status=404
                )
            if request.method == "DELETE":
                del self.stored[found["id"]]
                return web.json_response({"id": found["id"], "object": "response.deleted", "deleted": True})
            return web.json_response(found)
        return web.json_response({"echo": path})

    def text(self) -> str:
        return "".join(self.deltas)

    def message(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "msg_upstream",
            "type": "message",
            "role": "assistant",
            "model": data.get("model"),
            "content": [{"type": "text", "text": self.text()}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 3},
        }

    def message_events(self, data: dict[str, Any]) -> list[bytes]:
        start = dict(self.message(data), content=[], stop_reason=None, usage={"input_tokens": 11, "output_tokens": 1})
        events = [sse("message_start", {"type": "message_start", "message": start})]
        block: dict[str, Any] = {"type": "text", "text": ""}
        events.append(sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
        for piece in self.deltas:
            delta = {"type": "text_delta", "text": piece}
            events.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        stop: dict[str, Any] = {"stop_reason": "end_turn", "stop_sequence": None}
        events.append(sse("message_delta", {"type": "message_delta", "delta": stop, "usage": {"output_tokens": 3}}))
        events.append(sse("message_stop", {"type": "message_stop"}))
        return events

    def response(self, data: dict[str, Any]) -> dict[str, Any]:
        number = len(self.stored) + 1
        return {
            "id": f"resp_up{number}",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": data.get("model"),
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text(), "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 5,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 3,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 8,
            },
        }

    def response_events(self, response: dict[str, Any]) -> list[bytes]:
        seq = iter(range(100))
        created = dict(response, status="in_progress", output=[], usage=None)
        events = [
            sse("response.created", {"type": "response.created", "response": created, "sequence_number": next(seq)})
        ]
        item = response["output"][0]
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        empty_item = dict(item, status="in_progress", content=[])
        added: dict[str, Any] = {"type": "response.output_item.added", "output_index": 0, "item": empty_item}
        events.append(sse(added["type"], dict(added, sequence_number=next(seq))))
        part = {"type": "output_text", "text": "", "annotations": []}
        added = {"type": "response.content_part.added", **where, "part": part}
        events.append(sse(added["type"], dict(added, sequence_number=next(seq))))
        for piece in self.deltas:
            delta = {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
                "logprobs": [],
                "sequence_number": next(seq),
            }
            events.append(sse("response.output_text.delta", delta))
        text_done = {"type": "response.output_text.done", **where, "text": self.text(), "logprobs": []}
        events.append(sse(text_done["type"], dict(text_done, sequence_number=next(seq))))
        part_done = {"type": "response.content_part.done", **where, "part": item["content"][0]}
        events.append(sse(part_done["type"], dict(part_done, sequence_number=next(seq))))
        item_done = {"type": "response.output_item.done", "output_index": 0, "item": item}
        events.append(sse(item_done["type"], dict(item_done, sequence_number=next(seq))))
        done = {"type": "response.completed", "response": response, "sequence_number": next(seq)}
        events.append(sse("response.completed", done))
        return events

    async def stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, event in enumerate(events):
            if self.die_after is not None and index == self.die_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if self.delay_s and index:
                await asyncio.sleep(self.delay_s)
            await response.write(event)
        await response.write_eof()
        return response
