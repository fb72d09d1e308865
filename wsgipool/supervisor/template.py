"""The template process: imports the app once, then forks a worker whenever asked.

It is started with multiprocess's "spawn" method (a fresh interpreter, never a
fork of the main process and its event loop), so the app is imported in a clean
process; workers forked from it start in milliseconds and share its memory
pages.  It reaps its children and tells the main process how each one ended.
This module runs in the template and must stay free of asyncio, aiohttp and psutil.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from wsgipool import protocol as p
from wsgipool.loader import AppImportError, load_app
from wsgipool.logs.setup import LOG_FORMAT as _LOG_FORMAT
from wsgipool.logs.setup import LogConfigError, configure
from wsgipool.worker.channel import BlockingChannel, ChannelClosed
from wsgipool.worker.process import WorkerSettings, run_worker

__all__ = ["template_main"]

logger = logging.getLogger("wsgipool.template")

LOG_FORMAT = _LOG_FORMAT


def template_main(app_ref: str | bytes, control: socket.socket, settings: WorkerSettings) -> None:
    """Process target: load the app, report READY or FAILED, then serve spawn requests."""
    try:
        os.setpgid(0, 0)  # a Ctrl-C in the terminal reaches the main process only
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = BlockingChannel(control)
    try:
        # Formats, --log-config, and SIGUSR1 (reopen the error log), inherited by every worker.
        configure(settings.logs, main=False)
    except LogConfigError as exc:  # the main process applied the same setup: unlikely
        channel.send([p.frame(p.FAILED, 0, str(exc).encode("utf-8", "replace"))])
        _exit(2)
    try:
        app = _load(app_ref)
    except AppImportError as exc:
        channel.send([p.frame(p.FAILED, 0, str(exc).encode("utf-8", "replace"))])
        _exit(2)
    Template(app, channel, settings).serve()


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
        self, app: Callable[..., Any], channel: BlockingChannel, settings: WorkerSettings
    ) -> None:
        self.app = app
        self.channel = channel
        self.settings = settings
        self.children: set[int] = set()
        self._decoder = p.FrameDecoder(p.TO_TEMPLATE)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()

    def serve(self) -> NoReturn:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self._quit())
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
            if kind == p.SPAWN:
                pid = self._fork(self.channel.take_fd())
                self.channel.send([p.frame(p.SPAWNED, rid, p.encode_u32(pid))])
            elif kind == p.SHUTDOWN:
                self._quit()

    def _fork(self, fd: int) -> int:
        sock = socket.socket(fileno=fd)
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                signal.set_wakeup_fd(-1)
                self._selector.close()
                self.channel.sock.close()
                self._wake_r.close()
                self._wake_w.close()
                run_worker(self.app, sock, self.settings)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        sock.close()
        self.children.add(pid)
        return pid

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if os.WIFSIGNALED(status):
                payload = p.encode_exited(pid, p.EXIT_SIGNAL, os.WTERMSIG(status))
            else:
                payload = p.encode_exited(pid, p.EXIT_CODE, os.waitstatus_to_exitcode(status))
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
