"""Slow and oversized request heads: a deadline for the head, and 414/431 instead of 400.

aiohttp limits line and header sizes but answers every overflow with 400, and
gives a client that trickles a request head byte by byte as long as it likes.
`GuardedServer` (and `GuardedAppRunner` for a full aiohttp Application) uses a
request handler that answers an overlong request line with 414, overlong or too
many headers with 431, a version the parser refuses (HTTP/1.2) with 505, and a
head not complete within ``header_timeout`` with 408; each is wsgipool's own
answer (``Server: wsgipool``, an HTTP/1.1 status line) and closes the
connection.  The deadline is enforced by one sweep per server, not a timer per
request, so keep-alive traffic pays nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from wsgipool import fastpath
from wsgipool.fastpath import FastLane
from wsgipool.logs.access import AccessLogger, log_abandoned
from wsgipool.logs.escape import escape
from wsgipool.response import error_response
from wsgipool.upgrade import UpgradeSafeParser
from wsgipool.wsgicall import SERVER_HEADER

__all__ = ["GuardedAppRunner", "GuardedServer"]

logger = logging.getLogger("wsgipool.server")

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nServer: wsgipool\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 20\r\n\r\n408 Request Timeout\n"
)


class _GuardedRequestHandler(RequestHandler):
    __slots__ = (
        "_head_bytes",
        "_head_mark",
        "_line_length",
        "client_fd",
        "fast",
        "fast_adopted",
        "lane",
        "wsgi_connection",
    )

    def __init__(self, manager: web.Server, lane: FastLane | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # The fast lane (fastpath.py), if the server has one: the request on it, and
        # one it handed back to aiohttp in flight, for WSGIHandler to adopt.
        self.lane = lane
        self.fast: fastpath.OnLane | None = None
        self.fast_adopted: fastpath.HandedBack | None = None
        # The client socket's descriptor a lane request may send its worker (-1: none,
        # as over TLS; fastpath.UNKNOWN until the lane first looks).
        self.client_fd = fastpath.UNKNOWN
        # Requests pipelined behind an Upgrade that is not granted are not lost.
        # (Duck-typed: it is the parser for everything but how data is fed to it.)
        self._parser = cast(Any, UpgradeSafeParser(self._parser))
        # The connection's encoded addresses, kept by wsgipool.environ for its requests.
        self.wsgi_connection: tuple[bytes, ...] | None = None
        # Length of the current head's request line: None while no newline was
        # seen, -1 when unknown (the head began inside a packet after a body).
        self._line_length: int | None = None
        self._head_bytes = 0  # bytes of a head not yet complete
        self._head_mark: tuple[int, float] | None = None  # (requests parsed, first seen at)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        if self._line_length is None:
            newline = data.find(b"\n")
            if newline >= 0:
                self._line_length = self._head_bytes + newline
        waiter = self._waiter
        lane = self.lane
        if lane is None or waiter is None or self._current_request is not None:
            super().data_received(data)
            self._count_head(data, before)
            if lane is not None and waiter is None and before == 0:
                # The connection's first request, parsed before aiohttp's task began
                # to wait for one (it has seen none, so it has nothing in hand): the
                # lane may take it; the task then finds the queue empty and waits.
                self._first_on_lane(lane)
            return
        # aiohttp's task waits for a request: the lane may take it instead (or one is
        # on the lane, and what arrives waits behind it). The task is woken only for
        # what the lane leaves.
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        self._count_head(data, before)
        if waiter.done():
            return
        if self._force_close or self._close:
            waiter.cancel()  # what close() did to the waiter it could not see
        elif self._messages and self.fast is None:
            takes = (
                len(self._messages) == 1
                and not self._upgraded
                and self._payload_parser is None
                and fastpath.try_start(self, lane)
            )
            if not takes:
                waiter.set_result(None)

    def _first_on_lane(self, lane: FastLane) -> None:
        if (
            len(self._messages) == 1
            and self.fast is None
            and self._current_request is None
            and not self._upgraded
            and self._payload_parser is None
            and not (self._force_close or self._close)
        ):
            fastpath.try_start(self, lane)

    def _count_head(self, data: bytes, before: int) -> None:
        """The head deadline's and the 414/431 rule's bookkeeping after `data` was parsed."""
        if self._request_count == before:
            self._head_bytes += len(data)
        elif self._messages and isinstance(self._messages[-1][0], RawRequestMessage):
            # A whole head arrived (not a parse error, which handle_error still has
            # to classify). A packet that ends with a line ending most likely ended
            # with that head; otherwise the next head's start is unknown.
            self._head_bytes = 0
            self._line_length = None if data.endswith(b"\n") else -1

    def fast_event(self, exchange: Any) -> None:
        """The first event of the request on the fast lane (an exchange's listener)."""
        assert self.lane is not None
        fastpath.on_event(self, self.lane, exchange)

    def fast_granted(self, granted: asyncio.Future[Any]) -> None:
        """The queue's answer for the request on the fast lane."""
        assert self.lane is not None
        fastpath.on_granted(self, self.lane, granted)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.lane is not None:
            fastpath.lost(self, self.lane)

    async def _handle_request(
        self, request: web.BaseRequest, start_time: float | None, request_handler: Any
    ) -> tuple[web.StreamResponse, bool]:
        """aiohttp's, and the access line of a request whose client left meanwhile:
        aiohttp cancels its handler (handler_cancellation) and writes no line."""
        try:
            return await super()._handle_request(request, start_time, request_handler)
        except asyncio.CancelledError:
            access = self.access_logger
            gone = self.transport is None  # connection_lost ran: the client left
            if gone and start_time is not None and type(access) is AccessLogger:
                log_abandoned(access, request, self._loop.time() - start_time)
            raise

    def close(self) -> None:
        """A graceful stop's first step: no request after the one in progress.

        aiohttp cancels the connection's task while it waits for a message, which
        it takes to mean idle; with a request on the lane it is not: the lane may
        yet hand that request to the task (a streamed answer, an error). So the
        task is left waiting, and the lane closes the connection when it is done.
        """
        if self.fast is not None:
            self._close = True
            return
        super().close()

    def _process_keepalive(self) -> None:
        if self.fast is not None:  # a request in progress on the lane: not idle
            self._keepalive_handle = self._loop.call_at(
                self._loop.time() + self._keepalive_timeout, self._process_keepalive
            )
            return
        super()._process_keepalive()

    def head_overdue(self, now: float, timeout: float) -> bool:
        """Called by the sweep: close the connection if a head has been pending too long."""
        if (
            self._current_request is not None
            or self._messages
            or self.fast is not None
            or self.transport is None
        ):
            self._head_mark = None
            return False
        if self._request_count and not self._head_bytes:
            self._head_mark = None  # idle keep-alive: keepalive_timeout's business
            return False
        # The same head is pending as long as no request completes, however many
        # bytes trickle in: a slow client cannot reset the deadline by sending more.
        mark = self._head_mark
        if mark is None or mark[0] != self._request_count:
            self._head_mark = (self._request_count, now)
            return False
        if now - mark[1] < timeout:
            return False
        transport = self.transport
        if self._head_bytes:
            transport.write(_TIMEOUT_RESPONSE)
        self.force_close()
        transport.close()
        return True

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            # The client's fault: one line, not an ERROR with a traceback that any
            # client could fill the log with.
            if status == 400:
                status = self._status_for(exc)
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0]
            logger.info(
                "%d for a malformed request from %s: %s",
                status,
                escape(request.remote),
                escape(reason),
            )
            # The stream cannot be trusted past a parse error: the connection closes.
            # The request's version is unknown (aiohttp's placeholder says 1.0): HTTP/1.1.
            return error_response(status, close=True, version=HttpVersion11)
        response = super().handle_error(request, status, exc, message)
        response.headers[hdrs.SERVER] = SERVER_HEADER
        return response

    def _status_for(self, exc: BaseException) -> int:
        if isinstance(exc, LineTooLong):
            line_length = self._line_length
            if line_length is None or line_length > self.max_line_size:
                return 414  # the request line itself is too long
            if line_length >= 0:
                return 431
            line = exc.args[0] if exc.args else b""
            text = line if isinstance(line, bytes) else str(line).encode("latin-1", "replace")
            return 414 if text[:1] in (b"/", b"*") or text[:4] == b"http" else 431
        if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            return 431
        if isinstance(exc, BadStatusLine) and "Invalid HTTP version" in exc.message:
            return 505  # HTTP/1.2, HTTP/3.0: the parser's own refusal of a version
        return 400


class GuardedServer(web.Server):
    """aiohttp's low-level server with the head deadline and precise 4xx statuses."""

    def __init__(
        self, *args: Any, header_timeout: float, lane: FastLane | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._lane = lane  # fastpath.py: without it every request takes aiohttp's path
        self._sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        if self._sweep is None:
            self._schedule()
        return _GuardedRequestHandler(self, lane=self._lane, loop=self._loop, **self._kwargs)

    def _schedule(self) -> None:
        interval = min(1.0, max(0.05, self._header_timeout / 4))
        self._sweep = self._loop.call_later(interval, self._sweep_heads)

    def _sweep_heads(self) -> None:
        self._sweep = None
        now = self._loop.time()
        connections = self.connections
        for handler in connections:
            if isinstance(handler, _GuardedRequestHandler):
                handler.head_overdue(now, self._header_timeout)
        if connections:
            self._schedule()

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await super().shutdown(timeout)


class GuardedAppRunner(web.AppRunner):
    """An AppRunner (static routes, middlewares) whose server is a `GuardedServer`."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            header_timeout=self._header_timeout,
            **plain._kwargs,
        )
