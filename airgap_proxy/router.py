"""aiohttp's router with one change: unmatched requests answer ``Expect`` our way.

aiohttp runs a route's ``Expect`` handler before any middleware. For a
request no route matches (a ``CONNECT``, whose target is not a path) it uses
its own, which echoes the header back and fails with a 500 on a value that
is not UTF-8. Every route here has :func:`~airgap_proxy.middleware.expect_handler`;
this router gives it to the unmatched too, so they get a 417 in the OpenAI
envelope like everything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from airgap_proxy.middleware import expect_handler


class _Unmatched(MatchInfoError):
    __slots__ = ()

    @property
    def expect_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
        return expect_handler


class Router(web.UrlDispatcher):
    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        match = await super().resolve(request)
        if isinstance(match, MatchInfoError) and not isinstance(match, _Unmatched):
            return _Unmatched(match.http_exception)
        return match
