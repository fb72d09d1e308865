"""Deadlines for clients that stall: a response nobody reads, a body that stops arriving.

Without them a client holds what it was given for as long as it likes: a
reader that takes no bytes keeps the app's thread waiting for credit (and
`--timeout` does not fire, since the app is not the one that is silent), and
an upload that stops keeps its connection, handler and temporary file.

`SendWatch` is one per handler, one timer sweeping the requests being answered
(like the head deadline in limits.py, not a timer per write): a request whose
client has bytes waiting for it (in the transport's buffer, or a sendfile
waiting for the socket) and took none of them for `timeout` seconds is cut.
The app is stopped (its iterable's close() is called), the connection is reset
(SO_LINGER 0: the kernel drops what it still held for the client), and a
sendfile waiting for the socket is woken.  A response the worker writes to the
client itself enforces the same deadline in the worker (worker/direct.py);
the SOCKET frame carries it.  The main process still watches the kernel's
send queue of such a response, and cuts it a second later if the worker did
not: a worker is not trusted to stop (shutdown() wakes it, since its
duplicate of the socket would keep the connection open).

`BodyDeadline` bounds the silence of a request body being read: it rides on
one `asyncio.timeout` per body, moved forward as bytes arrive (at most a few
times a second), and is paused while a batch is written to the temporary file
so that a cancelled write never races the file's close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from wsgipool.clientsock import queued, reset_on_close

if TYPE_CHECKING:
    from aiohttp import web

    from wsgipool import exchange as ev

__all__ = ["BodyDeadline", "BodyTimeout", "SendWatch", "Sending"]

logger = logging.getLogger("wsgipool.handler")

#: How much longer than the worker the main process waits before it cuts a direct write.
_WORKER_GRACE = 1.0


def sweep_interval(timeout: float) -> float:
    """How often a deadline of `timeout` seconds is checked: a quarter of it, 50 ms to 1 s."""
    return min(1.0, max(0.05, timeout / 4))


def shut_down(sock: Any) -> None:
    """shutdown(SHUT_RDWR) of the connection behind `sock`, through a duplicate of it.

    uvloop's transport sockets refuse shutdown() (TypeError); the connection is
    the same through any descriptor of it.
    """
    with contextlib.suppress(OSError, AttributeError, ValueError):
        duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


class Sending:
    """One request being answered, as the send deadline sees it."""

    __slots__ = (
        "direct",
        "exchange",
        "filing",
        "mark",
        "request",
        "sent",
        "since",
        "timeout",
        "waiter",
        "watch",
    )

    def __init__(self, watch: SendWatch, request: web.BaseRequest, exchange: ev.Exchange) -> None:
        self.watch = watch
        self.request = request
        self.exchange = exchange
        self.timeout = watch.timeout
        #: Bytes sendfile() put in the socket (aiohttp's writer counts the rest).
        self.sent = 0
        #: A sendfile is waiting for the socket to take more.
        self.filing = False
        #: What that sendfile waits on; a cut fails it.
        self.waiter: asyncio.Future[None] | None = None
        self.mark: tuple[int, int, int, int] | None = None
        self.since = 0.0
        #: A worker writes the response to the socket itself.
        self.direct = False

    def release(self) -> None:
        """The response is written (or failed): stop watching it."""
        self.watch.release(self)


class SendWatch:
    """Cuts clients that accept no response bytes for `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._active: set[Sending] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._interval = sweep_interval(timeout)

    def watch(self, request: web.BaseRequest, exchange: ev.Exchange) -> Sending:
        sending = Sending(self, request, exchange)
        self._active.add(sending)
        if self._timer is None:
            loop = exchange.loop
            self._timer = loop.call_later(self._interval, self._sweep, loop)
        return sending

    def release(self, sending: Sending) -> None:
        self._active.discard(sending)

    def __len__(self) -> int:
        return len(self._active)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for sending in list(self._active):
            request = sending.request
            transport = request.transport
            if transport is None or transport.is_closing():
                self._active.discard(sending)  # the client is gone: nothing to wait for
                continue
            sock = transport.get_extra_info("socket")
            pending = transport.get_write_buffer_size()
            limit = self.timeout
            if sending.direct:  # only the kernel's queue shows what the worker wrote
                backlog = queued(sock)
                waiting = backlog > 0
                limit += _WORKER_GRACE  # the worker cuts first; this is for one that does not
            else:
                backlog = -1
                waiting = pending > 0 or sending.filing
            if not waiting:
                sending.mark = None  # nothing waits for the client (the app may be thinking)
                continue
            if backlog < 0:
                backlog = queued(sock)
            writer = request.writer
            written = writer.output_size if writer is not None else 0
            mark = (pending, written, sending.sent, backlog)
            if mark != sending.mark:
                sending.mark = mark
                sending.since = now
            elif now - sending.since >= limit:
                self._active.discard(sending)
                self._cut(sending, transport)
        if self._active:
            self._timer = loop.call_later(self._interval, self._sweep, loop)

    def _cut(self, sending: Sending, transport: asyncio.Transport) -> None:
        logger.warning(
            "client %s accepted no response bytes for %gs (--send-timeout); connection reset",
            sending.request.remote,
            self.timeout,
        )
        sending.exchange.abort(499, "the client accepted no response bytes")
        sock = transport.get_extra_info("socket")
        reset_on_close(sock)
        if sending.direct:  # wake the worker: its duplicate keeps the connection open
            shut_down(sock)
        transport.abort()
        waiter = sending.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("send timeout"))


class BodyTimeout(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"the request body made no progress for {timeout:g}s")
        self.timeout = timeout


class BodyDeadline:
    """The deadline of one body being read; `progress()` after each chunk.

    The deadline moves at most every `sweep_interval(timeout)`, so the body is
    cut between ``timeout - interval`` and ``timeout`` after its last bytes.
    """

    __slots__ = ("_loop", "_moved", "_scope", "_step", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._moved = self._loop.time()
        self._step = sweep_interval(timeout)
        self._scope = asyncio.timeout_at(self._moved + timeout)

    @property
    def scope(self) -> asyncio.Timeout:
        return self._scope

    def progress(self) -> None:
        now = self._loop.time()
        if now - self._moved >= self._step and not self._scope.expired():
            self._moved = now
            self._scope.reschedule(now + self.timeout)

    def pause(self) -> None:
        """Nothing is waited for from the client (our own disk write): no deadline."""
        if not self._scope.expired():
            self._scope.reschedule(None)

    def resume(self) -> None:
        self._moved = now = self._loop.time()
        if not self._scope.expired():
            self._scope.reschedule(now + self.timeout)
