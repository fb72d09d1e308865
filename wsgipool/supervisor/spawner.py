"""The main process's handle on a template process: start it, ask it for workers.

The template is started through multiprocess with the "spawn" method.  While it
starts, ``__main__`` is hidden from multiprocess so that the new interpreter
does not re-run the main module (the CLI, or a user's script) and never imports
aiohttp; the app reaches it as an import string, or as dill bytes made here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from wsgipool import protocol as p
from wsgipool.loader import AppImportError
from wsgipool.supervisor.channel import AsyncChannel
from wsgipool.supervisor.template import template_main
from wsgipool.worker.process import WorkerSettings

__all__ = ["SpawnError", "TemplateProcess"]

logger = logging.getLogger("wsgipool.supervisor")

ExitHandler = Callable[[int, int, int], None]


class SpawnError(Exception):
    """The template could not fork a worker (it is gone, or did not answer)."""


class TemplateProcess:
    def __init__(
        self,
        app_ref: str | bytes,
        settings: WorkerSettings,
        on_exited: ExitHandler,
        on_lost: Callable[[TemplateProcess], None],
        generation: int,
    ) -> None:
        self.app_ref = app_ref
        self.settings = settings
        self.generation = generation
        self._on_exited = on_exited
        self._on_lost = on_lost
        self._process: Any = None
        self._channel: AsyncChannel | None = None
        self._ready: asyncio.Future[int] | None = None
        self._spawns: dict[int, asyncio.Future[int]] = {}
        self.pid = 0
        self.alive = False
        self.stopping = False

    async def start(self, timeout: float = 120.0) -> None:
        """Start the process and wait until it imported the app; AppImportError if it could not."""
        import multiprocess

        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        context = multiprocess.get_context("spawn")
        process = context.Process(
            target=template_main,
            args=(self.app_ref, theirs, self.settings, self.generation),
            name="wsgipool-template",
            daemon=True,
        )
        _stand_in_resource_tracker()
        with _main_module_hidden():
            process.start()
        theirs.close()
        self._process = process
        # The template ignores SIGTERM, which multiprocess's own exit handler would send
        # it and then wait for it: at an exit that skipped the stop, this kills it first.
        atexit.register(self._kill_at_exit)
        self._ready = loop.create_future()
        self._channel = AsyncChannel(loop, ours, p.FROM_TEMPLATE, self._on_frames, self._on_close)
        self.alive = True
        try:
            self.pid = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.kill()
            raise AppImportError(
                f"the app did not finish importing within {timeout:.0f}s"
            ) from None
        except AppImportError:
            self.reap()
            raise

    async def spawn(self, number: int, timeout: float = 30.0) -> tuple[int, socket.socket]:
        """Fork worker `number`; returns its pid and the main process's end of its socketpair.

        The number (unique for the server's life) is the SPAWN frame's id, echoed in SPAWNED.
        """
        if not self.alive or self._channel is None:
            raise SpawnError("the template process is not running")
        loop = asyncio.get_running_loop()
        token = number & 0xFFFFFFFF
        future: asyncio.Future[int] = loop.create_future()
        self._spawns[token] = future
        try:
            ours, theirs = socket.socketpair()
        except OSError as exc:  # out of file descriptors, say: the supervisor retries later
            self._spawns.pop(token, None)
            raise SpawnError(f"cannot create the worker's socket pair: {exc}") from exc
        try:
            self._channel.send_fd(p.frame(p.SPAWN, token), theirs.fileno())
        except OSError as exc:
            ours.close()
            self._spawns.pop(token, None)
            raise SpawnError(f"cannot ask the template for a worker: {exc}") from exc
        finally:
            theirs.close()
        try:
            pid = await asyncio.wait_for(future, timeout)
        except BaseException:
            ours.close()
            self._spawns.pop(token, None)
            raise
        return pid, ours

    def shutdown(self) -> None:
        """Ask the template to exit (its workers must be gone already)."""
        self.stopping = True
        if self._channel is not None and not self._channel.closed:
            self._channel.send(p.frame(p.SHUTDOWN, 0))

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the template to exit, wait for it off the loop, then close its channel on the loop.

        Only the join runs in a thread: the channel belongs to the event loop,
        whose flush may still be sending the SHUTDOWN frame (closing it from a
        thread raced that flush: ``IndexError: pop from an empty deque``).
        """
        self.shutdown()
        process = self._process
        if process is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, process.join, timeout)
            if process.is_alive():
                process.kill()
                await loop.run_in_executor(None, process.join, timeout)
        self._close_channel()

    def kill(self) -> None:
        """SIGKILL the template and wait for it; on the event loop only."""
        self.stopping = True
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        self.reap()

    @property
    def process_pid(self) -> int:
        """The template's PID from its start (`pid` is known once it is ready)."""
        process = self._process
        return int(process.pid or 0) if process is not None else 0

    def abandon(self) -> None:
        """SIGKILL a template that is still importing the app, and the child that checks
        the import for it (without --preload), which shares its process group and holds
        the descriptor that tells its exit: it has no workers yet, so nothing is lost."""
        self.stopping = True
        self._kill_group()
        self.kill()

    def reap(self) -> None:
        """Close the channel and join the process; on the event loop only (it blocks briefly)."""
        self._close_channel()
        if self._process is not None:
            self._process.join(5.0)

    def _kill_group(self) -> None:
        """SIGKILL the template's process group (its import check, its workers) while the
        template is unreaped, so that its PID, the group's number, is still its own.
        Before its setpgid() there is no such group, and no child either."""
        process = self._process
        if process is not None and process.is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def _kill_at_exit(self) -> None:
        """At interpreter exit (the loop is gone: no channel to close, nothing to reap)."""
        self._kill_group()
        process = self._process
        if process is not None and process.is_alive():  # before its setpgid()
            process.kill()

    def _close_channel(self) -> None:
        atexit.unregister(self._kill_at_exit)
        if self._channel is not None:
            self._channel.close()
        self.alive = False

    def _on_frames(self, frames: list[tuple[int, int, bytes]]) -> None:
        for kind, rid, payload in frames:
            try:
                if kind == p.SPAWNED:
                    future = self._spawns.pop(rid, None)
                    pid = p.decode_u32(payload, "SPAWNED")
                    if future is not None and not future.done():
                        future.set_result(pid)
                elif kind == p.EXITED:
                    self._on_exited(*p.decode_exited(payload))
                elif kind == p.READY:
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(p.decode_u32(payload, "READY"))
                elif kind == p.FAILED:
                    self.stopping = True  # it exits next: that is not a loss to report
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_exception(AppImportError(p.decode_text(payload)))
            except p.ProtocolError as exc:
                logger.error("template %d sent a bad frame: %s; killing it", self.pid, exc)
                self.kill()
                return

    def _on_close(self, exc: BaseException | None) -> None:
        self.alive = False
        for future in self._spawns.values():
            if not future.done():
                future.set_exception(SpawnError("the template process exited"))
        self._spawns.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                AppImportError("the template process exited while importing the app")
            )
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._join_quietly)
        if not self.stopping and self.pid:  # pid 0: it never became ready; start() reports
            logger.error("template process %d exited unexpectedly (%s)", self.pid, exc or "EOF")
            self._on_lost(self)

    def _join_quietly(self) -> None:
        if self._process is not None:
            self._process.join(10.0)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep multiprocess from re-running ``__main__`` in the new interpreter."""
    real = sys.modules.get("__main__")
    stand_in = types.ModuleType("__main__")
    stand_in.__spec__ = None
    sys.modules["__main__"] = stand_in
    try:
        yield
    finally:
        if real is not None:
            sys.modules["__main__"] = real


_tracker_pipe: list[int] = []  # the read end of the stand-in, drained at each start


def _stand_in_resource_tracker() -> None:
    """Keep multiprocess from starting its resource tracker process (about 12 MiB PSS).

    It tracks named semaphores and shared memory, which wsgipool never creates.
    A pipe stands in for its socket: multiprocess probes it before each spawn
    and hands it to the child; whatever is written there is drained and dropped.
    """
    from multiprocess import resource_tracker

    tracker = resource_tracker._resource_tracker
    if tracker._fd is None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_inheritable(read_end, False)
        tracker._fd = write_end
        _tracker_pipe.append(read_end)
    for read_end in _tracker_pipe:
        try:
            while os.read(read_end, 65536):
                pass
        except BlockingIOError:
            pass
