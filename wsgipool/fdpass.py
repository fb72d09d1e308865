"""File descriptors over AF_UNIX sockets: the ancillary data both ends of a channel
build and parse. Shared by the main process's and the worker's channels so that
the two sides agree on one limit and one layout."""

from __future__ import annotations

import array
import socket

__all__ = ["ANC_SIZE", "MAX_FDS", "received_fds", "rights"]

#: Most descriptors one recvmsg() accepts; more are truncated (MSG_CTRUNC).
MAX_FDS = 32
#: The ancillary buffer size to pass to recvmsg() for MAX_FDS descriptors.
ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def rights(*fds: int) -> list[tuple[int, int, bytes]]:
    """Ancillary data for sendmsg() that passes a copy of each of `fds` (at most MAX_FDS)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in recvmsg()'s ancillary data, in the order they were sent."""
    out: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
            out.extend(fds)
    return out
