"""What the main process holds of one worker: its pid, sentinel, channel, state and counters.

A handle routes the worker's response frames to the exchanges of its requests
and reports lifecycle frames (HELLO, STATUS, STACK) and its death to the
supervisor.  The worker is not trusted: each request's frames pass its
`RequestGuard` (order, credit), a frame for a request the worker does not have
in flight, a descriptor that is not a readable regular file, or a STACK nobody
asked for is a protocol error, and a protocol error kills the worker and fails
every request it had in flight, the one that triggered it included.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import logging
import os
import signal
import socket
import stat
import time
from typing import TYPE_CHECKING, Protocol

from wsgipool import exchange as ev
from wsgipool import protocol as p
from wsgipool.growth import GrowthTable, route_of
from wsgipool.supervisor.channel import AsyncChannel
from wsgipool.supervisor.guard import NEW, PROGRESS, RequestGuard

if TYPE_CHECKING:
    from wsgipool.supervisor.spawner import TemplateProcess

__all__ = ["WorkerHandle", "WorkerState"]

logger = logging.getLogger("wsgipool.supervisor")


#: Paths whose RSS growth a handle keeps for its own worker (its top 3 are logged
#: when the worker is recycled for memory); the pool-wide table keeps more.
WORKER_PATHS = 10

#: Descriptors a worker may have sent that no frame claimed yet: the one of a FILE
#: frame whose bytes are still arriving (a worker sends one per sendmsg()).
WORKER_FDS = 1
_READ_MODES = (os.O_RDONLY, os.O_RDWR)
_O_PATH = getattr(os, "O_PATH", 0)


def _readable_file(fd: int) -> bool:
    """Whether `fd` is a regular file open for reading: what FILE may carry."""
    try:
        mode = os.fstat(fd).st_mode
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False
    return stat.S_ISREG(mode) and flags & os.O_ACCMODE in _READ_MODES and not flags & _O_PATH


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class WorkerEvents(Protocol):
    """The supervisor's side of a handle: what a handle reports upwards."""

    def on_ready(self, worker: WorkerHandle) -> None: ...

    def on_slot_free(self, worker: WorkerHandle) -> None: ...

    def on_status(self, worker: WorkerHandle, rss: int, flags: int) -> None: ...

    def on_stack(self, worker: WorkerHandle, rid: int, text: str) -> None: ...

    def on_death(self, worker: WorkerHandle, reason: str) -> None: ...


class WorkerHandle:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        number: int,
        pid: int,
        sock: socket.socket,
        template: TemplateProcess,
        events: WorkerEvents,
        threads: int,
        reason: str,
    ) -> None:
        self.loop = loop
        self.number = number
        self.pid = pid
        self.template = template
        self.events = events
        self.threads = threads
        self.spawn_reason = reason
        self.state = WorkerState.STARTING
        self.inflight: dict[int, ev.Exchange] = {}
        self.guards: dict[int, RequestGuard] = {}  # what each request's frames may be
        self.busy = 0
        self.dispatched = 0
        self.completed = 0
        self.spawned_at = time.monotonic()
        self.ready_at: float | None = None
        self.rss = 0
        self.rss_over = 0
        # RSS growth by request path on this worker, and the pool-wide table (the
        # supervisor's) that each request's growth is added to as well.
        self.growth = GrowthTable(WORKER_PATHS)
        self.pool_growth: GrowthTable | None = None
        self.request_limit: int | None = None
        self.lifetime_limit: float | None = None
        self.recycle_reason: str | None = None
        self.stop_requested = False
        self.timed_out: set[int] = set()  # requests answered 504 that the worker still runs
        self.stacks_pending: set[int] = set()  # of those, the ones whose stack is not logged yet
        self._stacks_owed: set[int] = set()  # DUMP sent, STACK not back yet (even if it ended)
        self.exit_status: tuple[int, int] | None = None
        self.death_reason: str | None = None
        self.ready_future: asyncio.Future[None] = loop.create_future()
        self.kill_timer: asyncio.TimerHandle | None = None
        self.channel = AsyncChannel(
            loop, sock, p.FROM_WORKER, self._on_frames, self._on_channel_close, WORKER_FDS
        )
        self.pidfd = -1
        try:
            self.pidfd = os.pidfd_open(pid)
            loop.add_reader(self.pidfd, self._on_sentinel)
        except (AttributeError, OSError):
            self.pidfd = -1

    # -- facts -------------------------------------------------------------------

    @property
    def free(self) -> int:
        return self.threads - self.busy

    @property
    def age(self) -> float:
        return time.monotonic() - self.spawned_at

    @property
    def alive(self) -> bool:
        return self.state is not WorkerState.STOPPED

    def describe(self) -> str:
        """Figures for a log line: served requests, age and the last RSS sample."""
        rss = f", rss {self.rss / 1048576:.1f} MiB" if self.rss else ""
        return f"served {self.completed} requests, age {self.age:.1f}s{rss}"

    # -- commands ----------------------------------------------------------------

    def send_request(
        self,
        rid: int,
        exchange: ev.Exchange,
        frame: list[bytes],
        body_fd: int,
        guard: RequestGuard,
    ) -> None:
        """`body_fd`: the descriptor the frame carries (the body's, or the client socket)."""
        if body_fd >= 0:
            self.channel.send_fd(frame, body_fd)  # may raise OSError: nothing is recorded then
        else:
            self.channel.send(frame)
        self.inflight[rid] = exchange
        self.guards[rid] = guard
        self.dispatched += 1

    def grant(self, rid: int, amount: int) -> None:
        """CREDIT: the worker may send `amount` more response bytes for this request."""
        guard = self.guards.get(rid)
        if guard is not None:
            guard.grant(amount)
            self.send(p.CREDIT, rid, p.encode_u32(amount))

    def cancel(self, rid: int) -> None:
        guard = self.guards.get(rid)
        if guard is not None:
            guard.cancel()
            self.send(p.CANCEL, rid)

    def hand_socket(
        self, rid: int, fd: int, keep_alive: bool, send_timeout: float | None = None
    ) -> bool:
        """Answer TAKEOVER with a copy of the client socket; False: declined instead.

        The worker cuts the client if it accepts no bytes for `send_timeout` seconds.
        """
        guard = self.guards.get(rid)
        if guard is None:
            return False
        payload = p.encode_socket(keep_alive, send_timeout)
        try:
            self.channel.send_fd(p.frame(p.SOCKET, rid, payload), fd)
        except OSError:  # no descriptor to spare for the copy
            self.send(p.DECLINE, rid)
            return False
        guard.answer(True)
        return True

    def decline(self, rid: int) -> None:
        """Answer TAKEOVER: no, send the response as frames."""
        if rid in self.guards:
            self.send(p.DECLINE, rid)

    def send(self, kind: int, rid: int, payload: bytes = b"") -> None:
        self.channel.send(p.frame(kind, rid, payload))

    def dump(self, rid: int) -> None:
        """DUMP: ask for the stack of the thread running this request (one STACK back)."""
        self._stacks_owed.add(rid)
        self.send(p.DUMP, rid)

    def stop(self, grace: float) -> None:
        """Ask the worker to finish its requests and exit; kill it after `grace` seconds."""
        if self.state is WorkerState.STOPPED:
            return
        self.state = WorkerState.DRAINING
        self.stop_requested = True
        self.send(p.STOP, 0, p.encode_u32(int(grace * 1000)))
        if self.kill_timer is None:
            self.kill_timer = self.loop.call_later(grace + 1.0, self._overdue, grace)

    def _overdue(self, grace: float) -> None:
        self.kill_timer = None
        if self.alive:
            logger.warning(
                "worker %d did not finish %d request(s) within %.1fs; killing it",
                self.pid,
                len(self.inflight),
                grace,
            )
            self.kill(signal.SIGKILL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, OSError):
            pass

    # -- frames ------------------------------------------------------------------

    def _on_frames(self, frames: list[tuple[int, int, bytes]]) -> None:
        guards = self.guards
        try:
            for kind, rid, payload in frames:
                guard = guards.get(rid)
                if guard is None or kind == p.STACK:
                    self._on_other_frame(kind, rid, payload)
                    continue
                released = guard.client_socket and guard.phase == NEW and kind != p.PROGRESS
                what, value = guard.on_frame(kind, payload)  # ProtocolError if not legal now
                exchange = self.inflight[rid]
                if released:  # it closed the client socket before this frame (worker/output.py)
                    exchange.client_released = True
                if what >= ev.END:  # the request is over on the worker's side: its slot is free
                    del self.inflight[rid]
                    del guards[rid]
                    exchange.rss_change = guard.rss_change
                    if self.timed_out:  # a timed-out request that finished after all
                        self.timed_out.discard(rid)
                        self.stacks_pending.discard(rid)
                    rss = guard.rss_change
                    if rss is not None and exchange.facts is not None:
                        self._note_growth(exchange.facts.fields[1], rss)
                    exchange.feed(what, value)
                    self.busy -= 1
                    self.completed += 1
                    self.events.on_slot_free(self)
                elif what == ev.DATA:
                    exchange.received += len(value)
                    exchange.feed(what, value)
                elif what == ev.FILE:
                    fd = self.channel.take_fd()
                    if not _readable_file(fd):
                        os.close(fd)
                        raise p.ProtocolError("FILE with a descriptor that is not a readable file")
                    exchange.feed(what, (fd, *value))
                elif what == PROGRESS:
                    exchange.last_progress = self.loop.time()
                    exchange.client_written = True
                    if value is not None:
                        exchange.intent = value
                else:
                    exchange.feed(what, value)
        except p.ProtocolError as exc:
            self.kill(signal.SIGKILL)
            self._die(f"protocol error: {exc}", retryable=False)

    def _on_other_frame(self, kind: int, rid: int, payload: bytes) -> None:
        """A frame that is not about a request in flight: lifecycle, or a protocol error."""
        if kind == p.STATUS:
            rss, _served, flags = p.decode_status(payload)
            self.rss = rss
            self.events.on_status(self, rss, flags)
        elif kind == p.HELLO:
            pid, threads = p.decode_hello(payload)
            if pid != self.pid or self.state is not WorkerState.STARTING:
                raise p.ProtocolError(f"unexpected HELLO from pid {pid}")
            if threads != self.threads:
                raise p.ProtocolError(f"HELLO with {threads} threads, not {self.threads}")
            self.state = WorkerState.READY
            self.ready_at = time.monotonic()
            if not self.ready_future.done():
                self.ready_future.set_result(None)
            self.events.on_ready(self)
        elif kind == p.STACK:
            if rid not in self._stacks_owed:
                raise p.ProtocolError(f"STACK for request {rid}, which was not asked for")
            self._stacks_owed.discard(rid)
            self.events.on_stack(self, rid, p.decode_text(payload))
        else:
            name = p.NAMES.get(kind, kind)
            raise p.ProtocolError(f"{name} for request {rid}, which this worker does not have")

    def _note_growth(self, target: bytes, kib: int) -> None:
        path = route_of(target)
        self.growth.add(path, kib)
        if self.pool_growth is not None:
            self.pool_growth.add(path, kib)

    def inflight_requests(self) -> list[str]:
        """ "METHOD /path" (no query) of each request the worker is running; raw, not escaped."""
        out = []
        for exchange in self.inflight.values():
            facts = exchange.facts
            if facts is not None:
                method, target = facts.fields[0], facts.fields[1]
                path = target.split(b"?", 1)[0]
                out.append(f"{method.decode('latin-1')} {path.decode('latin-1')}")
        return out

    # -- death -------------------------------------------------------------------

    def _on_channel_close(self, exc: BaseException | None) -> None:
        if isinstance(exc, p.ProtocolError):  # includes descriptors beyond WORKER_FDS
            self.kill(signal.SIGKILL)
            self._die(f"protocol error: {exc}", retryable=False)
        else:
            self._die("connection closed" if exc is None else f"connection error: {exc}")

    def _on_sentinel(self) -> None:
        self.channel.drain()  # what it wrote before it exited (may end in _die)
        self._die("process exited")

    def _die(self, reason: str, retryable: bool = True) -> None:
        """The worker is gone (or disowned): fail what it had in flight, release everything.

        A request it had sent no frame of a response for is marked as lost to this
        worker, so the handler may run it again (retry.py), unless the worker was
        killed for breaking the protocol: then its requests are suspects, not victims.
        Then a request that carried the client socket is cut, not answered 502: the
        frames cannot say whether the worker wrote to it. (A frame left unfinished by
        a worker that was killed is its last: the frames before it are whole, and the
        retry rule holds.)
        """
        if self.state is WorkerState.STOPPED:
            return
        self.state = WorkerState.STOPPED
        self.death_reason = reason
        self.channel.close()
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        if self.kill_timer is not None:
            self.kill_timer.cancel()
            self.kill_timer = None
        inflight = list(self.inflight.values())
        for rid, guard in self.guards.items():
            exchange = self.inflight[rid]
            if not retryable:
                if guard.client_socket and not exchange.client_released and not exchange.finished:
                    # It broke the protocol: its frames cannot say what it wrote to a client
                    # socket it held (a PROGRESS may be lost inside a frame whose length
                    # lied). The connection is cut (response.py, fastpath.py), not answered.
                    exchange.client_written = True
                    exchange.intent = None
                continue
            if guard.phase == NEW:
                exchange.client_released = guard.client_socket
                if not exchange.finished:  # else answered already (a timeout's 504)
                    exchange.lost_to = self.pid
            elif exchange.intent is not None and not exchange.finished:
                # Died during a whole write: the lane reads from the socket's byte
                # count whether it wrote none of it (a retry), all, or a part (a cut).
                exchange.lost_to = self.pid
        self.inflight.clear()
        self.guards.clear()
        self.busy = 0
        for exchange in inflight:
            exchange.feed(ev.ERROR, (502, f"worker {self.pid} died"))
        if not self.ready_future.done():
            self.ready_future.set_exception(
                RuntimeError(f"worker {self.pid} died while starting ({reason})")
            )
            self.ready_future.exception()  # retrieved: the spawner reports it
        self.events.on_death(self, reason)

    def describe_exit(self) -> str:
        if self.exit_status is None:
            return "exit status unknown"
        kind, code = self.exit_status
        if kind == p.EXIT_SIGNAL:
            try:
                name = signal.Signals(code).name
            except ValueError:
                name = f"signal {code}"
            return f"killed by {name}"
        return f"exit code {code}"
