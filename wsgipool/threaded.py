"""The in-process executor: the app runs in threads of the main process, as in aiohttp-wsgi.

Any `concurrent.futures.Executor` that runs callables in threads works (None
means the event loop's default executor).  The app thread hands its output to
the event loop in batches, and waits for credit like a worker does, so a
streamed response is never buffered whole here either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import IO, Any

from wsgipool import exchange as ev
from wsgipool.body import Body
from wsgipool.cgi import EnvironOptions, NotMounted, build_environ, facts_from_fields
from wsgipool.dispatch import Dispatcher, QueueFull, QueueTimeout, ThreadSlots
from wsgipool.environ import Collected
from wsgipool.protocol import data_cost, validate_status
from wsgipool.wsgicall import ResponseOutput, WSGIApp, complete_environ, not_found, run_wsgi

__all__ = ["APP_THREAD_PREFIX", "ThreadBackend", "busy_app_threads"]

logger = logging.getLogger("wsgipool.handler")

_HOLD_LIMIT = 64 * 1024

#: The names of the main process's app threads (--workers 0: server.py's pool).
APP_THREAD_PREFIX = "wsgipool-app"


def busy_app_threads(grace: float = 0.2) -> int:
    """App threads still running once the server has stopped: requests the drain cut.

    The pool's idle threads end as soon as they see its shutdown; they get `grace`
    seconds to, so that only threads still inside the app count.
    """
    deadline = time.monotonic() + grace
    threads = [t for t in threading.enumerate() if t.name.startswith(APP_THREAD_PREFIX)]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(1 for thread in threads if thread.is_alive())


def report_busy_app_threads() -> int:
    """`busy_app_threads`, with the one warning line a process about to exit without
    them logs (the CLI's thread mode, a frontend of --frontends)."""
    left = busy_app_threads()
    if left:
        logging.getLogger("wsgipool.server").warning(
            "%d app thread(s) still running at the end of the graceful timeout; exiting", left
        )
    return left


class _LoopOutput(ResponseOutput):
    __slots__ = ("_exchange", "_loop", "_pending", "_pending_size", "_start")

    def __init__(self, loop: asyncio.AbstractEventLoop, exchange: ev.Exchange, credit: int) -> None:
        super().__init__(credit)
        self._loop = loop
        self._exchange = exchange
        self._start: tuple[int, str, list[tuple[str, str]]] | None = None  # not handed over yet
        self._pending: list[ev.Event] = []
        self._pending_size = 0

    def start(self, status: str, headers: list[tuple[str, str]]) -> None:
        code, reason = validate_status(status)
        self._start = (code, reason, list(headers))

    def body(self, data: bytes, more: bool) -> None:
        if not self.take_credit(data_cost(len(data))):
            self._pending.clear()
            return
        self._pending.append((ev.DATA, data))
        self._pending_size += len(data)
        if more or self._pending_size > _HOLD_LIMIT:
            self._flush()

    def send_file(self, fd: int, offset: int, count: int | None) -> None:
        # Our own descriptor: the app may close its file as soon as we return.
        self._pending.append((ev.FILE, (os.dup(fd), offset, count)))
        self._flush()

    def end(self) -> None:
        start = self._start
        if start is not None:  # nothing handed over yet: the whole response as one event
            self._start = None
            body = b"".join([data for _, data in self._pending])
            self._pending = [(ev.RESPONSE, (*start, body))]
        else:
            self._pending.append((ev.END, None))
        self._flush()

    def fail(self, message: str) -> None:
        self._start = None
        self._pending.clear()
        self._pending.append((ev.ERROR, (500, message)))
        self._flush()

    def _flush(self) -> None:
        events = self._pending
        start = self._start
        if start is not None:
            self._start = None
            events.insert(0, (ev.START, start))
        self._pending = []
        self._pending_size = 0
        try:
            self._loop.call_soon_threadsafe(self._exchange.feed_many, events)
        except RuntimeError:  # the loop is closed: the server is gone
            self.cancel()


class ThreadBackend:
    """Runs the app in an executor's threads; implements `exchange.Backend`."""

    def __init__(
        self,
        app: WSGIApp,
        executor: Executor | None,
        options: EnvironOptions,
        *,
        stderr: IO[str] | None,
        window: int,
    ) -> None:
        if isinstance(executor, ProcessPoolExecutor):
            raise TypeError(
                "a ProcessPoolExecutor cannot run WSGI requests (the environ cannot be pickled); "
                "use wsgipool.ProcessExecutor"
            )
        self.app = app
        self.executor = executor
        self.options = options
        self.stderr = stderr
        self.window = window
        # Without a bound, the executor's own (unbounded) queue does the waiting.
        self._slots: ThreadSlots | None = None
        self._queue: Dispatcher[ThreadSlots] | None = None

    def bound(self, threads: int, queue_size: int, queue_timeout: float) -> None:
        """At most `threads` requests run at once; the others wait in a bounded FIFO.

        As in process mode: a full queue (`queue_size`) or a wait past
        `queue_timeout` is `Unavailable` (503).  `threads` must be the executor's.
        """
        self._slots = ThreadSlots(threads)
        self._queue = Dispatcher(queue_size, queue_timeout)
        self._queue.add(self._slots)

    def submit_now(
        self, collected: Collected, body: Body, extras: dict[str, Any] | None, _raw_ok: bool
    ) -> ev.Exchange | None:
        """Hand the request to the executor's threads; None: wait for a slot with `submit`."""
        queue = self._queue
        if queue is not None and queue.try_acquire() is None:
            return None
        return self._start(collected, body, extras)

    async def submit(
        self, collected: Collected, body: Body, extras: dict[str, Any] | None, raw_ok: bool
    ) -> ev.Exchange:
        queue = self._queue
        if queue is not None:
            try:
                await queue.acquire()
            except (QueueFull, QueueTimeout) as exc:
                raise ev.Unavailable(str(exc)) from None
        return self._start(collected, body, extras)

    def _start(
        self, collected: Collected, body: Body, extras: dict[str, Any] | None
    ) -> ev.Exchange:
        loop = asyncio.get_running_loop()
        exchange = ev.Exchange(loop, self)
        output = _LoopOutput(loop, exchange, self.window)
        exchange.owner = output
        try:
            future = loop.run_in_executor(
                self.executor, self._run, collected, body.stream(), extras, output
            )
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            if self._queue is not None and self._slots is not None:
                self._queue.release(self._slots)
            raise ev.Unavailable(f"cannot run the request: {exc}") from None
        future.add_done_callback(self._finished)
        return exchange

    def _finished(self, future: asyncio.Future[None]) -> None:
        """On the loop, when the app's thread is done with a request: its slot is free."""
        if self._queue is not None and self._slots is not None:
            self._queue.release(self._slots)
        _log_failure(future)

    def _run(
        self,
        collected: Collected,
        stream: IO[bytes],
        extras: dict[str, Any] | None,
        output: _LoopOutput,
    ) -> None:
        """In the app's thread: build the environ there, off the event loop, and call the app."""
        try:
            try:
                facts = facts_from_fields(collected.fields, collected.headers, collected.keep_alive)
                environ: dict[str, Any] = build_environ(facts, self.options)
            except NotMounted:
                not_found(output)
                return
            complete_environ(environ, stream, self.stderr or sys.stderr, multiprocess=False)
            if extras:
                environ.update(extras)
            run_wsgi(self.app, environ, output)
        finally:
            stream.close()

    def grant(self, exchange: ev.Exchange, amount: int) -> None:
        exchange.owner.grant(amount)

    def cancel(self, exchange: ev.Exchange) -> None:
        exchange.owner.cancel()


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("request thread failed", exc_info=future.exception())
