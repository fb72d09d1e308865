"""Which worker gets a request, and the queue of requests waiting for one.

A request goes to the ready worker with the most free threads; nothing is sent
to a worker without a free thread.  When every thread is busy the request
waits in a bounded FIFO; a full queue or a wait past the timeout is a 503.
A slot is taken when a request is sent and given back when the worker says
the request ended (END or ERROR) or when the worker dies.

Anything with ``threads`` and ``busy`` can hold the slots: a worker's handle in
process mode, the one thread pool (`ThreadSlots`) with ``--workers 0``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, Protocol, TypeVar

__all__ = ["Dispatcher", "QueueFull", "QueueTimeout", "Slots", "ThreadSlots"]


class Slots(Protocol):
    """Where requests run: `threads` of them at once, `busy` taken now."""

    threads: int
    busy: int


W = TypeVar("W", bound=Slots)


class ThreadSlots:
    """The app threads of thread mode, as one place with `threads` slots."""

    __slots__ = ("busy", "threads")

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.busy = 0


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class Dispatcher(Generic[W]):
    def __init__(self, queue_size: int, queue_timeout: float) -> None:
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._ready: list[W] = []
        # (deadline, future) in arrival order, so also in deadline order.
        self._waiters: deque[tuple[float, asyncio.Future[W]]] = deque()
        self._live = 0  # waiters not yet served, expired or cancelled
        self._sweep: asyncio.TimerHandle | None = None

    # -- the pool ------------------------------------------------------------------

    def add(self, worker: W) -> None:
        """A worker is ready for requests."""
        if worker not in self._ready:
            self._ready.append(worker)
        self._wake()

    def remove(self, worker: W) -> None:
        """A worker takes no new requests (draining, dead)."""
        if worker in self._ready:
            self._ready.remove(worker)

    @property
    def workers(self) -> list[W]:
        return list(self._ready)

    @property
    def waiting(self) -> int:
        return self._live

    # -- slots ---------------------------------------------------------------------

    def _pick(self) -> W | None:
        best: W | None = None
        best_free = 0
        for worker in self._ready:
            free = worker.threads - worker.busy
            if free > best_free:
                best, best_free = worker, free
        return best

    def try_acquire(self) -> W | None:
        """A worker with a slot taken, if one is free and nobody is queued before us."""
        if self._live:
            return None
        worker = self._pick()
        if worker is not None:
            worker.busy += 1
        return worker

    async def acquire(self) -> W:
        """A worker with a slot taken for one request; QueueFull or QueueTimeout if none."""
        worker = self.try_acquire()
        if worker is not None:
            return worker
        future = self.enqueue(asyncio.get_running_loop())
        try:
            return await future
        except asyncio.CancelledError:
            self.withdraw(future)
            raise

    def enqueue(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[W]:
        """A place at the end of the queue, without waiting: the future gets a worker
        with a slot taken, or QueueTimeout; QueueFull now if the queue is full."""
        if self._live >= self.queue_size:
            raise QueueFull(f"{self._live} requests already waiting for a worker")
        future: asyncio.Future[W] = loop.create_future()
        self._waiters.append((loop.time() + self.queue_timeout, future))
        self._live += 1
        if self._sweep is None:
            self._sweep = loop.call_at(self._waiters[0][0], self._expire_due)
        return future

    def withdraw(self, future: asyncio.Future[W]) -> None:
        """The waiter of `future` (from `enqueue`) gives up its place, or its slot.

        The future may be cancelled already (a task awaiting it was cancelled).
        """
        future.cancel()
        if future.cancelled():  # still queued: it is skipped when reached
            self._live -= 1
            # Requests queued behind it waited for it, not for a slot (`try_acquire`
            # keeps the FIFO): a slot may have been free all along.
            self._wake()
        elif future.exception() is None:
            self.release(future.result())  # got a slot just as it gave up

    def release(self, worker: W) -> None:
        """Give a slot back without a request having been sent (a cancelled waiter)."""
        worker.busy -= 1
        self._wake()

    def on_slot_free(self, worker: W) -> None:
        """A worker finished a request; hand its slot to the oldest waiter."""
        if self._live:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            future = waiters[0][1]
            if future.done():  # cancelled or expired, already accounted for
                waiters.popleft()
                continue
            worker = self._pick()
            if worker is None:
                return
            waiters.popleft()
            worker.busy += 1
            self._live -= 1
            future.set_result(worker)

    def _expire_due(self) -> None:
        """One timer for the whole queue: waiters are in deadline order, oldest first."""
        self._sweep = None
        waiters = self._waiters
        if not waiters:
            return
        loop = waiters[0][1].get_loop()
        now = loop.time()
        while waiters and (waiters[0][0] <= now or waiters[0][1].done()):
            _deadline, future = waiters.popleft()
            if not future.done():
                self._live -= 1
                future.set_exception(
                    QueueTimeout(f"no worker thread became free within {self.queue_timeout:g}s")
                )
        if waiters:
            self._sweep = loop.call_at(waiters[0][0], self._expire_due)
