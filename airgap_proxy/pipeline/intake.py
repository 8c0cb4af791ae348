"""Reading what a request brings: its body within the limits, and its path."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from airgap_proxy.errors import InvalidRequest, RequestTimeout, RequestTooLarge, UndecodableBody

_FORBIDDEN_SEGMENTS = frozenset({"..", ".", "%2e%2e", "%2e", ".%2e", "%2e."})


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing anything over ``limit`` bytes early, or not complete within ``timeout_s``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
    content = request.content
    if content.is_eof():
        # The whole body came with the head (the usual case): no wait, no timer.
        body = content.read_nowait()
        if len(body) > limit:
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
        return body
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} seconds") from None
    except (RequestPayloadError, aiohttp.http_exceptions.HttpProcessingError):
        # e.g. a body labelled gzip that does not decompress
        raise UndecodableBody("The request body could not be decoded (Content-Encoding)") from None
    return b"".join(chunks)


def endpoint_of(raw_path: str, root: str) -> str:
    """The path after ``root`` (``/v1/``), refusing dot segments that could escape it."""
    tail = raw_path[len(root) :] if raw_path.startswith(root) else ""
    if "." not in tail and "%" not in tail:
        return tail  # no dot segment can hide in it
    for segment in tail.split("/"):
        if segment.lower() in _FORBIDDEN_SEGMENTS:
            raise InvalidRequest("Path contains dot segments")
    return tail
