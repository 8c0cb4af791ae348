"""aiohttp's router with one change: unmatched requests answer ``Expect`` our way.

aiohttp runs a route's ``Expect`` handler before any middleware. For a
request no route matches (a ``CONNECT``, whose target is not a path) it uses
its own, which echoes the header back and fails with a 500 on a value that
is not UTF-8. Every route here has :func:`~airgap_proxy.middleware.expect_handler`;
this router gives it to the unmatched too, so they get a 417 in the OpenAI
envelope like everything else.

It also picks out the forward proxy's requests (``CONNECT``, absolute-form
for another host) before any path is matched: their target is not one of our
paths, and an absolute-form ``GET http://elsewhere/v1/models`` must never be
answered as if it were ours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute, MatchInfoError, UrlMappingMatchInfo

from airgap_proxy.middleware import expect_handler


class _Unmatched(MatchInfoError):
    __slots__ = ()

    @property
    def expect_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
        return expect_handler


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Picks = Callable[[web.BaseRequest], bool]


class _ForwardRoute(AbstractRoute):
    """The forward proxy's route: matched by :class:`Router` on the request's form, not its path."""

    def __init__(self, handler: Handler) -> None:
        super().__init__("*", handler, expect_handler=expect_handler)

    def url_for(self, *args: str, **kwargs: str) -> Any:
        raise RuntimeError("the forward proxy has no URL")

    @property
    def name(self) -> str | None:
        return None

    def get_info(self) -> Any:
        return {"forward_proxy": True}


class Router(web.UrlDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._forward: tuple[Picks, _ForwardRoute] | None = None

    def forward_to(self, picks: Picks, handler: Handler) -> None:
        """Send every request ``picks`` says is for the forward proxy to ``handler``."""
        self._forward = (picks, _ForwardRoute(handler))

    async def resolve(self, request: web.Request) -> web.UrlMappingMatchInfo:
        if self._forward is not None and self._forward[0](request):
            return UrlMappingMatchInfo({}, self._forward[1])
        match = await super().resolve(request)
        if isinstance(match, MatchInfoError) and not isinstance(match, _Unmatched):
            return _Unmatched(match.http_exception)
        return match
