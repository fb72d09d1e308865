"""One request in flight, as the handler sees it, whichever executor runs the app.

An executor feeds events into an `Exchange` (from a worker's frames, or from an
app thread through the event loop); the handler takes them out in order and
turns them into the HTTP response.  Credit and cancellation flow back through
the exchange's `Backend`.  Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = [
    "DATA",
    "DONE",
    "END",
    "ERROR",
    "FILE",
    "RAW",
    "RESPONSE",
    "START",
    "TAKEOVER",
    "Backend",
    "Exchange",
    "Unavailable",
]

#: Bytes of response a worker or app thread may send ahead of the client, per request.
RESPONSE_WINDOW: Final = 1024 * 1024

# Event kinds.  START: (code, reason, headers); DATA: bytes;
# FILE: (fd, offset, count or None); END: None; ERROR: (http status, message);
# RESPONSE: (code, reason, headers, body), a whole response at once;
# RAW: (code, head size, head and body bytes), a whole response, head serialised;
# TAKEOVER: None, the worker asks for the client socket to write a large response;
# DONE: (written, status, complete, body bytes, rest to write): the worker wrote it.
# Kinds from END on are final: nothing follows them.
START: Final = 1
DATA: Final = 2
FILE: Final = 3
END: Final = 4
TAKEOVER: Final = 0
ERROR: Final = 5
RESPONSE: Final = 6
RAW: Final = 7
DONE: Final = 8

Event = tuple[int, Any]


class Unavailable(Exception):
    """No worker thread became free in time, or the waiting queue is full: 503."""


class Backend(Protocol):
    """What an exchange needs from whatever runs its app."""

    def grant(self, exchange: Exchange, amount: int) -> None: ...

    def cancel(self, exchange: Exchange) -> None: ...


class Exchange:
    __slots__ = (
        "_events",
        "_listener",
        "_waiter",
        "backend",
        "client_released",
        "client_sent",
        "client_written",
        "closed",
        "facts",
        "finished",
        "granted",
        "intent",
        "last_progress",
        "loop",
        "lost_to",
        "owner",
        "received",
        "rid",
        "rss_change",
        "started",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, backend: Backend, rid: int = 0) -> None:
        self.loop = loop
        self.backend = backend
        self.rid = rid
        self._events: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # Told of each event as it arrives, instead of a waiter (fastpath.py).
        self._listener: Callable[[Exchange], None] | None = None
        #: The executor has said END or ERROR: nothing more will come.
        self.finished = False
        #: The handler is done with it (response sent, or client gone).
        self.closed = False
        #: Whatever runs the app (a worker handle, or the thread output).
        self.owner: Any = None
        self.started = loop.time()
        self.last_progress = self.started
        #: Response bytes received from, and credit granted to, a worker (flow control).
        self.received = 0
        self.granted = 0
        #: The request's RequestFacts (for log lines and the RAW frame's HEAD rule).
        self.facts: Any = None
        #: The worker's RSS change over the request in KiB, when it measured it (access log).
        self.rss_change: int | None = None
        #: The pid of a worker that died with this request before sending a frame of
        #: its response (0: none); the ERROR that follows may be retried (retry.py).
        self.lost_to = 0
        #: The REQUEST carried the client socket: the worker may write a whole response
        #: to it itself (worker/whole.py), reported with PROGRESS and DONE.
        self.client_sent = False
        #: The REQUEST carried the client socket (fastpath.py), and the worker let go
        #: of it without writing: it answered with a frame, or it died first.
        self.client_released = False
        #: The worker said it writes the response to the client socket itself (PROGRESS).
        self.client_written = False
        #: What that worker said it was about to write (count before, size, status).
        self.intent: tuple[int, int, int] | None = None

    # -- executor side ---------------------------------------------------------

    def feed(self, kind: int, value: Any = None) -> None:
        if self.finished or self.closed:
            if kind >= END:
                self.finished = True
            if kind == FILE:  # a descriptor nobody will use
                os.close(value[0])
            return
        if kind >= END:
            self.finished = True
        self.last_progress = self.loop.time()
        self._events.append((kind, value))
        listener = self._listener
        if listener is not None:
            listener(self)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed_many(self, events: list[Event]) -> None:
        for kind, value in events:
            self.feed(kind, value)

    # -- handler side ----------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """The handler is waiting for the app (not busy writing to the client)."""
        return self._waiter is not None or self._listener is not None

    def listen(self, listener: Callable[[Exchange], None] | None) -> None:
        """Have `listener(exchange)` called as each event arrives (None: stop); it
        runs on the loop, inside the executor's feed, and takes events with `take`."""
        self._listener = listener

    def take(self) -> Event:
        """The next event, which must be here (see `peek`)."""
        return self._events.popleft()

    async def next(self) -> Event:
        if not self._events:
            await self.ready()
        return self._events.popleft()

    async def ready(self) -> None:
        """Wait until an event is here, without taking it."""
        events = self._events
        while not events:
            # The app's silence counts from here: before, the handler was the bottleneck.
            self.last_progress = self.loop.time()
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def peek(self) -> Event | None:
        """The next event if it is already here, without taking it."""
        return self._events[0] if self._events else None

    def last(self) -> Event | None:
        """The latest event not yet taken (the final one once `finished`)."""
        return self._events[-1] if self._events else None

    def grant(self, amount: int) -> None:
        if not self.finished:
            self.granted += amount
            self.backend.grant(self, amount)

    def abort(self, status: int, message: str) -> None:
        """Give up on the app (timeout, client gone): stop it and wake the handler."""
        if self.finished:
            return
        self.backend.cancel(self)
        self.feed(ERROR, (status, message))

    def close(self) -> None:
        """The handler is done: stop the app if it is still producing, drop leftovers."""
        if self.closed:
            return
        self.closed = True
        if not self.finished:
            self.backend.cancel(self)
        while self._events:
            kind, value = self._events.popleft()
            if kind == FILE:
                os.close(value[0])
