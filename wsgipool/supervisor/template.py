"""The template process: forks a worker whenever asked, with or without the app imported.

It is started with multiprocess's "spawn" method (a fresh interpreter, never a
fork of the main process and its event loop).  With --preload it imports the
app once and workers forked from it start in milliseconds and share its memory
pages; without (the default), it imports nothing of the app (a throwaway child
checks that the app imports, so a broken app still fails at boot) and each
worker imports the app after the fork.  It reaps its children and tells the
main process how each one ended.  This module runs in the template and must
stay free of asyncio, aiohttp and psutil.
"""

from __future__ import annotations

import gc
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

from wsgipool import children
from wsgipool import protocol as p
from wsgipool.hooks import WorkerInfo, load_hook
from wsgipool.loader import AppImportError, load_app
from wsgipool.logs.setup import LOG_FORMAT as _LOG_FORMAT
from wsgipool.logs.setup import LogConfigError, configure
from wsgipool.privileges import drop_privileges
from wsgipool.proctitle import set_title
from wsgipool.worker.channel import BlockingChannel, ChannelClosed
from wsgipool.worker.process import WorkerSettings, run_worker

__all__ = ["template_main"]

logger = logging.getLogger("wsgipool.template")

LOG_FORMAT = _LOG_FORMAT


def template_main(
    app_ref: str | bytes, control: socket.socket, settings: WorkerSettings, generation: int = 1
) -> None:
    """Process target: load the app (or check it loads), report READY or FAILED, serve spawns."""
    try:
        os.setpgid(0, 0)  # a Ctrl-C in the terminal reaches the main process only
    except OSError:
        pass
    # Operator signals are for the main process; a stray one must not end the template.
    # SIGTERM too (systemd's control-group kill sends it to every process at once): the
    # main process drains and then stops the template itself; it ends when the main
    # process's channel does, and at an abnormal exit the main process kills it
    # (spawner.TemplateProcess).
    for sig in (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
    ):
        signal.signal(sig, signal.SIG_IGN)
    channel = BlockingChannel(control)
    set_title("template", settings.app_name)
    try:
        # Formats, --log-config, and SIGUSR1 (reopen the error log), inherited by every worker.
        configure(settings.logs, main=False)
    except LogConfigError as exc:  # the main process applied the same setup: unlikely
        channel.send([p.frame(p.FAILED, 0, str(exc).encode("utf-8", "replace"))])
        _exit(2)
    try:
        # Before the import: no application code runs with the main process's privileges.
        drop_privileges(settings.user, settings.group)
    except (OSError, ValueError) as exc:
        channel.send([p.frame(p.FAILED, 0, str(exc).encode("utf-8", "replace"))])
        _exit(2)
    try:
        if settings.preload:
            loaded: Loaded | None = _load_all(app_ref, settings)
        else:
            _check_in_child(app_ref, settings)
            loaded = None
    except AppImportError as exc:
        channel.send([p.frame(p.FAILED, 0, str(exc).encode("utf-8", "replace"))])
        _exit(2)
    # What is imported now (wsgipool's worker, with --preload the app) leaves the
    # collector's view: a worker's collections would otherwise write the header of
    # every inherited object, copying the pages it shares with the template.
    gc.collect()
    gc.freeze()
    Template(app_ref, loaded, channel, settings, generation).serve()


class Loaded(NamedTuple):
    """What a worker runs: the app and its hooks, imported before or after the fork."""

    app: Callable[..., Any]
    post_fork: Callable[..., Any] | None
    worker_exit: Callable[..., Any] | None


def _load_all(app_ref: str | bytes, settings: WorkerSettings) -> Loaded:
    app = _load(app_ref)
    post_fork = load_hook(settings.post_fork, "post_fork") if settings.post_fork else None
    worker_exit = load_hook(settings.worker_exit, "worker_exit") if settings.worker_exit else None
    return Loaded(app, post_fork, worker_exit)


def _check_in_child(app_ref: str | bytes, settings: WorkerSettings) -> None:
    """--no-preload: import the app (and hooks) in a throwaway child; AppImportError if it fails.

    The template itself must import nothing of the app, yet a broken app must stop
    the server at boot (or fail a reload) with its one-line error, not send every
    worker into the crash backoff.  The child exits as soon as the import is done.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            _load_all(app_ref, settings)
        except AppImportError as exc:
            os.write(write_end, str(exc).encode("utf-8", "replace"))
            code = 2
        except BaseException as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))
            code = 2
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    chunks = []
    with open(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode("utf-8", "replace")
    if message:
        raise AppImportError(message)
    if status != 0:
        code = os.waitstatus_to_exitcode(status)
        raise AppImportError(f"the process that imports the app ended with status {code}")


def _load(app_ref: str | bytes) -> Callable[..., Any]:
    if isinstance(app_ref, str):
        return load_app(app_ref)
    try:
        import dill

        app = dill.loads(app_ref)
    except Exception as exc:
        raise AppImportError(
            f"cannot unpickle the application: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(app):
        raise AppImportError(f"the shipped application is a {type(app).__name__}, not callable")
    return app  # type: ignore[no-any-return]


def _exit(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Template:
    def __init__(
        self,
        app_ref: str | bytes,
        loaded: Loaded | None,
        channel: BlockingChannel,
        settings: WorkerSettings,
        generation: int,
    ) -> None:
        self.app_ref = app_ref
        self.loaded = loaded  # None without --preload: each worker imports the app
        self.channel = channel
        self.settings = settings
        self.generation = generation
        self.children: set[int] = set()
        self._decoder = p.FrameDecoder(p.TO_TEMPLATE)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()

    def serve(self) -> NoReturn:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._selector.register(self.channel.sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self.channel.send([p.frame(p.READY, 0, p.encode_u32(os.getpid()))])
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_r:
                    self._drain_wakeups()
                    self._reap()
                else:
                    self._read_control()

    def _read_control(self) -> None:
        try:
            data = self.channel.recv()
            frames = self._decoder.feed(data)
        except (ChannelClosed, OSError, p.ProtocolError):
            self._quit()  # the main process is gone: take the workers with us
        for kind, rid, _payload in frames:
            if kind == p.SPAWN:  # its id is the worker's number
                pid = self._fork(self.channel.take_fd(), rid)
                self.channel.send([p.frame(p.SPAWNED, rid, p.encode_u32(pid))])
            elif kind == p.SHUTDOWN:
                self._quit()

    def _fork(self, fd: int, number: int) -> int:
        sock = socket.socket(fileno=fd)
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                signal.set_wakeup_fd(-1)
                # The template's dispositions (SIGTERM ignored) are not the worker's, which
                # may spend a while importing the app before it installs its own.
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                self._selector.close()
                self.channel.sock.close()
                self._wake_r.close()
                self._wake_w.close()
                set_title(f"worker {number}", self.settings.app_name)
                self._run_worker(sock, number)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        sock.close()
        self.children.add(pid)
        return pid

    def _run_worker(self, sock: socket.socket, number: int) -> NoReturn:
        """In the forked child: import the app unless preloaded, then become the worker."""
        loaded = self.loaded
        if loaded is None:
            try:
                loaded = _load_all(self.app_ref, self.settings)
            except AppImportError as exc:
                # The code changed on disk since the check: a crash, with the backoff.
                logger.error("worker %d: %s", os.getpid(), exc)
                _exit(2)
        info = WorkerInfo(os.getpid(), number, self.generation, self.settings.preload)
        run_worker(loaded.app, sock, self.settings, info, loaded.post_fork, loaded.worker_exit)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        for pid, status in children.reap():
            self.children.discard(pid)
            payload = p.encode_exited(pid, *children.exit_status(status))
            try:
                self.channel.send([p.frame(p.EXITED, 0, payload)])
            except OSError:
                self._quit()

    def _quit(self) -> NoReturn:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _exit(0)
