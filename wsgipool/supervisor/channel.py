"""The main process's end of a worker (or template) socketpair, driven by the event loop.

Frames written during one loop iteration leave together in one sendmsg(), which
under load is many requests per system call, with the descriptors some of them
carry (up to `MAX_FDS` per call: as many as the peer's recvmsg() takes).  Reads
take whatever is there in one recvmsg() and hand every whole frame to the owner
at once.  Anything the
peer sends that is not a valid frame closes the channel: the owner decides what
that means for the peer (a worker is killed and replaced).

Descriptors the peer passes wait in `fds` until a frame claims them.  The
owner says how many may wait unclaimed once the frames of a read are handled
(`max_fds`: a worker's FILE frame may still be arriving behind its descriptor);
more closes the channel with a ProtocolError and every queued descriptor, so a
peer that sends descriptors nobody asked for holds at most that many.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections import deque
from collections.abc import Callable
from itertools import chain

from wsgipool import protocol as p
from wsgipool.fdpass import ANC_SIZE, MAX_FDS, received_fds, rights

__all__ = ["AsyncChannel"]

_RECV_SIZE = 256 * 1024
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # a plain int: IntFlag's & runs Python code per read
_BLOCKED = (BlockingIOError, InterruptedError)

FrameHandler = Callable[[list[tuple[int, int, bytes]]], None]
CloseHandler = Callable[[BaseException | None], None]


class AsyncChannel:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        accept: frozenset[int],
        on_frames: FrameHandler,
        on_close: CloseHandler,
        max_fds: int = 0,
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._fileno = sock.fileno()
        self._decoder = p.FrameDecoder(accept)
        self._on_frames = on_frames
        self._on_close = on_close
        # Outgoing segments, each one sendmsg() with the descriptors it carries (copies
        # this channel owns). The first may have been sent in part (then `_writing`):
        # its descriptors are gone with its first bytes, and no new ones join it.
        self._out: deque[list[bytes]] = deque()
        self._out_fds: deque[list[int]] = deque()
        self._flush_scheduled = False
        self._writing = False
        self.fds: deque[int] = deque()
        self._max_fds = max_fds
        self.closed = False
        self._inbox = bytearray(_RECV_SIZE)
        self._inbox_view = memoryview(self._inbox)
        loop.add_reader(self._fileno, self._on_readable)

    # -- writing -----------------------------------------------------------------

    def send(self, data: bytes | list[bytes]) -> None:
        """Queue a frame (or its parts); frames leave at the end of this loop iteration."""
        if self.closed:
            return
        parts = data if isinstance(data, list) else [data]
        if self._out:
            self._out[-1].extend(parts)
        else:
            self._out.append(list(parts))
            self._out_fds.append([])
        self._schedule_flush()

    def send_fd(self, data: bytes | list[bytes], fd: int) -> None:
        """Queue a frame that carries a copy of `fd`; the caller keeps its own."""
        if self.closed:
            return
        copy = os.dup(fd)  # first: if it fails (EMFILE), nothing is queued
        parts = data if isinstance(data, list) else [data]
        out = self._out
        if out and len(self._out_fds[-1]) < MAX_FDS and not (len(out) == 1 and self._writing):
            out[-1].extend(parts)
            self._out_fds[-1].append(copy)
        else:
            out.append(list(parts))
            self._out_fds.append([copy])
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        fds = self._out_fds
        try:
            while out:
                parts = out[0]
                copies = fds[0]
                if len(parts) > 256:
                    parts = [b"".join(parts)]
                if copies:
                    sent = self._sock.sendmsg(parts, rights(*copies))
                    fds[0] = []
                    for fd in copies:
                        os.close(fd)
                else:
                    sent = self._sock.sendmsg(parts)
                rest = p.unsent(parts, sent)
                if rest:
                    out[0] = rest
                    self._wait_writable()
                    return
                out.popleft()
                fds.popleft()
        except _BLOCKED:
            self._wait_writable()
            return
        except OSError as exc:
            self._close(exc)
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fileno)

    def _wait_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fileno, self._flush)

    # -- reading -----------------------------------------------------------------

    def _on_readable(self) -> None:
        self._read(True)

    def drain(self) -> None:
        """Hand over every frame the peer sent before it exited, without closing on EOF.

        A worker's exit can be seen (its pidfd) before the last frames it wrote
        are read; those frames still count (a response it wrote to the client).
        """
        while not self.closed and self._read(False):
            pass

    def _read(self, eof_closes: bool) -> bool:
        """One recvmsg(), its frames handed over; False if nothing more is there now."""
        try:
            size, ancdata, flags, _ = self._sock.recvmsg_into([self._inbox_view], ANC_SIZE)
        except _BLOCKED:
            return False
        except OSError as exc:
            self._close(exc)
            return False
        if ancdata:
            self.fds.extend(received_fds(ancdata))
        if flags & _MSG_CTRUNC:
            self._close(p.ProtocolError("descriptors from the peer were truncated"))
            return False
        if not size:
            if eof_closes:
                self._close(None)
            return False
        try:
            frames = self._decoder.feed(self._inbox_view[:size])
        except p.ProtocolError as exc:
            self._close(exc)
            return False
        if frames:
            self._on_frames(frames)
        if len(self.fds) > self._max_fds and not self.closed:
            self._close(p.ProtocolError(f"{len(self.fds)} descriptors that no frame claimed"))
        return True

    def take_fd(self) -> int:
        try:
            return self.fds.popleft()
        except IndexError:
            raise p.ProtocolError("a frame announced a descriptor that did not arrive") from None

    # -- closing -----------------------------------------------------------------

    def _close(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.close()
        self._on_close(exc)

    def close(self) -> None:
        """Stop reading and writing; queued frames are dropped, descriptors closed."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fileno)
        if self._writing:
            self._loop.remove_writer(self._fileno)
        for fd in [*chain.from_iterable(self._out_fds), *self.fds]:
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
        self._out.clear()
        self._out_fds.clear()
        self.fds.clear()
        self._sock.close()
