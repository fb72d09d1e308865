"""The worker's end of its socketpair: blocking reads by one thread, locked writes by many.

Descriptors arrive with SCM_RIGHTS and are queued in arrival order; a frame
that says it carries one takes the oldest.  The kernel delivers a descriptor
with the first byte of the sendmsg() that carried it, so the order matches.
"""

from __future__ import annotations

import socket
import threading
from collections import deque

from wsgipool import protocol as p
from wsgipool.fdpass import ANC_SIZE, received_fds, rights

__all__ = ["BlockingChannel", "ChannelClosed"]

_RECV_SIZE = 256 * 1024
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # a plain int: IntFlag's & runs Python code per read


class ChannelClosed(Exception):
    """The main process went away, or a descriptor was lost."""


class BlockingChannel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.fds: deque[int] = deque()
        self._lock = threading.Lock()
        self._inbox = memoryview(bytearray(_RECV_SIZE))

    def recv(self) -> memoryview:
        """The next bytes from the main process (valid until the next call); fds go to `fds`."""
        size, ancdata, flags, _ = self.sock.recvmsg_into([self._inbox], ANC_SIZE)
        if ancdata:
            self.fds.extend(received_fds(ancdata))
        if flags & _MSG_CTRUNC:
            raise ChannelClosed("a descriptor sent by the main process was truncated")
        if not size:
            raise ChannelClosed("the main process closed the connection")
        return self._inbox[:size]

    def send(self, parts: list[bytes], fd: int | None = None) -> None:
        """Send frames whole; with `fd`, the descriptor leaves with their first byte."""
        if len(parts) > 256:  # stay far below IOV_MAX
            parts = [b"".join(parts)]
        with self._lock:
            if fd is not None:
                sent = self.sock.sendmsg(parts, rights(fd))
                parts = p.unsent(parts, sent)
            while parts:
                sent = self.sock.sendmsg(parts)
                parts = p.unsent(parts, sent)

    def take_fd(self) -> int:
        try:
            return self.fds.popleft()
        except IndexError:
            raise ChannelClosed("a frame announced a descriptor that did not arrive") from None
