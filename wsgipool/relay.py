"""An exchange's events as an HTTP response: the rules, for every frontend.

The aiohttp handler (`response.py`) and the ASGI adapter (`asgi.py`) both turn
the events of an `Exchange` into a response; what the client may rely on is
decided here once, and each edge only carries out the steps on its own server
through a `Sink`:

- the app's headers: hop-by-hop ones dropped, Content-Length read (two that
  disagree: 500), ``Server: wsgipool`` added where the edge names the server;
- a declared Content-Length is honoured: a longer body is cut at it (the app
  is stopped), a shorter one ends the connection so the client cannot take
  the next response for the rest of this one;
- HEAD, 204 and 304 carry no body; HEAD announces the length GET would have
  (a whole body's, or a file's), and the app is stopped at once;
- an error before the head (a dead worker: 502, a timeout: 504) is
  wsgipool's own response; an error after it is a cut connection, never a
  second response;
- the body is written with backpressure: credit goes back to the app only
  once the sink has taken the bytes.

Fast paths that need one server's socket (a worker's serialised RAW head, a
worker writing to the client socket, sendfile) stay in that edge: the edge
takes the first event itself and hands the rest to `relay`.  Nothing here
imports aiohttp or knows ASGI.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Protocol

from wsgipool import exchange as ev
from wsgipool.protocol import data_cost
from wsgipool.wsgicall import HOP_BY_HOP, SERVER_HEADER

__all__ = ["CREDIT_BATCH", "GONE", "ClientGone", "Head", "Sink", "clean_headers", "relay"]

logger = logging.getLogger("wsgipool.handler")

#: Response bytes written to the client before credit for them goes back to the app.
CREDIT_BATCH = 64 * 1024
#: The ERROR status of an exchange whose client left: nobody to answer.
GONE = 499


class ClientGone(Exception):
    """Raised by a sink: the client left, the response is over (nothing more to write)."""


class Head:
    """The response's head as the edge must send it.

    `headers` are the app's, cleaned (no hop-by-hop ones, no Content-Length);
    `length` is the Content-Length to declare (None: none, the body's end is
    the edge's business: chunked, or the connection's end); `latin1` says a
    value (or the reason) is not plain ASCII.
    """

    __slots__ = ("headers", "latin1", "length", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        length: int | None,
        latin1: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length
        self.latin1 = latin1


class Sink(Protocol):
    """One frontend's way of sending a response; `relay` calls it in this order:
    `error` alone, or `whole` alone, or `start` then `write`/`send_file` any
    number of times then `finish` or `cut`.

    A sink that cannot go on because the client left raises `ClientGone`.
    """

    #: Whether ``Server: wsgipool`` is added to a response whose app set no Server
    #: header (an ASGI server names itself).
    names_server: bool

    def label(self) -> str:
        """ "METHOD /path" of the request, escaped, for a log line."""
        ...

    async def error(self, status: int) -> None:
        """Nothing was sent: answer wsgipool's own `status` (499: the client left)."""
        ...

    async def whole(self, head: Head, body: bytes) -> None:
        """The whole response: the head and `body`, complete (b"" for HEAD, 204, 304)."""
        ...

    async def start(self, head: Head) -> None:
        """The head, which may wait to leave with the first body bytes."""
        ...

    async def write(self, data: bytes) -> None:
        """Body bytes; returns once the frontend has taken them (backpressure)."""
        ...

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        """`count` bytes of the descriptor from `offset`; bytes sent (fewer: the file
        was shorter). The descriptor stays the caller's."""
        ...

    async def finish(self) -> None:
        """The body is complete."""
        ...

    async def cut(self, reason: str) -> None:
        """The response cannot be completed: end the connection after what was sent."""
        ...


def clean_headers(
    headers: list[tuple[str, str]], add_server: bool = True
) -> tuple[list[tuple[str, str]], int | None, bool]:
    """The app's headers without hop-by-hop ones and Content-Length, the length declared,
    and whether a value is not plain ASCII (then the head is written as latin-1).

    ``Server: wsgipool`` is appended when the app set no Server header and
    `add_server`.  Two Content-Length headers that disagree raise ValueError.
    """
    out: list[tuple[str, str]] = []
    length: int | None = None
    latin1 = False
    server = False
    for name, value in headers:
        if not value.isascii():
            latin1 = True
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == "content-length":
            declared = int(value.strip())
            if length is not None and declared != length:
                raise ValueError(f"conflicting Content-Length headers: {length} and {declared}")
            length = declared
            continue
        if lower == "server":
            server = True
        out.append((name, value))
    if add_server and not server:
        out.append(("Server", SERVER_HEADER))
    return out, length, latin1


def _short(length: int, got: int) -> str:
    return f"app declared Content-Length {length} but sent {got} bytes; closing the connection"


async def relay(exchange: ev.Exchange, sink: Sink, event: ev.Event, head_only: bool) -> None:
    """Send the response of `exchange` through `sink`, from its first `event` on.

    `event` is the exchange's first event that is START, RESPONSE or ERROR
    (the edge has dealt with RAW and TAKEOVER). `head_only`: the request's
    method is HEAD. The exchange is closed when the response no longer needs
    the app (the edge closes it in any case at the end).
    """
    kind, value = event
    if kind == ev.ERROR:
        await sink.error(value[0])
        return
    try:
        headers, length, latin1 = clean_headers(value[2], sink.names_server)
    except ValueError as exc:
        logger.error("%s: %s", sink.label(), exc)
        exchange.close()
        await sink.error(500)
        return
    status: int = value[0]
    reason: str = value[1]
    if not latin1 and not reason.isascii():
        latin1 = True
    no_body = head_only or status in (204, 304)
    if kind == ev.RESPONSE:
        body: bytes = value[3]
        size = len(body)
        if length is None:
            if no_body and not size and status not in (204, 304):
                # HEAD with an empty body and no length (werkzeug's HEAD of a streamed or
                # file-object response): GET's length is unknown, so none is announced.
                await sink.start(Head(status, reason, headers, None, latin1))
                await sink.finish()
                return
            length = size
        elif size > length:
            body = body[:length]
        elif size < length and not no_body:
            await sink.start(Head(status, reason, headers, length, latin1))
            if body:
                await sink.write(body)
            await sink.cut(_short(length, size))
            return
        if no_body:
            body = b""
            if status in (204, 304):
                length = None
        await sink.whole(Head(status, reason, headers, length, latin1), body)
        return
    head = Head(status, reason, headers, length, latin1)
    if no_body:
        if length is None:  # a file the worker sends whole: HEAD gets the length GET would
            upcoming = exchange.peek()
            if upcoming is not None and upcoming[0] == ev.FILE and upcoming[1][2] is not None:
                head.length = upcoming[1][2]
        if status in (204, 304):
            head.length = None
        exchange.close()  # nothing of the body will be sent: stop producing it
        await sink.start(head)
        await sink.finish()
        return
    await _stream(exchange, sink, head)


async def _stream(exchange: ev.Exchange, sink: Sink, head: Head) -> None:
    length = head.length
    started = False
    written = 0
    owed = 0
    while True:
        kind, value = await exchange.next()
        if kind == ev.DATA:
            cost = data_cost(len(value))  # what the worker spent on it
            if length is not None:
                room = length - written
                if room <= 0:
                    continue
                if len(value) > room:
                    value = value[:room]
            if not started:
                await sink.start(head)
                started = True
            await sink.write(value)
            written += len(value)
            owed += cost
            if owed >= CREDIT_BATCH:  # taken by the client side: the app may send that much more
                exchange.grant(owed)
                owed = 0
            if length is not None and written >= length:
                exchange.close()  # the declared length is reached: the rest is cut
                break
        elif kind == ev.FILE:
            fd, offset, count = value
            try:
                if length is not None:
                    room = max(0, length - written)
                    count = room if count is None else min(count, room)
                elif not started and count is not None:
                    head.length = length = count
                if not started:
                    await sink.start(head)
                    started = True
                if count is None:
                    count = max(os.fstat(fd).st_size - offset, 0)
                if count:
                    written += await sink.send_file(fd, offset, count)
            finally:
                os.close(fd)
        elif kind == ev.END:
            break
        else:  # ERROR after the head was decided: the client must see a broken response
            if not started:
                await sink.error(value[0])
                return
            await sink.cut(f"cut: {value[1]}")
            return
    if not started:
        await sink.start(head)
    if length is not None and written < length:
        await sink.cut(_short(length, written))
        return
    await sink.finish()


#: How much of a file a sink without sendfile(2) reads and writes at a time.
FILE_PIECE = 256 * 1024


async def file_pieces(
    fd: int, offset: int, count: int, piece: int = FILE_PIECE
) -> AsyncIterator[bytes]:
    """Up to `count` bytes of `fd` from `offset`, `piece` bytes at a time, each read in
    a thread (off the loop): for a sink that cannot sendfile(2) (TLS, ASGI)."""
    loop = asyncio.get_running_loop()
    done = 0
    while done < count:
        size = min(piece, count - done)
        data = await loop.run_in_executor(None, os.pread, fd, size, offset + done)
        if not data:
            return
        done += len(data)
        yield data
