"""Slow and oversized request heads: a deadline for the head, and 414/431 instead of 400.

aiohttp limits line and header sizes but answers every overflow with 400, and
gives a client that trickles a request head byte by byte as long as it likes.
`GuardedAppRunner` swaps in a request handler that closes such connections
with 408 after ``header_timeout`` and answers an overlong request line with 414
and overlong or too many headers with 431.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

__all__ = ["GuardedAppRunner"]

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 20\r\n\r\n408 Request Timeout\n"
)


class _GuardedRequestHandler(RequestHandler):
    __slots__ = ("_head_bytes", "_head_line", "_head_timeout", "_head_timer")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_line: bool | None = False  # request line complete? None: unknown
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        if self._head_timer is None and self._current_request is None and not self._messages:
            self._arm()
        if self._head_line is False and b"\n" in data:
            self._head_line = True
        self._head_bytes += len(data)
        super().data_received(data)
        if self._request_count != before:
            # A whole head arrived; what follows in `data` is of unknown shape.
            self._disarm()
            self._head_line = None if data.rfind(b"\n") > 0 else False
            self._head_bytes = 0

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_bytes = 0
        self._head_line = False
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._current_request is not None or self._messages:
            return
        if self._head_bytes:
            transport.write(_TIMEOUT_RESPONSE)
        self.force_close()
        transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and exc is not None:
            status = self._status_for(exc)
        return super().handle_error(request, status, exc, message)

    def _status_for(self, exc: BaseException) -> int:
        if isinstance(exc, LineTooLong):
            if self._head_line is False:
                return 414
            if self._head_line:
                return 431
            line = exc.args[0] if exc.args else b""
            text = line if isinstance(line, bytes) else str(line).encode("latin-1", "replace")
            return 414 if text[:1] in (b"/", b"*") or text[:4] == b"http" else 431
        if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            return 431
        return 400


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(
            self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs
        )


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections have a head deadline and precise 4xx for oversize heads."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            header_timeout=self._header_timeout,
            **plain._kwargs,
        )
