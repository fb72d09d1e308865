"""The life of one worker process: a reader, `threads` request threads, frames out.

The main thread reads frames and hands requests to the request threads through
a queue; each request thread runs one WSGI call at a time and writes its own
frames (the channel serialises writes).  The worker never decides policy: the
supervisor in the main process tells it to stop, and kills it if it must.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import itertools
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from wsgipool import protocol as p
from wsgipool.cgi import (
    EnvironOptions,
    NotMounted,
    RequestFacts,
    build_environ,
    facts_from_fields,
)
from wsgipool.hooks import WorkerInfo, call_hook
from wsgipool.logs.setup import LogSetup
from wsgipool.worker.channel import BlockingChannel, ChannelClosed
from wsgipool.worker.output import FrameOutput, RawHead
from wsgipool.worker.rss import RssMeter, RssProbe
from wsgipool.wsgicall import complete_environ, not_found, run_wsgi

__all__ = ["WorkerSettings", "run_worker"]

logger = logging.getLogger("wsgipool.worker")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker needs to know; policy stays in the main process."""

    threads: int
    max_rss: int | None = None
    max_rss_hard: int | None = None
    log_level: str = "info"
    environ: EnvironOptions = field(default_factory=EnvironOptions)
    #: Import the app in the template (True) or in each worker after the fork (False).
    preload: bool = False
    #: Hooks run in the worker, as "module:function" (wsgipool/hooks.py).
    post_fork: str | None = None
    worker_exit: str | None = None
    app_name: str = ""  # for process titles
    user: str | None = None  # the template switches to these before importing the app
    group: str | None = None
    logs: LogSetup = field(default_factory=LogSetup)
    #: Measure the RSS change of every request (the leak finder, a memory recycle's log
    #: line) even when no access log shows it.
    request_rss: bool = False


class _Job:
    __slots__ = ("body", "body_fd", "facts", "output", "retry", "rid", "thread")

    def __init__(
        self,
        rid: int,
        facts: RequestFacts,
        body: bytes,
        body_fd: int,
        output: FrameOutput,
        retry: bool = False,
    ) -> None:
        self.rid = rid
        self.facts = facts
        self.body = body
        self.body_fd = body_fd
        self.output = output
        self.retry = retry
        self.thread = 0


#: A worker's exit status when its post_fork hook raised.
_HOOK_FAILED = 4

#: Signals a worker ignores: the main process alone acts on them (docs/operations.md).
_IGNORED_SIGNALS = (
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGWINCH,
)  # SIGUSR1 reopens the logs, SIGUSR2 dumps the stacks (_install_signals)

#: How long the reader may run a request that waits (on I/O, on credit) before the
#: watchdog hands the requests queued behind it to the request threads.
RESCUE_AFTER = 0.001
#: The same when the process computes: handing off CPU-bound work only adds GIL
#: contention (about 10% of a 2 ms request, measured), so it waits longer, for fairness.
CPU_RESCUE_AFTER = 0.05
#: How often the watchdog looks while the process computes (each look takes the GIL).
_COMPUTING_LOOK = 0.005
#: How long the watchdog stays awake without inline work before it waits for some.
_WATCHDOG_IDLE = 1.0


class Worker:
    """A worker process's threads and the requests in flight.

    The reader thread runs the requests it reads itself, one after another:
    for the quick requests that are most of a web app's, that saves a thread
    hand-off (half of a worker's CPU per request, measured).  The process's main
    thread is a watchdog: once an inline request has waited `RESCUE_AFTER` (on
    I/O), or the process has computed for `CPU_RESCUE_AFTER`, it hands the
    requests queued behind it to the request threads and reads the socket until
    the reader is back, so neither they nor control frames (cancel, stop, stack
    dump) wait on a slow request.  A thread waiting for credit reads for itself.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        channel: BlockingChannel,
        settings: WorkerSettings,
        info: WorkerInfo | None = None,
        on_exit: Callable[..., Any] | None = None,
    ) -> None:
        self.app = app
        self.channel = channel
        self.settings = settings
        self.pid = os.getpid()
        self.info = info
        self._on_exit = on_exit  # the worker_exit hook
        self._exiting = threading.Lock()
        self.jobs: dict[int, _Job] = {}
        self.queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.stopping = False
        self._reported_rss = False
        self._rss = RssProbe() if settings.max_rss or settings.max_rss_hard else None
        # Per-request RSS changes (a read of /proc/self/statm per request, wsgipool.worker.rss)
        # only for an access log that shows them, or for the leak finder (--metrics-bind,
        # --max-rss).
        wanted = settings.logs.wants_rss_change or settings.request_rss
        self._rss_meter = RssMeter(RssProbe()) if wanted else None
        self._served = itertools.count(1)
        self._decoder = p.FrameDecoder(p.TO_WORKER)
        self._lock = threading.Lock()
        self._lead = threading.Lock()  # held by whoever reads the socket
        self._pending: deque[_Job] = deque()  # read by the reader, not started yet
        # What the reader runs: the job, since when, the process's CPU time then.
        self._inline: tuple[_Job, float, float] | None = None
        self._active = threading.Event()  # the watchdog is awake
        self._wakeup: tuple[socket.socket, socket.socket] | None = None  # _install_signals

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> NoReturn:
        self._install_signals()
        for index in range(self.settings.threads):
            thread = threading.Thread(
                target=self._request_loop, name=f"wsgipool-request-{index}", daemon=True
            )
            thread.start()
        threading.Thread(
            target=self._guarded(self._reader_loop), name="wsgipool-reader", daemon=True
        ).start()
        if self._rss_meter is not None:
            self._rss_meter.prime()  # the first request's start: its threads are up
        self.channel.send([p.frame(p.HELLO, 0, p.encode_hello(self.pid, self.settings.threads))])
        self._guarded(self._watchdog)()
        self.exit(0)

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        """Run a loop that reads the socket; how the channel ends decides the exit status."""

        def run() -> None:
            try:
                loop()
            except ChannelClosed as exc:
                if not self.stopping:
                    logger.info("worker %d: %s; exiting", self.pid, exc)
                self.exit(0)
            except p.ProtocolError as exc:
                logger.error("worker %d: bad frame from the main process: %s", self.pid, exc)
                self.exit(3)
            except OSError as exc:
                logger.error("worker %d: channel error: %s", self.pid, exc)
                self.exit(3)

        return run

    # -- reading and running ----------------------------------------------------

    def _reader_loop(self) -> None:
        while True:
            self._run_pending()
            with self._lead:
                if not self._pending:  # the watchdog may have read some meanwhile
                    self._read(self._pending.append)

    def _run_pending(self) -> None:
        """Run, in this thread, what was read; the watchdog takes over if one is slow."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                job = self._pending.popleft()
                self._inline = (job, time.monotonic(), time.process_time())
            if not self._active.is_set():
                self._active.set()
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._inline = None

    def _read(self, take: Callable[[_Job], None]) -> None:
        """One read from the main process; each request read is given to `take`."""
        for kind, rid, payload in self._decoder.feed(self.channel.recv()):
            job = self._on_frame(kind, rid, payload)
            if job is not None:
                take(job)

    def _watchdog(self) -> None:
        last_busy = time.monotonic()
        interval = RESCUE_AFTER
        while True:
            # Each look takes the GIL from whoever computes; while the process
            # computes, look less often (a hand-off would not help it anyway).
            time.sleep(interval)
            interval = _COMPUTING_LOOK if self._computing() else RESCUE_AFTER
            inline = self._inline
            now = time.monotonic()
            if inline is None:
                if now - last_busy > _WATCHDOG_IDLE:
                    self._active.clear()
                    if self._inline is None:  # the reader sets _inline before _active
                        self._active.wait()
                    last_busy = time.monotonic()
                continue
            last_busy = now
            if self._hand_off_due():
                self._rescue()

    def _hand_off_due(self) -> bool:
        """Whether the requests queued behind the inline one should go to other threads."""
        inline = self._inline
        if inline is None:
            return False
        elapsed = time.monotonic() - inline[1]
        if elapsed >= CPU_RESCUE_AFTER:
            return True
        return elapsed >= RESCUE_AFTER and not self._computing()

    def _computing(self) -> bool:
        """Whether the process has been computing since the inline request started.

        The process's CPU clock, not the reader's: a reader waiting to get the GIL
        back (after a database call released it) is not waiting on I/O, and more
        threads would only queue for the GIL too.
        """
        inline = self._inline
        if inline is None:
            return False
        elapsed = time.monotonic() - inline[1]
        return time.process_time() - inline[2] > elapsed / 2

    def _rescue(self) -> None:
        """The reader is held up: let the queued requests in, and read for it meanwhile.

        Not before: a quick request that computes is best left to finish, and a
        request waiting for credit reads the channel itself (`wait_for`).
        """
        with self._lock:
            waiting = list(self._pending)
            self._pending.clear()
        for job in waiting:
            self.queue.put(job)
        if not self._lead.acquire(blocking=False):
            return  # someone reads already (a request thread waiting for credit)
        try:
            sock = self.channel.sock
            while self._inline is not None:
                readable, _, _ = select.select([sock], [], [], 0.005)
                if readable:
                    self._read(self.queue.put)
        finally:
            self._lead.release()

    def wait_for(self, cond: threading.Condition, ready: Callable[[], bool]) -> None:
        """A request thread needs a frame from the main process (credit, the socket).

        If nobody is reading, it reads itself (handing any new request to the
        request threads, since it is busy) rather than wait for the watchdog.
        """
        while True:
            with cond:
                if ready():
                    return
            if self._lead.acquire(blocking=False):
                try:
                    while not ready():
                        self._read(self.queue.put)
                finally:
                    self._lead.release()
                return
            with cond:
                if not ready():
                    cond.wait(0.01)

    def _request_loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: _Job) -> None:
        job.thread = threading.get_ident()
        try:
            self._serve(job)
        except ChannelClosed:
            self.exit(0)
        except OSError as exc:  # the channel broke under us: nothing left to talk to
            logger.error("worker %d: cannot write a response: %s", self.pid, exc)
            self.exit(3)
        with self._lock:
            self.jobs.pop(job.rid, None)
            done = self.stopping and not self.jobs
        if done:
            self.exit(0)

    def exit(self, code: int) -> NoReturn:
        if self._exiting.acquire(blocking=False):  # the first thread to exit runs the hook
            call_hook(self._on_exit, "worker_exit", self.info)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in _IGNORED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # SIGTERM from outside (systemd's control-group kill, an operator) asks the main
        # process to replace this worker; it stops it once the replacement serves, so
        # nothing in flight or queued is lost. A thread sends that, woken through the
        # wakeup descriptor: a handler could interrupt a thread holding the channel.
        wake_r, wake_w = self._wakeup = socket.socketpair()  # open for the process's life
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda *_: None)  # its byte on the descriptor counts
        threading.Thread(
            target=self._on_signals, args=(wake_r,), name="wsgipool-signals", daemon=True
        ).start()
        signal.signal(signal.SIGQUIT, lambda *_: self.exit(0))
        # SIGUSR1 reopens the error log (the handler comes from the template: wsgipool.logs);
        # SIGUSR2 sent to a worker by hand dumps the stacks of all its threads there.
        faulthandler.register(signal.SIGUSR2, all_threads=True)

    def _on_signals(self, wake_r: socket.socket) -> None:
        """Ask once to be replaced when SIGTERM arrives (see `_install_signals`)."""
        while True:
            try:
                data = wake_r.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                logger.info("worker %d: SIGTERM; asking to be replaced", self.pid)
                status = p.encode_status(RssProbe().read(), 0, p.FLAG_STOP_ASKED)
                with contextlib.suppress(ChannelClosed, OSError):  # the main process is gone
                    self.channel.send([p.frame(p.STATUS, 0, status)])
                return

    def _stop(self, grace: float) -> None:
        """Finish what is in flight, then exit; the main process sends nothing new."""
        self.stopping = True
        with self._lock:
            idle = not self.jobs
        if idle:
            self.exit(0)
        timer = threading.Timer(grace, self._stop_overdue)
        timer.daemon = True
        timer.start()

    def _stop_overdue(self) -> None:
        logger.warning(
            "worker %d: %d request(s) still running at the end of the graceful timeout; exiting",
            self.pid,
            len(self.jobs),
        )
        self.exit(0)

    # -- frames from the main process ------------------------------------------

    def _on_frame(self, kind: int, rid: int, payload: bytes) -> _Job | None:
        """Act on a frame; a REQUEST becomes a job for the caller to run or hand over."""
        if kind == p.REQUEST:
            credit, flags, fields, headers, body = p.decode_request(payload)
            body_fd = self.channel.take_fd() if flags & p.FLAG_BODY_FD else -1
            client = self.channel.take_fd() if flags & p.FLAG_CLIENT_SOCKET else -1
            keep_alive = bool(flags & p.FLAG_KEEP_ALIVE)
            facts = facts_from_fields(fields, headers, keep_alive)
            if flags & p.FLAG_RAW_HEAD:
                raw: RawHead | None = RawHead(
                    facts.version, facts.method == "HEAD", client, keep_alive
                )
            else:
                raw = None
                if client >= 0:
                    os.close(client)
            output = FrameOutput(
                self.channel, rid, credit, self._end_report, raw, self.wait_for, self._rss_meter
            )
            job = _Job(rid, facts, body, body_fd, output, bool(flags & p.FLAG_RETRY))
            with self._lock:
                self.jobs[rid] = job
            return job
        if kind == p.CREDIT:
            pending = self.jobs.get(rid)
            if pending is not None:
                pending.output.grant(p.decode_u32(payload, "CREDIT"))
        elif kind == p.CANCEL:
            pending = self.jobs.get(rid)
            if pending is not None:
                pending.output.cancel()
        elif kind in (p.SOCKET, p.DECLINE):
            fd = self.channel.take_fd() if kind == p.SOCKET else -1
            keep_alive, send_timeout = p.decode_socket(payload) if fd >= 0 else (False, None)
            pending = self.jobs.get(rid)
            if pending is not None:
                pending.output.answer(fd, keep_alive, send_timeout)
            elif fd >= 0:
                os.close(fd)
        elif kind == p.DUMP:
            self._dump(rid)
        elif kind == p.STOP:
            self._stop(p.decode_u32(payload, "STOP") / 1000.0)
        return None

    def _dump(self, rid: int) -> None:
        job = self.jobs.get(rid)
        frame = sys._current_frames().get(job.thread) if job is not None and job.thread else None
        if frame is None:
            text = "(the request is no longer running)"
        else:
            text = "".join(traceback.format_stack(frame))
        self.channel.send([p.frame(p.STACK, rid, text.encode("utf-8", "replace"))])

    # -- one request -------------------------------------------------------------

    def _serve(self, job: _Job) -> None:
        if job.output.cancelled:  # the client left while the request was queued here
            if job.body_fd >= 0:
                os.close(job.body_fd)
            job.output.end()
            return
        try:
            environ: dict[str, Any] = build_environ(job.facts, self.settings.environ)
        except NotMounted:
            if job.body_fd >= 0:
                os.close(job.body_fd)
            not_found(job.output)
            return
        if job.body_fd >= 0:
            os.lseek(job.body_fd, 0, os.SEEK_SET)
            body: Any = io.open(job.body_fd, "rb", buffering=65536)  # noqa: UP020
        else:
            body = io.BytesIO(job.body)
        complete_environ(environ, body, sys.stderr, multiprocess=True)
        environ["wsgipool.worker_pid"] = self.pid
        if job.retry:  # the first worker to run it died before answering
            environ["wsgipool.retry"] = 1
        job.output.mark_rss()
        try:
            run_wsgi(self.app, environ, job.output)
        finally:
            body.close()

    def _end_report(self) -> bytes:
        """A STATUS frame to send before END when this worker is over a memory limit.

        Sent before END so the supervisor stops dispatching to the worker before
        it sees the slot free up.
        """
        served = next(self._served)
        if self._rss is None:
            return b""
        rss = self._rss.read()
        hard = self.settings.max_rss_hard
        soft = self.settings.max_rss
        flags = 0
        if hard is not None and rss > hard:
            flags = p.FLAG_OVER_RSS_HARD
        elif soft is not None and rss > soft and not self._reported_rss:
            self._reported_rss = True
            flags = p.FLAG_OVER_RSS
        if not flags:
            return b""
        return p.frame(p.STATUS, 0, p.encode_status(rss, served, flags))


def run_worker(
    app: Callable[..., Any],
    sock: Any,
    settings: WorkerSettings,
    info: WorkerInfo | None = None,
    post_fork: Callable[..., Any] | None = None,
    worker_exit: Callable[..., Any] | None = None,
) -> NoReturn:
    """Entry point in a freshly forked worker, with its app; never returns.

    The post_fork hook runs first: if it raises, the worker exits with status 4
    before it says HELLO, and the supervisor replaces it with the crash backoff.
    """
    if not call_hook(post_fork, "post_fork", info):
        sys.stderr.flush()
        os._exit(_HOOK_FAILED)
    Worker(app, BlockingChannel(sock), settings, info, worker_exit).run()
