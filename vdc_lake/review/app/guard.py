"""The checks every request passes before a page or an action: the Host header (DNS rebinding),
the token of a server reachable from other hosts, and the CSRF token of every POST."""

from __future__ import annotations

import hmac
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse

from vdc_lake.review.app.options import AppOptions

TOKEN_COOKIE = "vdc_lake_token"
TOKEN_PARAM = "token"
TOKEN_HEADER = "x-vdc-lake-token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD")


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def refusal(request: Request, options: AppOptions) -> tuple[int, str] | None:
    """(status, why) when the request may not go on, else None."""
    host = (request.headers.get("host") or "").lower()
    if host not in options.hosts:
        return 421, (f"Host {host!r} is not this server's: open it by the address `vdc-lake review` printed "
                     "(a page of another site may not reach it)")
    if options.token is not None:
        given = (request.query_params.get(TOKEN_PARAM) or request.headers.get(TOKEN_HEADER)
                 or request.cookies.get(TOKEN_COOKIE))
        if not _same(given, options.token):
            return 403, "this server needs its token: open the address with ?token=... that `vdc-lake review` printed"
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != host:
            return 403, "a page of another site may not act on this catalog"
        if not _same(request.headers.get(CSRF_HEADER), options.csrf_token):
            return 403, "the action carries no valid CSRF token: reload the page and try again"
    return None


class Guard:
    """ASGI middleware: refuses a request that fails `refusal`; a valid ?token= on a page becomes a
    cookie (HttpOnly, SameSite=Strict) and the address without it."""

    def __init__(self, app: Callable, options: AppOptions):
        self.app = app
        self.options = options

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        refused = refusal(request, self.options)
        if refused is not None:
            return await PlainTextResponse(refused[1], status_code=refused[0])(scope, receive, send)
        if self.options.token is not None and TOKEN_PARAM in request.query_params and request.method == "GET":
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.options.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
