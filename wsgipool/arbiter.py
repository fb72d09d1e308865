"""The arbiter: with ``--frontends N`` (N > 1), the process that starts N frontends and keeps them.

It binds every listener once (TCP, unix, ``fd://``, systemd's sockets), then
forks N frontends (`wsgipool.frontend`), each a whole one-frontend server with
its own share of the workers, accepting on the same sockets.  It runs no event
loop and no app code; its loop is a selector over a signal wake-up socket and
one SOCK_SEQPACKET link per frontend, on which the frontend says what it would
tell systemd (READY, RELOADING, STOPPING) or why it could not start (ERROR).

- Signals: TERM, INT, QUIT, HUP and USR1 go to every frontend; TTIN and TTOU
  to one frontend in turn; the arbiter then waits (TERM, INT, QUIT) for them
  within the graceful timeout, with a margin, and kills what is left.
- A frontend that dies unexpectedly is logged (PID, exit status or signal) and
  started again, at once if it had served for a while, else after a backoff
  that doubles up to 30 s.  Its workers die with it: its template sees EOF
  on its control socket and kills them.
- ``--pid`` holds the arbiter's PID, written once every frontend serves;
  systemd's READY=1 is sent then, RELOADING=1 on SIGHUP with READY=1 again
  once every frontend has reloaded, STOPPING=1 on a stop.
- A frontend that fails while the server starts (the app does not import)
  stops the others; its one-line error is the arbiter's, exit status 2.
- With ``--metrics-bind`` the arbiter binds that address too, gives each
  frontend a private unix socket for its own metrics, and forks one more
  child, ``wsgipool: metrics`` (`wsgipool.metrics.merged`), that serves the
  address from the frontends' answers; it is started again if it dies.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsgipool import children, systemd
from wsgipool.config import BindAddress, ConfigError
from wsgipool.loader import AppImportError
from wsgipool.logs import setup as logsetup
from wsgipool.pidfile import remove_pid_file, write_pid_file
from wsgipool.proctitle import set_title

if TYPE_CHECKING:
    from wsgipool.server import Server

__all__ = ["Arbiter", "split_workers"]

logger = logging.getLogger("wsgipool.arbiter")

#: The signals the arbiter answers.
FORWARDED_TO_ALL = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
FORWARDED_TO_ONE = (signal.SIGTTIN, signal.SIGTTOU)
IGNORED = (signal.SIGUSR2, signal.SIGWINCH)
HANDLED = (*FORWARDED_TO_ALL, *FORWARDED_TO_ONE, *IGNORED, signal.SIGCHLD)

#: A frontend that served at least this long before it died is restarted at once.
STEADY_AFTER = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: Beyond --graceful-timeout, how long the arbiter waits for frontends to exit before SIGKILL.
STOP_MARGIN = 10.0
#: How long a frontend may take to start (the template's own limit for importing the app).
START_LIMIT = 120.0


def split_workers(workers: int, frontends: int) -> list[int]:
    """Each frontend's share of the workers, as even as possible (0 each: thread mode)."""
    base, extra = divmod(workers, frontends)
    return [base + (1 if i < extra else 0) for i in range(frontends)]


@dataclass
class Frontend:
    """One frontend process as the arbiter sees it."""

    index: int
    workers: int
    pid: int = 0
    link: socket.socket | None = None
    started: float = 0.0
    ready: bool = False
    failures: int = 0  # deaths in a row that came soon after a start: the backoff
    restart_at: float | None = None
    error: str | None = None


class Arbiter:
    def __init__(self, server: Server) -> None:
        self.server = server
        config, pool = server.config, server.pool
        shares = split_workers(pool.workers, config.frontends)
        self.frontends = [Frontend(i + 1, share) for i, share in enumerate(shares)]
        self.notifier = systemd.Notifier(None)
        self.listeners: list[tuple[BindAddress, socket.socket]] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._signals: list[int] = []
        self._stopping: str | None = None  # "graceful" or "quit" once a stop is asked for
        self._stop_deadline = 0.0
        self._serving = False
        self._reloading: set[int] = set()
        self._turn = 0
        self._pid_file: str | None = None
        self._boot_error: BaseException | None = None
        self._next_ping: float | None = None  # systemd's watchdog, for the arbiter's own loop
        # --metrics-bind: the public socket, the frontends' private ones, the merging process.
        self._metrics_sock: socket.socket | None = None
        self._metrics_path: str | None = None
        self._metrics_dir: str | None = None
        self._metrics_pid = 0
        self._metrics_restart_at: float | None = None

    # -- the whole life --------------------------------------------------------------

    def run(self) -> None:
        from wsgipool.server import _configure_logging, _raise_open_files_limit

        server = self.server
        set_title("arbiter", self._app_name())
        _configure_logging(server.log_setup)
        _raise_open_files_limit()
        self.notifier = systemd.Notifier.from_environ()  # removed: frontends never see it
        if self.notifier.watchdog_usec is not None:
            self._next_ping = time.monotonic()
        activated = systemd.listen_fds()
        if server.config.umask is not None:
            os.umask(server.config.umask)
        try:
            for address, sock in server.bound_listeners(activated):
                self.listeners.append((address, sock))
            if server.config.metrics_bind is not None:
                self._bind_metrics(server.config.metrics_bind)
            self._install_signals()
            _share_before_fork()
            for frontend in self.frontends:
                self._start(frontend)
            if self._metrics_sock is not None:
                self._start_metrics()
            self._loop()
        finally:
            self._close()
        if self._boot_error is not None:
            raise self._boot_error
        logger.info("arbiter: every frontend has exited")

    def _loop(self) -> None:
        while True:
            timeout = self._next_timeout()
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._wake_r:
                    _drain(self._wake_r)
                else:
                    frontend = key.data
                    assert isinstance(frontend, Frontend)
                    self._read_link(frontend)
            self._handle_signals()
            self._reap()
            now = time.monotonic()
            if self._next_ping is not None and now >= self._next_ping:
                self.notifier.notify("WATCHDOG=1")
                self._next_ping = now + self._ping_interval()
            if self._stopping is not None:
                if not any(f.pid for f in self.frontends):
                    return
                if now >= self._stop_deadline:
                    self._kill_all()
                    return
                continue
            for frontend in self.frontends:
                if frontend.restart_at is not None and now >= frontend.restart_at:
                    frontend.restart_at = None
                    self._start(frontend)
            if self._metrics_restart_at is not None and now >= self._metrics_restart_at:
                self._metrics_restart_at = None
                self._start_metrics()

    def _ping_interval(self) -> float:
        usec = self.notifier.watchdog_usec
        return usec / 2_000_000 if usec else 1.0

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        times = [f.restart_at for f in self.frontends if f.restart_at is not None]
        if self._stopping is not None:
            times = [self._stop_deadline]
        if self._next_ping is not None:
            times.append(self._next_ping)
        if self._metrics_restart_at is not None and self._stopping is None:
            times.append(self._metrics_restart_at)
        if not times:
            return None
        return max(0.0, min(times) - now)

    # -- frontends ------------------------------------------------------------------------

    def _start(self, frontend: Frontend) -> None:
        from wsgipool.frontend import run_frontend

        arbiter_pid = os.getpid()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                pid = os.fork()
            except OSError:
                ours.close()
                theirs.close()
                raise
        except OSError as exc:  # out of processes or descriptors: try again soon
            logger.error(
                "arbiter: cannot start frontend %d: %s; trying again in 1s", frontend.index, exc
            )
            frontend.restart_at = time.monotonic() + 1.0
            return
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in HANDLED:
                    # Until its event loop answers them: a reload, a log reopening or a
                    # scaling signal for a frontend still starting means nothing yet, and
                    # must neither end it (SIGHUP, SIGUSR1) nor stop it (SIGTTIN, SIGTTOU).
                    quiet = sig not in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
                    ignore = quiet and sig is not signal.SIGCHLD
                    signal.signal(sig, signal.SIG_IGN if ignore else signal.SIG_DFL)
                self._selector.close()
                self._wake_r.close()
                self._wake_w.close()
                ours.close()
                self._close_in_child()
                theirs.setblocking(False)  # sd_notify never blocks the loop
                run_frontend(
                    self.server,
                    frontend.index,
                    frontend.workers,
                    self.listeners,
                    theirs,
                    arbiter_pid,
                    self._private_metrics(frontend.index),
                )
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        theirs.close()
        ours.setblocking(False)
        frontend.pid = pid
        frontend.link = ours
        frontend.started = time.monotonic()
        frontend.ready = False
        frontend.error = None
        self._selector.register(ours, selectors.EVENT_READ, frontend)
        (logger.info if self._serving else logger.debug)(
            "arbiter: started frontend %d (pid %d, %s)",
            frontend.index,
            pid,
            f"{frontend.workers} worker(s)" if frontend.workers else "threads",
        )

    def _close_in_child(self) -> None:
        """In a child just forked: the arbiter's own descriptors are not the child's."""
        for other in self.frontends:
            if other.link is not None:
                other.link.close()
        if self._metrics_sock is not None:
            self._metrics_sock.close()

    # -- --metrics-bind ---------------------------------------------------------------------

    def _bind_metrics(self, text: str) -> None:
        import tempfile

        from wsgipool.metrics import merged

        self._metrics_sock, self._metrics_path = merged.bind(
            text, self.server.config.unix_socket_perms
        )
        self._metrics_dir = tempfile.mkdtemp(prefix="wsgipool-metrics-")  # mode 0700

    def _private_metrics(self, index: int) -> str | None:
        """The unix socket where frontend `index` serves its own metrics."""
        if self._metrics_dir is None:
            return None
        return f"unix:{self._metrics_dir}/frontend-{index}.sock"

    def _start_metrics(self) -> None:
        """Fork the process that serves --metrics-bind from the frontends' listeners."""
        from wsgipool.metrics import merged

        sock = self._metrics_sock
        assert sock is not None and self._metrics_dir is not None
        sources = [
            (f.index, f"{self._metrics_dir}/frontend-{f.index}.sock") for f in self.frontends
        ]
        arbiter_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            logger.error("arbiter: cannot start the metrics process: %s; trying again in 1s", exc)
            self._metrics_restart_at = time.monotonic() + 1.0
            return
        if pid == 0:
            code = 0
            try:
                signal.set_wakeup_fd(-1)
                for sig in HANDLED:
                    signal.signal(sig, signal.SIG_DFL)
                self._selector.close()
                self._wake_r.close()
                self._wake_w.close()
                for other in self.frontends:
                    if other.link is not None:
                        other.link.close()
                for _address, listener in self.listeners:
                    listener.close()
                from wsgipool.frontend import die_with

                die_with(arbiter_pid)
                set_title("metrics", self._app_name())
                merged.serve(sock, sources)
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                os._exit(code)
        self._metrics_pid = pid
        logger.debug("arbiter: started the metrics process (pid %d)", pid)

    def _stop_metrics(self) -> None:
        pid, self._metrics_pid = self._metrics_pid, 0
        if not pid:
            return
        _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.02)
        _kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _app_name(self) -> str:
        app = self.server.application
        return app if isinstance(app, str) else ""

    def _read_link(self, frontend: Frontend) -> None:
        link = frontend.link
        if link is None:
            return
        while True:
            try:
                data = link.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the frontend is gone (or going): its exit is reaped separately
                self._selector.unregister(link)
                link.close()
                frontend.link = None
                return
            self._on_message(frontend, data.decode("utf-8", "replace"))

    def _on_message(self, frontend: Frontend, message: str) -> None:
        fields = dict(line.partition("=")[::2] for line in message.splitlines())
        if "ERROR" in fields:
            frontend.error = fields["ERROR"]
        if fields.get("READY") == "1":
            self._on_ready(frontend)

    def _on_ready(self, frontend: Frontend) -> None:
        if self._stopping is not None:
            if not frontend.ready:  # it started after a failed start of another: stop it
                frontend.ready = True
                _kill(frontend.pid, signal.SIGTERM)
            return
        if not frontend.ready:
            frontend.ready = True
            if self._serving:
                logger.info("arbiter: frontend %d (pid %d) serving", frontend.index, frontend.pid)
        elif frontend.index in self._reloading:
            self._reloading.discard(frontend.index)
            if not self._reloading and self._stopping is None:
                logger.info("arbiter: every frontend has reloaded")
                self.notifier.ready("serving")
        if not self._serving and all(f.ready for f in self.frontends):
            self._serving = True
            self._on_all_serving()

    def _on_all_serving(self) -> None:
        server = self.server
        if server.config.pid is not None:
            try:
                write_pid_file(server.config.pid)
            except ConfigError as exc:
                self._boot_error = exc
                self._stop("graceful", starting=True)
                return
            self._pid_file = server.config.pid
        workers = sum(f.workers for f in self.frontends)
        mode = f"{workers} worker(s) in all" if workers else "threads in each"
        logger.info(
            "wsgipool arbiter %d: %d frontends serving (pids %s), %s",
            os.getpid(),
            len(self.frontends),
            ", ".join(str(f.pid) for f in self.frontends),
            mode,
        )
        self.notifier.ready(f"{len(self.frontends)} frontends serving, {mode}")

    def _reap(self) -> None:
        for pid, status in children.reap():
            if pid == self._metrics_pid:
                self._metrics_pid = 0
                if self._stopping is None:
                    logger.error(
                        "arbiter: the metrics process (pid %d) %s unexpectedly; "
                        "starting it again in 1s",
                        pid,
                        _exit_text(status),
                    )
                    self._metrics_restart_at = time.monotonic() + 1.0
                continue
            for frontend in self.frontends:
                if frontend.pid == pid:
                    self._on_exit(frontend, status)

    def _on_exit(self, frontend: Frontend, status: int) -> None:
        self._read_link(frontend)  # an ERROR it sent before it exited
        if frontend.link is not None:
            self._selector.unregister(frontend.link)
            frontend.link.close()
            frontend.link = None
        pid, frontend.pid = frontend.pid, 0
        self._reloading.discard(frontend.index)
        how = _exit_text(status)
        if self._stopping is not None:
            clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            quiet = self._boot_error is not None  # the failure is said once, by the caller
            (logger.debug if quiet else logger.info if clean else logger.warning)(
                "arbiter: frontend %d (pid %d) %s", frontend.index, pid, how
            )
            return
        if not self._serving:  # the server is starting: its failure is the whole server's
            message = frontend.error or f"frontend {frontend.index} (pid {pid}) {how} at start"
            failure = AppImportError if frontend.error else ConfigError
            self._boot_error = failure(message)
            self._stop("graceful", starting=True)
            return
        lived = time.monotonic() - frontend.started
        if frontend.ready and lived >= STEADY_AFTER:
            frontend.failures = 0
        frontend.failures += 1
        delay = 0.0 if frontend.failures == 1 else _backoff(frontend.failures - 1)
        reason = f"; {frontend.error}" if frontend.error else ""
        logger.error(
            "arbiter: frontend %d (pid %d) %s unexpectedly%s; starting it again%s",
            frontend.index,
            pid,
            how,
            reason,
            f" in {delay:.1f}s" if delay else "",
        )
        frontend.ready = False
        frontend.restart_at = time.monotonic() + delay

    # -- signals ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, self._note_signal)

    def _note_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = signal.Signals(self._signals.pop(0))
            if sig is signal.SIGCHLD:
                continue  # _reap runs after every wake-up
            if sig in IGNORED:
                logger.info("%s ignored: wsgipool has no binary upgrade", sig.name)
            elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                self._stop("quit" if sig is signal.SIGQUIT else "graceful", sig)
            elif sig is signal.SIGHUP:
                self._reload()
            elif sig is signal.SIGUSR1:
                for problem in logsetup.reopen(self.server.log_setup):
                    logger.error("SIGUSR1: %s; logging goes on to the old file", problem)
                self._send_all(sig)
            elif sig in FORWARDED_TO_ONE:
                self._send_to_one(sig)

    def _stop(self, how: str, sig: signal.Signals | None = None, starting: bool = False) -> None:
        """Stop every frontend: by forwarding `sig`, or, when the start failed, SIGTERM.

        After a failed start, a frontend still starting is left to finish (it most
        likely fails the same way, and says so); one that serves is stopped.
        """
        if self._stopping is not None:
            if how == "quit" and self._stopping != "quit":
                self._stopping = "quit"
                self._send_all(signal.SIGQUIT)
            return
        self._stopping = how
        self.notifier.stopping()
        if sig is not None:
            logger.info("arbiter: %s; stopping %d frontends", sig.name, len(self.frontends))
        for frontend in self.frontends:
            frontend.restart_at = None
        # No frontend starts again: the arbiter's copies of the listeners go now, so that
        # once the frontends have closed theirs (the first step of their drain), new
        # connections are refused rather than left waiting in a backlog nobody reads.
        for _address, sock in self.listeners:
            sock.close()
        self.listeners.clear()
        budget = self.server.pool.graceful_timeout + STOP_MARGIN
        if starting:
            budget += START_LIMIT
        self._stop_deadline = time.monotonic() + budget
        for frontend in self.frontends:
            if frontend.pid and (frontend.ready or not starting):
                _kill(frontend.pid, sig or signal.SIGTERM)

    def _reload(self) -> None:
        if self._stopping is not None:
            return
        live = [f for f in self.frontends if f.pid and f.ready]
        logger.info("arbiter: SIGHUP: reloading %d frontend(s)", len(live))
        if self.server.pool.workers > 0:
            self.notifier.reloading()
            self._reloading = {f.index for f in live}
        self._send_all(signal.SIGHUP)

    def _send_all(self, sig: signal.Signals) -> None:
        for frontend in self.frontends:
            if frontend.pid:
                _kill(frontend.pid, sig)

    def _send_to_one(self, sig: signal.Signals) -> None:
        live = [f for f in self.frontends if f.pid]
        if not live:
            return
        frontend = live[self._turn % len(live)]
        self._turn += 1
        logger.info("arbiter: %s to frontend %d (pid %d)", sig.name, frontend.index, frontend.pid)
        _kill(frontend.pid, sig)

    def _kill_all(self) -> None:
        left = [f for f in self.frontends if f.pid]
        for frontend in left:
            logger.warning(
                "arbiter: frontend %d (pid %d) still running after the graceful timeout; killed",
                frontend.index,
                frontend.pid,
            )
            _kill(frontend.pid, signal.SIGKILL)
        for frontend in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(frontend.pid, 0)
            frontend.pid = 0

    # -- the end ------------------------------------------------------------------------

    def _close(self) -> None:
        if any(f.pid for f in self.frontends):  # an exception in the loop: leave nothing behind
            self._kill_all()
        self._stop_metrics()  # last: /readyz says 503 until the frontends are gone
        if self._metrics_sock is not None:
            self._metrics_sock.close()
            self._metrics_sock = None
        if self._metrics_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._metrics_path)
        if self._metrics_dir is not None:
            import shutil

            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        for frontend in self.frontends:
            if frontend.link is not None:
                frontend.link.close()
                frontend.link = None
        for sig in HANDLED:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        for _address, sock in self.listeners:
            sock.close()
        self.listeners.clear()
        for path in self.server._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.server._unix_paths.clear()
        if self._pid_file is not None:
            remove_pid_file(self._pid_file)
            self._pid_file = None


def _share_before_fork() -> None:
    """Import what every frontend imports, then freeze the garbage collector's view of it.

    The frontends are forked from this process: what it has loaded, they share
    until they write to it.  Frozen objects are never touched by a collection,
    so their pages stay shared instead of being copied into every frontend.
    """
    import gc
    import importlib

    for name in ("uvloop", "multiprocess", "wsgipool.supervisor.supervisor"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()


def _backoff(failures: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 1))


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
