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
        self._waiters: deque[asyncio.Future[WorkerHandle]] = deque()

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
        return len(self._waiters)

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
        if self._waiters:
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
        if len(self._waiters) >= self.queue_size:
            raise QueueFull(f"{len(self._waiters)} requests already waiting for a worker")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WorkerHandle] = loop.create_future()
        self._waiters.append(future)
        timer = loop.call_later(self.queue_timeout, _expire, future, self.queue_timeout)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # got a slot just as we were cancelled
            raise
        finally:
            timer.cancel()
            if not future.done() or future.cancelled() or future.exception() is not None:
                future.cancel()
                try:  # a served waiter was already taken off the queue by _wake
                    self._waiters.remove(future)
                except ValueError:
                    pass

    def release(self, worker: WorkerHandle) -> None:
        """Give a slot back without a request having been sent (a cancelled waiter)."""
        worker.busy -= 1
        self._wake()

    def on_slot_free(self, worker: WorkerHandle) -> None:
        """A worker finished a request; hand its slot to the oldest waiter."""
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            future = waiters[0]
            if future.done():
                waiters.popleft()
                continue
            worker = self._pick()
            if worker is None:
                return
            waiters.popleft()
            worker.busy += 1
            future.set_result(worker)


def _expire(future: asyncio.Future[WorkerHandle], timeout: float) -> None:
    if not future.done():
        future.set_exception(QueueTimeout(f"no worker thread became free within {timeout:g}s"))
