"""Requests the main process answers itself, before any worker or app sees them.

aiohttp's parser accepts some requests that wsgipool must not pass on:

- a version other than HTTP/1.0 and HTTP/1.1 (``HTTP/2.0``, ``HTTP/0.9``): a
  worker would write that version into its response head, which the main
  process rejects as a protocol error, blaming (and killing) the worker for a
  client's bytes; thread mode would answer ``HTTP/2.0 200 OK``.  505.
- HTTP/1.0 with Transfer-Encoding: faulty framing (RFC 9112 section 6.1), whose
  body a peer may delimit otherwise than we do.  400, and the connection closes.
- CONNECT: a tunnel is a proxy's business; the parser treats what follows as
  tunnelled bytes.  501, and the connection closes.

(A request line in ``RTSP/1.0``, which the parser reports as HTTP/1.0, is
refused earlier, by serve()'s parser wrapper: upgrade.py.)

`refuse` is called by `WSGIHandler` first thing (serve() and embedded use), and
by `middleware` for the routes of the application serve() builds with
``--static``, which also gives the answers of those routes ``Server: wsgipool``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11

from wsgipool.response import error_response
from wsgipool.wsgicall import SERVER_HEADER

__all__ = ["middleware", "refuse"]


def refuse(request: web.BaseRequest) -> web.StreamResponse | None:
    """wsgipool's own answer to a request no app may see, or None for a request to serve."""
    version = request.version
    if version != HttpVersion11:
        if version != HttpVersion10:
            return error_response(505, close=True)
        if hdrs.TRANSFER_ENCODING in request.headers:
            return error_response(400, close=True)
    if request.method == hdrs.METH_CONNECT:
        return error_response(501, close=True)
    return None


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    refusal = refuse(request)
    if refusal is not None:
        return refusal
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a static route's 404, 403, 405...
        exc.headers[hdrs.SERVER] = SERVER_HEADER
        raise
    if hdrs.SERVER not in response.headers and not response.prepared:
        response.headers[hdrs.SERVER] = SERVER_HEADER
    return response
