"""What the main process holds of one worker: its pid, sentinel, channel, state and counters.

A handle routes the worker's response frames to the exchanges of its requests
and reports lifecycle frames (HELLO, STATUS, STACK) and its death to the
supervisor.  A response frame for a request id the handle does not know, or no
longer knows, is dropped: it can never reach another request.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from wsgipool import exchange as ev
from wsgipool import protocol as p
from wsgipool.growth import GrowthTable, normalise_path
from wsgipool.supervisor.channel import AsyncChannel

if TYPE_CHECKING:
    from wsgipool.supervisor.spawner import TemplateProcess

__all__ = ["WorkerHandle", "WorkerState"]

logger = logging.getLogger("wsgipool.supervisor")


#: Paths whose RSS growth a handle keeps for its own worker (its top 3 are logged
#: when the worker is recycled for memory); the pool-wide table keeps more.
WORKER_PATHS = 10

#: Frames after which a request is over on the worker's side: its slot is free.
_FINAL = frozenset({p.RAW, p.RESPONSE, p.END, p.ERROR, p.DONE})


def _final_event(kind: int, payload: bytes, exchange: ev.Exchange | None) -> tuple[int, Any]:
    if kind == p.ERROR:
        return ev.ERROR, (500, p.decode_text(payload))
    # The others end with the worker's RSS change over the request, for the access log.
    rss = p.decode_rss(payload, p.NAMES.get(kind, str(kind)))
    if exchange is not None:
        exchange.rss_change = rss
    cut = len(payload) - p.RSS_TRAILER_SIZE
    if kind == p.RAW:
        facts = exchange.facts if exchange is not None else None
        head_request = facts is not None and facts.method == b"HEAD"
        return ev.RAW, p.decode_raw(memoryview(payload)[:cut], head_request)  # type: ignore[arg-type]
    if kind == p.RESPONSE:
        return ev.RESPONSE, p.decode_response(payload[:cut])
    if kind == p.DONE:
        return ev.DONE, p.decode_done(payload[:cut])
    if cut:
        raise p.ProtocolError("END with a payload besides its RSS trailer")
    return ev.END, None


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
        self.exit_status: tuple[int, int] | None = None
        self.death_reason: str | None = None
        self.ready_future: asyncio.Future[None] = loop.create_future()
        self.kill_timer: asyncio.TimerHandle | None = None
        self.channel = AsyncChannel(
            loop, sock, p.FROM_WORKER, self._on_frames, self._on_channel_close
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
        self, rid: int, exchange: ev.Exchange, frame: list[bytes], body_fd: int
    ) -> None:
        if body_fd >= 0:
            self.channel.send_fd(frame, body_fd)  # may raise OSError: nothing is recorded then
        else:
            self.channel.send(frame)
        self.inflight[rid] = exchange
        self.dispatched += 1

    def send(self, kind: int, rid: int, payload: bytes = b"") -> None:
        self.channel.send(p.frame(kind, rid, payload))

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
        inflight = self.inflight
        try:
            for kind, rid, payload in frames:
                if kind in _FINAL:  # first: the common case, a whole response
                    exchange = inflight.pop(rid, None)
                    if self.timed_out:  # a timed-out request that finished after all
                        self.timed_out.discard(rid)
                        self.stacks_pending.discard(rid)
                    event = _final_event(kind, payload, exchange)
                    if exchange is None:
                        continue
                    if exchange.rss_change is not None and exchange.facts is not None:
                        self._note_growth(exchange.facts.fields[1], exchange.rss_change)
                    exchange.feed(*event)
                    self.busy -= 1
                    self.completed += 1
                    self.events.on_slot_free(self)
                elif kind == p.DATA:
                    exchange = inflight.get(rid)
                    if exchange is not None:
                        exchange.received += len(payload)
                        exchange.feed(ev.DATA, payload)
                elif kind == p.START:
                    start = p.decode_start(payload)
                    exchange = inflight.get(rid)
                    if exchange is not None:
                        exchange.feed(ev.START, start)
                elif kind == p.TAKEOVER:
                    if payload:
                        raise p.ProtocolError("TAKEOVER with a payload")
                    exchange = inflight.get(rid)
                    if exchange is not None:
                        exchange.feed(ev.TAKEOVER)
                elif kind == p.PROGRESS:
                    exchange = inflight.get(rid)
                    if exchange is not None:
                        exchange.last_progress = self.loop.time()
                elif kind == p.FILE:
                    offset, count = p.decode_file(payload)
                    fd = self.channel.take_fd()
                    exchange = inflight.get(rid)
                    if exchange is None:
                        os.close(fd)
                    else:
                        exchange.feed(ev.FILE, (fd, offset, count))
                elif kind == p.HELLO:
                    pid, threads = p.decode_hello(payload)
                    if pid != self.pid or self.state is not WorkerState.STARTING:
                        raise p.ProtocolError(f"unexpected HELLO from pid {pid}")
                    self.threads = threads
                    self.state = WorkerState.READY
                    self.ready_at = time.monotonic()
                    if not self.ready_future.done():
                        self.ready_future.set_result(None)
                    self.events.on_ready(self)
                elif kind == p.STATUS:
                    rss, _served, flags = p.decode_status(payload)
                    self.rss = rss
                    self.events.on_status(self, rss, flags)
                elif kind == p.STACK:
                    self.events.on_stack(self, rid, p.decode_text(payload))
        except p.ProtocolError as exc:
            self._die(f"protocol error: {exc}")
            self.kill(signal.SIGKILL)

    def _note_growth(self, target: bytes, kib: int) -> None:
        path = normalise_path(target)
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
        if isinstance(exc, p.ProtocolError):
            self.kill(signal.SIGKILL)
            self._die(f"protocol error: {exc}")
        else:
            self._die("connection closed" if exc is None else f"connection error: {exc}")

    def _on_sentinel(self) -> None:
        self._die("process exited")

    def _die(self, reason: str) -> None:
        """The worker is gone (or disowned): fail what it had in flight, release everything."""
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
        self.inflight.clear()
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
