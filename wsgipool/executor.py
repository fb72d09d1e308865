"""ProcessExecutor: run a WSGI app in a supervised pool of worker processes.

    executor = ProcessExecutor(workers=4, threads=4, max_rss="512M", timeout="30s")
    handler = WSGIHandler("myproject.wsgi:application", executor=executor)

It starts on first use (or explicitly, with ``await executor.start()`` or
``app.cleanup_ctx.append(executor.lifespan)``, which also stops it cleanly
with the aiohttp app).  It takes the pool options of `PoolConfig` as keywords.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from wsgipool import exchange as ev
from wsgipool import protocol as p
from wsgipool.body import Body
from wsgipool.cgi import EnvironOptions
from wsgipool.config import ConfigError, PoolConfig
from wsgipool.dispatch import Dispatcher, QueueFull, QueueTimeout
from wsgipool.environ import Collected
from wsgipool.loader import AppImportError, find_import_name
from wsgipool.logs.setup import LogSetup
from wsgipool.supervisor.guard import RequestGuard
from wsgipool.supervisor.handle import WorkerHandle
from wsgipool.supervisor.supervisor import Supervisor

__all__ = ["ProcessExecutor"]

logger = logging.getLogger("wsgipool.executor")


class ProcessExecutor:
    """A pool of worker processes for `WSGIHandler`; keywords as in `PoolConfig`."""

    def __init__(
        self,
        application: Callable[..., Any] | str | None = None,
        *,
        log_level: str = "info",
        log_setup: LogSetup | None = None,
        **options: Any,
    ) -> None:
        self.config = PoolConfig(**options)
        if self.config.workers < 1:
            raise ConfigError("ProcessExecutor needs workers >= 1 (workers=0 means no pool)")
        self.log_level = log_level
        self.log_setup = log_setup or LogSetup(level=log_level)
        self._app_ref: str | bytes | None = None
        self._options = EnvironOptions()
        self._dispatcher: Dispatcher[WorkerHandle] = Dispatcher(
            self.config.queue_size, self.config.queue_timeout
        )
        self._supervisor: Supervisor | None = None
        self._starting: asyncio.Future[None] | None = None
        self._next_rid = 0
        self._stopped = False
        self._retry_methods = frozenset(self.config.retry_methods)
        # For observers (wsgipool.metrics): 503s by reason, and a hook told each
        # dispatched request's wait for a worker thread, in seconds.
        self.rejected: Counter[str] = Counter()
        self.wait_observer: Callable[[float], None] | None = None
        # Set before start() to have workers measure each request's RSS change (the
        # supervisor's `path_growth`, the leak finder) without an access log asking.
        self.request_rss = False
        if application is not None:
            self.bind(application)

    # -- the app --------------------------------------------------------------------

    def bind(
        self, application: Callable[..., Any] | str, options: EnvironOptions | None = None
    ) -> None:
        """Say which app the workers run, and how its environ is built (WSGIHandler does this).

        The app is checked here, not at the first request: one that cannot reach the
        workers (neither importable by name nor picklable with dill) is a TypeError now.
        """
        ref = _app_reference(application)
        if self._app_ref is not None and self._app_ref != ref:
            raise ValueError("this ProcessExecutor already runs another application")
        self._app_ref = ref
        self._options = options or EnvironOptions()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the template process (it imports the app, or checks it imports) and the workers;
        after `shutdown`, a new template and new workers.

        Raises AppImportError with a one-line message if the app cannot be imported.
        """
        if self._supervisor is not None:
            if not self._stopped:
                return
            # Shut down before (a second lifespan, a server started again): a new pool.
            self._supervisor = None
            self._starting = None
            self._stopped = False
            self._dispatcher = Dispatcher(self.config.queue_size, self.config.queue_timeout)
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        if self._app_ref is None:
            raise RuntimeError("ProcessExecutor has no application: pass it to WSGIHandler")
        supervisor = Supervisor(
            self._app_ref,
            self.config,
            self,
            log_level=self.log_level,
            log_setup=self.log_setup,
            environ=self._options,
            request_rss=self.request_rss,
        )
        try:
            await supervisor.start()
        except AppImportError:
            self._starting = None
            raise
        self._supervisor = supervisor

    async def shutdown(self, timeout: float | None = None) -> None:
        """Let the workers finish their requests (up to `timeout`, default graceful_timeout)."""
        self._stopped = True
        if self._supervisor is not None:
            grace = self.config.graceful_timeout if timeout is None else timeout
            await self._supervisor.shutdown(grace)

    def kill(self) -> None:
        """Stop every worker at once (SIGQUIT)."""
        self._stopped = True
        if self._supervisor is not None:
            self._supervisor.kill_all()

    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """For ``aiohttp_app.cleanup_ctx``: start with the app, stop gracefully with it."""
        await self.start()
        yield
        await self.shutdown()

    async def reload(self) -> bool:
        """Re-import the app and replace the workers one at a time (what SIGHUP does)."""
        if self._supervisor is None:
            return False
        return await self._supervisor.reload()

    def signal_processes(self, sig: int) -> None:
        """Send `sig` to the template process(es) and every live worker (SIGUSR1: reopen logs)."""
        if self._supervisor is not None:
            self._supervisor.signal_processes(sig)

    def scale(self, delta: int) -> int:
        """Add (or with a negative delta remove) workers; returns the new target."""
        if self._supervisor is None:
            raise RuntimeError("the executor is not running")
        return self._supervisor.scale(delta)

    @property
    def workers(self) -> list[WorkerHandle]:
        """The live worker handles (for introspection and tests)."""
        return [] if self._supervisor is None else list(self._supervisor.workers)

    @property
    def supervisor(self) -> Supervisor | None:
        """The running supervisor (read-only use: observers, tests); None before start."""
        return self._supervisor

    @property
    def dispatcher(self) -> Dispatcher[WorkerHandle]:
        return self._dispatcher

    @property
    def template_pids(self) -> list[int]:
        supervisor = self._supervisor
        if supervisor is None:
            return []
        templates = [supervisor.template, *supervisor.retired_templates]
        return [t.pid for t in templates if t is not None and t.alive]

    # -- requests (the handler's side) --------------------------------------------------

    @property
    def retry_methods(self) -> frozenset[str]:
        """The methods whose requests may run again when their worker dies (retry.py)."""
        return self._retry_methods

    @property
    def stopping(self) -> bool:
        """Shutting down (or stopped): no request runs again on another worker now."""
        return self._stopped

    def submit_now(
        self,
        collected: Collected,
        body: Body,
        _extras: object = None,
        raw_ok: bool = False,
        *,
        keep_body: bool = False,
        client_fd: int = -1,
    ) -> ev.Exchange | None:
        """Send the request if a worker thread is free now; None means: wait with `submit`.

        The body is closed once sent unless `keep_body`: then the caller keeps it
        (to send again, see `submit`'s `retry`) and closes it. `client_fd`: the
        client socket, sent with a bodiless request so that the worker may write a
        small whole response to it itself and report it with DONE (fastpath.py).
        """
        if self._supervisor is None:
            return None
        worker = self._dispatcher.try_acquire()
        if worker is None:
            return None
        return self._send(worker, collected, body, raw_ok, 0.0, keep_body, False, client_fd)

    async def submit(
        self,
        collected: Collected,
        body: Body,
        _extras: object = None,
        raw_ok: bool = False,
        *,
        keep_body: bool = False,
        retry: bool = False,
        client_socket: Callable[[], int] | None = None,
    ) -> ev.Exchange:
        """Send the request to a worker, waiting in the queue for a free thread if need be.

        `retry`: the request ran before on a worker that died (the app sees
        ``environ['wsgipool.retry']``); `keep_body` as in `submit_now`.
        `client_socket`: asked once a worker thread is free, the client socket to
        send with the request, as `submit_now`'s `client_fd` (-1: none now).
        """
        if self._supervisor is None:
            if self._stopped:
                if not keep_body:
                    body.close()
                self.rejected["shutting-down"] += 1
                raise ev.Unavailable("the server is shutting down")
            await self.start()
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        worker = self._dispatcher.try_acquire()
        while worker is None:
            try:
                worker = await self._dispatcher.acquire()
            except (QueueFull, QueueTimeout) as exc:
                self.rejected["queue-full" if isinstance(exc, QueueFull) else "queue-timeout"] += 1
                raise ev.Unavailable(str(exc)) from None
            # The slot was granted before this coroutine resumed; meanwhile the
            # worker may have been told to stop, or died: then wait for another.
            if worker.stop_requested or not worker.alive:
                if worker.alive:
                    self._dispatcher.release(worker)
                worker = None
        waited = loop.time() - queued_at
        client_fd = client_socket() if client_socket is not None else -1
        return self._send(worker, collected, body, raw_ok, waited, keep_body, retry, client_fd)

    def enqueue(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[WorkerHandle] | None:
        """A place in the queue for a worker thread without awaiting it (fastpath.py), to
        be sent with `submit_granted` once the future is done; None if the queue is full
        or the pool is not running (then `submit` decides: 503, or start)."""
        dispatcher = self._dispatcher
        if self._supervisor is None or dispatcher.waiting >= dispatcher.queue_size:
            return None
        return dispatcher.enqueue(loop)

    def submit_granted(
        self,
        granted: asyncio.Future[WorkerHandle],
        collected: Collected,
        body: Body,
        raw_ok: bool,
        queued_at: float,
        *,
        keep_body: bool = False,
        client_fd: int = -1,
    ) -> ev.Exchange | None:
        """Send the request to the worker `granted` (from `enqueue`) gave it; None if that
        worker stopped meanwhile (queue again); Unavailable if the wait timed out."""
        exc = granted.exception()
        if exc is not None:
            self.rejected["queue-timeout"] += 1
            raise ev.Unavailable(str(exc))
        worker = granted.result()
        if worker.stop_requested or not worker.alive:
            if worker.alive:
                self._dispatcher.release(worker)
            return None
        waited = worker.loop.time() - queued_at
        return self._send(worker, collected, body, raw_ok, waited, keep_body, False, client_fd)

    def withdraw(self, granted: asyncio.Future[WorkerHandle]) -> None:
        """A request from `enqueue` no longer wants its place (its client left)."""
        self._dispatcher.withdraw(granted)

    def _send(
        self,
        worker: WorkerHandle,
        collected: Collected,
        body: Body,
        raw_ok: bool,
        waited: float,
        keep_body: bool,
        retry: bool,
        client_fd: int = -1,
    ) -> ev.Exchange:
        self._next_rid = rid = (self._next_rid % 0xFFFFFFFF) + 1
        exchange = ev.Exchange(worker.loop, self, rid)
        exchange.owner = worker
        exchange.facts = collected
        file = body.file
        flags = p.FLAG_RAW_HEAD if raw_ok else 0
        if file is not None:
            flags |= p.FLAG_BODY_FD
        if collected.keep_alive:
            flags |= p.FLAG_KEEP_ALIVE
        if retry:
            flags |= p.FLAG_RETRY
        direct = client_fd >= 0 and raw_ok and file is None
        if direct:
            flags |= p.FLAG_CLIENT_SOCKET
            exchange.client_sent = True
        try:
            frame = p.encode_request(
                rid, ev.RESPONSE_WINDOW, flags, collected.fields, collected.headers, body.chunks
            )
            head_request = collected.method == b"HEAD"
            guard = RequestGuard(ev.RESPONSE_WINDOW, raw_ok, head_request, direct)
            fd = file.fileno() if file is not None else client_fd if direct else -1
            worker.send_request(rid, exchange, frame, fd, guard)
        except OSError as exc:  # the body's descriptor could not be copied (EMFILE)
            self._dispatcher.release(worker)
            self.rejected["dispatch-failed"] += 1
            raise ev.Unavailable(f"cannot hand the request to a worker: {exc}") from exc
        finally:
            if not keep_body:
                body.close()
        assert self._supervisor is not None
        self._supervisor.on_dispatched(worker)
        if self.wait_observer is not None:
            self.wait_observer(waited)
        return exchange

    def grant(self, exchange: ev.Exchange, amount: int) -> None:
        worker: WorkerHandle = exchange.owner
        worker.grant(exchange.rid, amount)

    def hand_socket(
        self, exchange: ev.Exchange, fd: int, keep_alive: bool, send_timeout: float | None = None
    ) -> bool:
        """Answer TAKEOVER: the worker writes the response to this socket itself.

        The worker cuts the client if it accepts no bytes for `send_timeout` seconds.

        False if the descriptor could not be passed (none to spare for the copy):
        the worker is told to send frames instead.
        """
        worker: WorkerHandle = exchange.owner
        return worker.hand_socket(exchange.rid, fd, keep_alive, send_timeout)

    def decline(self, exchange: ev.Exchange) -> None:
        """Answer TAKEOVER: no, send the response as frames."""
        worker: WorkerHandle = exchange.owner
        worker.decline(exchange.rid)

    def cancel(self, exchange: ev.Exchange) -> None:
        worker: WorkerHandle = exchange.owner
        worker.cancel(exchange.rid)

    # -- the pool (called by the supervisor) ---------------------------------------------

    def add(self, worker: WorkerHandle) -> None:
        self._dispatcher.add(worker)

    def remove(self, worker: WorkerHandle) -> None:
        self._dispatcher.remove(worker)

    def on_slot_free(self, worker: WorkerHandle) -> None:
        self._dispatcher.on_slot_free(worker)


def _app_reference(application: Callable[..., Any] | str) -> str | bytes:
    """How the template finds the app: an import string, else the callable pickled by dill."""
    if isinstance(application, str):
        if not application.partition(":")[0].strip():
            raise AppImportError(f"{application!r} is not MODULE:ATTR")
        return application
    if not callable(application):
        raise TypeError(
            f"application must be callable or 'module:attr', got {type(application).__name__}"
        )
    name = find_import_name(application)
    if name is not None:
        return name
    try:
        import dill

        return bytes(dill.dumps(application, recurse=True))
    except Exception as exc:
        raise TypeError(
            f"cannot send {application!r} to the worker processes: it cannot be imported by name "
            f"and dill cannot pickle it ({type(exc).__name__}: {exc}); "
            "define it at module level or pass 'module:attr'"
        ) from None
