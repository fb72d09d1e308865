"""Turn an exchange's events into the HTTP response, keeping the connection in sync.

The rules a client depends on (hop-by-hop headers dropped, a declared
Content-Length honoured, HEAD, 204 and 304 without a body, a cut connection
for an app that fails after its head went out) are `relay.py`'s, shared with
the ASGI adapter; this module carries them out on aiohttp (`_Sink`) and keeps
the fast paths that need aiohttp's socket: a worker's serialised RAW head
written as is, a worker writing to the client socket itself (a whole response
to the socket the REQUEST carried, or a large one after TAKEOVER), and
sendfile(2).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11

from wsgipool import exchange as ev
from wsgipool.clientsock import AGAIN, ANSWERED, whole_write_outcome
from wsgipool.deadlines import Sending, shut_down
from wsgipool.fastpath import SETTLE_GRACE
from wsgipool.logs.access import note_response
from wsgipool.logs.escape import escape
from wsgipool.relay import ClientGone, Head, file_pieces, relay
from wsgipool.wsgicall import SERVER_HEADER

__all__ = ["error_response", "write_response"]

logger = logging.getLogger("wsgipool.handler")

_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
#: How long a cancelled handler still waits for a direct write's DONE (for the access log).
_DONE_GRACE = 2.0


class _Response(web.StreamResponse):
    """A StreamResponse whose headers leave with the first body bytes: one write, not two.

    Header values are latin-1 (PEP 3333); aiohttp serialises the head as UTF-8,
    which would send é as two bytes, so a head that is not plain ASCII is
    serialised here.
    """

    _send_headers_immediately = False
    _latin1 = False
    #: Body bytes sent, for the access log (%(b)s); the head is not counted.
    body_sent: int | None = None

    async def _prepare_headers(self) -> None:
        # aiohttp would invent "Content-Type: application/octet-stream" for a body the
        # app sent without one; a worker does not, and neither does this path.
        typed = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        if not typed:
            self._headers.popall(hdrs.CONTENT_TYPE, None)
        writer = self._payload_writer
        if (
            self._keep_alive
            and self._length_check
            and writer is not None
            and writer.length is None
            and not getattr(writer, "chunked", False)
            and not self._must_be_empty_body
        ):
            # A body of unknown length without chunking (HTTP/1.0) ends with the
            # connection (RFC 9112 section 6.3): aiohttp decides so but keeps it open.
            self._keep_alive = False

    async def _write_headers(self) -> None:
        if not self._latin1:
            await super()._write_headers()
            return
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        version = request.version
        lines = [f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"]
        lines.extend(f"{name}: {value}" for name, value in self._headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer._headers_buf = head  # type: ignore[attr-defined]  # what write_headers() sets
        writer._headers_written = False  # type: ignore[attr-defined]
        if self._send_headers_immediately:
            writer.send_headers()


def _sent(response: _RawResponse | _WholeResponse | _WrittenResponse) -> None:
    on_sent = response.on_sent
    if on_sent is not None:
        response.on_sent = None
        on_sent()


def sent_later(response: web.StreamResponse, on_sent: Callable[[], None]) -> bool:
    """If aiohttp writes `response` after the handler returns, call `on_sent` when it is done.

    The send deadline watches such a response until its last byte is written.
    """
    if isinstance(response, _RawResponse | _WholeResponse) or (
        isinstance(response, _WrittenResponse) and response.rest
    ):
        response.on_sent = on_sent
        return True
    return False


class _RawResponse(web.StreamResponse):
    """A whole response whose head a worker serialised and the protocol validated.

    It is written as it is, in one write: none of aiohttp's header machinery
    runs, which is most of what a small response costs the event loop.  Used
    only without a router, where no on_response_prepare hook could want to
    change the headers.
    """

    on_sent: Callable[[], None] | None = None
    body_sent: int
    raw_head: memoryview

    def __init__(
        self, request: web.BaseRequest, code: int, head_size: int, data: memoryview
    ) -> None:
        super().__init__(status=code)
        self.body_sent = len(data) - head_size  # for the access log's %(b)s
        self.raw_head = data[:head_size]  # and its %({Name}o)s: atoms.response_header
        keep_alive = request.keep_alive
        version = request.version
        # aiohttp's rule for the Connection header, which the worker leaves to us.
        line = b""
        if version == (1, 1) and not keep_alive:
            line = b"Connection: close\r\n"
        elif version == (1, 0) and keep_alive:
            line = b"Connection: keep-alive\r\n"
        if line:
            cut = head_size - 2  # before the blank line that ends the head
            self._data: bytes | memoryview = b"".join((data[:cut], line, data[cut:]))
        else:
            self._data = data
        self._keep_alive = keep_alive

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        if self._payload_writer is None:
            self._req = request
            self._payload_writer = request._payload_writer
        return self._payload_writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None, "prepare() first"
        # Typed as bytes, but the writer hands it to transport.write(), which takes any
        # buffer: a view of the frame (immutable bytes) is written without a copy.
        try:
            await writer.write_eof(cast(bytes, self._data))
        finally:
            _sent(self)
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None


def _hand_over_socket(
    request: web.BaseRequest, exchange: ev.Exchange, sending: Sending | None
) -> bool:
    """Give the worker the client socket, if it can write to it directly; else decline."""
    backend: Any = exchange.backend
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if (
        transport is None
        or sock is None
        or transport.is_closing()
        or transport.get_write_buffer_size()
        or transport.get_extra_info("sslcontext") is not None
    ):
        backend.decline(exchange)
        return False
    timeout = sending.timeout if sending is not None else None
    handed: bool = backend.hand_socket(exchange, sock.fileno(), request.keep_alive, timeout)
    if handed and sending is not None:
        sending.direct = True
    return handed


async def _next_from_writer(request: web.BaseRequest, exchange: ev.Exchange) -> ev.Event:
    """The next event of a worker that holds the client socket.

    If the client read the whole response and closed before DONE reached us,
    aiohttp cancels this handler: then the worker is told to stop (if it has not
    begun, it writes nothing) and DONE is still waited for briefly, so that the
    request is counted, and logged, as what it was.
    """
    try:
        return await exchange.next()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        transport = request.transport
        client_gone = transport is None or transport.is_closing()
        if task is None or not client_gone or (exchange.finished and not exchange.peek()):
            raise  # a cancel for another reason (shutdown): not ours to delay
        task.uncancel()
        if not exchange.finished:
            exchange.backend.cancel(exchange)
        try:
            event = await asyncio.wait_for(exchange.next(), _DONE_GRACE)
        except TimeoutError:
            raise asyncio.CancelledError from None
        if event[0] != ev.DONE:
            raise asyncio.CancelledError from None  # it wrote nothing: abandoned
        return event


async def _written_by_worker(request: web.BaseRequest, exchange: ev.Exchange) -> web.StreamResponse:
    """Wait for the worker that writes the response itself; cut the connection if it fails."""
    kind, value = await _next_from_writer(request, exchange)
    if kind == ev.DONE:
        written, status, complete, body, _rest = value  # no rest after TAKEOVER (guard.py)
        response = _WrittenResponse(status, written, complete and request.keep_alive)
        response.body_sent = body
        return response
    return _cut(request, value[1])


async def _whole_written(
    request: web.BaseRequest, exchange: ev.Exchange, event: ev.Event
) -> web.StreamResponse | None:
    """What became of a request whose REQUEST carried the client socket (worker/whole.py).

    The response the worker wrote (DONE, perhaps with a rest to write here), a cut
    connection if it began and did not finish, or None: it wrote nothing, and
    `event` is answered as any other.
    """
    if exchange.client_released:
        return None  # it answered with frames, or died before PROGRESS
    kind, value = event
    if kind == ev.DONE:
        # (Its body count is for an access line: requests sent the socket have none.)
        written, status, complete, _body, rest = value
        return _WrittenResponse(status, written, complete and request.keep_alive, rest)
    if not exchange.client_written:
        # Our own answer (a timeout) while the worker holds the socket. It was told to
        # stop (CANCEL), and once it has read that it writes nothing: give it the time
        # to, then answer, unless it began writing after all.
        await asyncio.sleep(SETTLE_GRACE)
        if not exchange.client_written:
            return None
    # It began a whole write and did not say DONE: it died (the socket's byte count
    # tells how far it got), or broke the protocol.
    intent = exchange.intent
    if exchange.lost_to and intent is not None:
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        outcome = whole_write_outcome(sock.fileno() if sock is not None else -1, intent)
        if outcome == AGAIN:
            return None
        if outcome == ANSWERED:  # with the keep-alive its head said (hand_socket's)
            return _WrittenResponse(intent[2], intent[1], request.keep_alive)
    return _cut(request, value[1] if kind == ev.ERROR else "the worker was writing it")


def _cut(request: web.BaseRequest, reason: str) -> web.StreamResponse:
    """End a request whose worker may have written part of its response: shut the socket
    down (the worker's copy too), so the client sees a cut, never a mix."""
    logger.warning("response to %s cut: %s", _label(request), escape(reason))
    transport = request.transport
    if transport is not None and not transport.is_closing():
        shut_down(transport.get_extra_info("socket"))
    _abort(request)
    return _WrittenResponse(500, 0, False)


class _WrittenResponse(web.StreamResponse):
    """A response a worker wrote to the client socket itself; at most its `rest`, what
    the socket did not take at once (worker/whole.py), is left to write here."""

    #: Body bytes the worker wrote, for the access log (%(b)s).
    body_sent: int | None = None
    on_sent: Callable[[], None] | None = None

    def __init__(self, status: int, written: int, keep_alive: bool, rest: bytes = b"") -> None:
        super().__init__(status=status)
        self._keep_alive = keep_alive
        self._body_length = written + len(rest)
        self.rest = rest

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.rest and self._payload_writer is None and not self._eof_sent:
            self._req = request
            self._payload_writer = request._payload_writer
        return self._payload_writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        if writer is not None:  # the rest, as a RAW answer is written (under the send deadline)
            try:
                await writer.write_eof(self.rest)
            finally:
                _sent(self)
            self._req = None
            self._payload_writer = None
        self._eof_sent = True


class _WholeResponse(web.Response, _Response):
    """A response with its whole body, sent with its head in one write (latin-1 aware)."""

    on_sent: Callable[[], None] | None = None

    async def write_eof(self, data: bytes = b"") -> None:
        try:
            await super().write_eof(data)
        finally:
            _sent(self)


class _ErrorResponse(web.Response):
    """A response wsgipool makes itself: ``Server: wsgipool``, and an HTTP/1.x status line.

    aiohttp echoes the request's version in the status line; a request in a version
    we do not speak (the 505) is answered in HTTP/1.1, as is a request the parser
    could not read (`version`, since aiohttp's placeholder for it says HTTP/1.0).
    """

    version: HttpVersion | None = None

    async def _write_headers(self) -> None:
        request = self._req
        writer = self._payload_writer
        assert request is not None and writer is not None
        version = self.version or request.version
        if version not in (HttpVersion11, HttpVersion10):
            version = HttpVersion11
        if not self._keep_alive and version == HttpVersion11:
            self._headers[hdrs.CONNECTION] = "close"
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        await writer.write_headers(status_line, self._headers)


def error_response(
    status: int,
    *,
    close: bool = False,
    retry_after: int | None = None,
    version: HttpVersion | None = None,
) -> web.Response:
    """wsgipool's own answer `status`: a one-line text body, ``Server: wsgipool``.

    `version` fixes the status line's version (else the request's, if 1.0 or 1.1).
    """
    reason = _REASONS.get(status, "Error")
    response = _ErrorResponse(
        status=status,
        text=f"{status} {reason}\n",
        headers={"Content-Type": "text/plain", "Server": SERVER_HEADER},
    )
    response.version = version
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if close:
        response.force_close()
    return response


async def write_response(
    request: web.BaseRequest, exchange: ev.Exchange, sending: Sending | None = None
) -> web.StreamResponse:
    """The response to `request` from the exchange's events; `sending` is its send deadline."""
    try:
        return await _write_response(request, exchange, sending)
    except ConnectionError:
        # The client left while its response was being written (a write can run
        # before aiohttp's cancellation arrives): not an error of the server's.
        exchange.close()
        _abort(request)
        return _WrittenResponse(499, 0, False)


async def _write_response(
    request: web.BaseRequest, exchange: ev.Exchange, sending: Sending | None
) -> web.StreamResponse:
    if exchange.client_sent:  # the worker may write a whole response to the socket itself
        event = await _next_from_writer(request, exchange)
        written = await _whole_written(request, exchange, event)
        if written is not None:
            return written
    else:
        event = await exchange.next()
    kind = event[0]
    # The fast paths that need aiohttp's socket; everything else is relay.py's rules.
    if kind == ev.RAW:
        return _RawResponse(request, *event[1])
    if kind == ev.TAKEOVER:
        if _hand_over_socket(request, exchange, sending):
            return await _written_by_worker(request, exchange)
        event = await exchange.next()
    sink = _Sink(request, sending)
    try:
        await relay(exchange, sink, event, request.method == "HEAD")
    except ClientGone:
        exchange.close()
    response = sink.response
    assert response is not None
    return response


class _Sink:
    """relay.py's steps as aiohttp responses on `request`'s connection.

    A whole response is returned unwritten (aiohttp writes it, head and body in
    one write, after the handler returns); a streamed one is prepared with its
    first body bytes; files go out with sendfile(2) where the socket allows.
    """

    __slots__ = ("prepared", "request", "response", "sending", "written")

    names_server = True

    def __init__(self, request: web.BaseRequest, sending: Sending | None) -> None:
        self.request = request
        self.sending = sending
        self.response: web.StreamResponse | None = None
        self.prepared = False
        self.written = 0

    def label(self) -> str:
        return _label(self.request)

    async def error(self, status: int) -> None:
        self.response = error_response(status)

    async def whole(self, head: Head, body: bytes) -> None:
        response = _WholeResponse(
            status=head.status, reason=head.reason, headers=head.headers, body=body
        )
        response._latin1 = head.latin1
        length = head.length
        if length is not None and length != len(body):  # HEAD: the length GET would have
            response.headers[hdrs.CONTENT_LENGTH] = str(length)
        self.response = response

    async def start(self, head: Head) -> None:
        response = _Response(status=head.status, reason=head.reason, headers=head.headers)
        response._latin1 = head.latin1
        if head.length is not None:
            response.headers[hdrs.CONTENT_LENGTH] = str(head.length)
        self.response = response

    async def _prepare(self) -> web.StreamResponse:
        response = self.response
        assert response is not None
        if not self.prepared:
            self.prepared = True
            note_response(self.request, response)  # the access line, if the client leaves
            await response.prepare(self.request)
        return response

    async def write(self, data: bytes) -> None:
        response = await self._prepare()
        await response.write(data)
        self.written += len(data)
        _set_body_sent(response, self.written)

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        request = self.request
        response = await self._prepare()
        progress = _Progress()
        try:
            await _send_file(request, response, fd, offset, count, self.sending, progress)
        except ConnectionError as exc:  # the client left: its business, one line
            self.written += progress.sent
            logger.info(
                "%s: client went away after %d bytes of a file response (%s)",
                _label(request),
                self.written,
                exc.strerror or type(exc).__name__,
            )
            _abort(request)
            _set_body_sent(response, self.written)
            raise ClientGone from exc
        except (OSError, OverflowError) as exc:
            # The worker's descriptor cannot be sent (EINVAL: a /proc file; an offset
            # the kernel refuses): the response is cut, as for any broken body.
            self.written += progress.sent
            logger.warning(
                "%s: response cut after %d bytes: the worker's file cannot be sent (%s)",
                _label(request),
                self.written,
                escape(getattr(exc, "strerror", None) or type(exc).__name__),
            )
            _abort(request)
            _set_body_sent(response, self.written)
            raise ClientGone from exc
        except asyncio.CancelledError:  # it left while the file waited for the socket
            self.written += progress.sent
            _set_body_sent(response, self.written)  # for the access line of a request cut short
            transport = request.transport
            if transport is None or transport.is_closing():  # the same line as above
                logger.info(
                    "%s: client went away after %d bytes of a file response (closed)",
                    _label(request),
                    self.written,
                )
            raise
        self.written += progress.sent
        return progress.sent

    async def finish(self) -> None:
        response = await self._prepare()
        _set_body_sent(response, self.written)
        await response.write_eof()

    async def cut(self, reason: str) -> None:
        request = self.request
        logger.warning("%s: %s", _label(request), escape(reason))
        response = await self._prepare()
        _set_body_sent(response, self.written)
        writer = response._payload_writer
        if writer is not None:
            writer.send_headers()  # the head at least, then the connection ends
        _abort(request)


def _set_body_sent(response: web.StreamResponse, count: int) -> None:
    """Body bytes sent, for the access log's %(b)s."""
    if isinstance(response, _Response):
        response.body_sent = count


def _label(request: web.BaseRequest) -> str:
    """ "METHOD /path" of a request for a log line, escaped: one request, one line."""
    return f"{escape(request.method)} {escape(request.path)}"


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.close()


class _Progress:
    """Bytes of a file sent so far: what the access line counts if the client leaves."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


async def _send_file(
    request: web.BaseRequest,
    response: web.StreamResponse,
    fd: int,
    offset: int,
    count: int,
    sending: Sending | None,
    progress: _Progress,
) -> None:
    """sendfile() the descriptor straight to the client socket; the fd stays the caller's."""
    writer = response._payload_writer
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    plain = transport.get_extra_info("sslcontext") is None
    if writer is not None and not getattr(writer, "chunked", False) and plain:
        writer.send_headers()
        await writer.drain()
        await _sendfile_to_socket(transport, fd, offset, count, sending, progress)
        writer.output_size += progress.sent
        return
    await _send_file_fallback(response, fd, offset, count, progress)


async def _sendfile_to_socket(
    transport: asyncio.BaseTransport,
    in_fd: int,
    offset: int,
    count: int,
    sending: Sending | None,
    progress: _Progress,
) -> None:
    """sendfile(2) straight to the client socket, on any loop (uvloop has no loop.sendfile).

    Done here rather than by loop.sendfile so that the send deadline sees its
    progress and can wake it. The transport's own descriptor cannot be watched
    for writability (the loop refuses a second watcher on it), so a duplicate
    of it is.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    loop = asyncio.get_running_loop()
    delay = 0.001
    while transport.get_write_buffer_size():  # type: ignore[attr-defined]  # headers first
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    if transport.is_closing():  # cut by the send deadline while the head waited
        raise ConnectionResetError("connection lost")
    out_fd = os.dup(sock.fileno())
    sent = 0
    try:
        while sent < count:
            if transport.is_closing():
                raise ConnectionResetError("connection lost")
            try:
                written = os.sendfile(out_fd, in_fd, offset + sent, count - sent)
            except BlockingIOError:
                waiter: asyncio.Future[None] = loop.create_future()
                loop.add_writer(out_fd, _set_result, waiter)
                if sending is not None:  # waiting for the client: the send deadline runs
                    sending.filing = True
                    sending.waiter = waiter
                try:
                    await waiter
                finally:
                    loop.remove_writer(out_fd)
                    if sending is not None:
                        sending.filing = False
                        sending.waiter = None
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise ConnectionResetError("connection lost") from None
            if written == 0:  # the file is shorter than announced
                break
            sent += written
            progress.sent = sent
            if sending is not None:
                sending.sent += written
    finally:
        os.close(out_fd)


def _set_result(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _send_file_fallback(
    response: web.StreamResponse, fd: int, offset: int, count: int, progress: _Progress
) -> None:
    async for chunk in file_pieces(fd, offset, count):
        await response.write(chunk)
        progress.sent += len(chunk)
