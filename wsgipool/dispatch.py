"""Which worker gets a request, and the queue of requests waiting for one.

A request goes to the ready worker with the most free threads; nothing is sent
to a worker without a free thread.  When every thread is busy the request
waits in a bounded FIFO; a full queue or a wait past the timeout is a 503.
A slot is taken when a request is sent and given back when the worker says
the request ended (END or ERROR) or when the worker dies.
"""

from __future__ import annotations

import asyncio
from collections import deque

from wsgipool.supervisor.handle import WorkerHandle

__all__ = ["Dispatcher", "QueueFull", "QueueTimeout"]


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class Dispatcher:
    def __init__(self, queue_size: int, queue_timeout: float) -> None:
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._ready: list[WorkerHandle] = []
        # (deadline, future) in arrival order, so also in deadline order.
        self._waiters: deque[tuple[float, asyncio.Future[WorkerHandle]]] = deque()
        self._live = 0  # waiters not yet served, expired or cancelled
        self._sweep: asyncio.TimerHandle | None = None

    # -- the pool ------------------------------------------------------------------

    def add(self, worker: WorkerHandle) -> None:
        """A worker is ready for requests."""
        if worker not in self._ready:
            self._ready.append(worker)
        self._wake()

    def remove(self, worker: WorkerHandle) -> None:
        """A worker takes no new requests (draining, dead)."""
        if worker in self._ready:
            self._ready.remove(worker)

    @property
    def workers(self) -> list[WorkerHandle]:
        return list(self._ready)

    @property
    def waiting(self) -> int:
        return self._live

    # -- slots ---------------------------------------------------------------------

    def _pick(self) -> WorkerHandle | None:
        best: WorkerHandle | None = None
        best_free = 0
        for worker in self._ready:
            free = worker.threads - worker.busy
            if free > best_free:
                best, best_free = worker, free
        return best

    def try_acquire(self) -> WorkerHandle | None:
        """A worker with a slot taken, if one is free and nobody is queued before us."""
        if self._live:
            return None
        worker = self._pick()
        if worker is not None:
            worker.busy += 1
        return worker

    async def acquire(self) -> WorkerHandle:
        """A worker with a slot taken for one request; QueueFull or QueueTimeout if none."""
        worker = self.try_acquire()
        if worker is not None:
            return worker
        if self._live >= self.queue_size:
            raise QueueFull(f"{self._live} requests already waiting for a worker")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WorkerHandle] = loop.create_future()
        self._waiters.append((loop.time() + self.queue_timeout, future))
        self._live += 1
        if self._sweep is None:
            self._sweep = loop.call_at(self._waiters[0][0], self._expire_due)
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():  # still queued: it is skipped when reached
                self._live -= 1
            elif future.exception() is None:
                self.release(future.result())  # got a slot just as we were cancelled
            raise

    def release(self, worker: WorkerHandle) -> None:
        """Give a slot back without a request having been sent (a cancelled waiter)."""
        worker.busy -= 1
        self._wake()

    def on_slot_free(self, worker: WorkerHandle) -> None:
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
