"""Three facts about a client socket that the main process and the worker both need.

Kept apart from deadlines.py so that a worker, which writes large responses to
the client socket itself, imports neither asyncio nor aiohttp for them: every
module the template imports is memory each worker maps (see docs/architecture.md).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import socket
import struct
import sys
from typing import Any

__all__ = ["queued", "reset_on_close", "written_since", "written_total"]

_LINGER_RESET = struct.pack("ii", 1, 0)

# struct tcp_info (linux/tcp.h): tcpi_notsent_bytes (u32) and tcpi_bytes_sent (u64, 4.19+).
_NOTSENT = struct.Struct("=I")
_NOTSENT_AT = 144
_SENT = struct.Struct("=Q")
_SENT_AT = 200

# Linux's SIOCOUTQ (the same number as TIOCOUTQ): bytes in a socket's send queue.
_SIOCOUTQ = 0x5411 if sys.platform.startswith("linux") else None


def queued(sock: Any) -> int:
    """Bytes the kernel holds for the client (unsent or unacknowledged); -1 if unknown.

    A client draining the kernel's buffer is taking bytes, even while the
    socket is not yet writable again: without this, a slow but steady reader
    behind a large send buffer would look stalled.
    """
    if _SIOCOUTQ is None or sock is None:
        return -1
    out = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), _SIOCOUTQ, out, True)
    except (OSError, ValueError):
        return -1
    return out[0]


def reset_on_close(sock: Any) -> None:
    """Make the coming close() a reset: the kernel drops what the client never took."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def written_total(fd: int) -> int:
    """Bytes ever written to the TCP socket `fd` (sent, retransmissions included, plus
    not yet sent); -1 if unknown (not TCP, an old kernel).

    Compared, after a worker died, with the count it took before its write, it tells the
    main process how much of a whole write reached the socket (fastpath.py).
    """
    sock = socket.socket(fileno=fd)
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return -1
    finally:
        sock.detach()
    if len(info) < _SENT_AT + _SENT.size:
        return -1
    return int(_SENT.unpack_from(info, _SENT_AT)[0] + _NOTSENT.unpack_from(info, _NOTSENT_AT)[0])


def written_since(fd: int, intent: tuple[int, int, int] | None) -> int:
    """Bytes of a whole write that reached the socket `fd`, from the count its PROGRESS
    named (`intent`: count before, size, status); -1 if unknown.

    0 means none of it (the request may be answered, or run, again); the size, all
    of it; anything else, a part (the connection must be cut).
    """
    before = -1 if intent is None or fd < 0 else intent[0]
    return written_total(fd) - before if before >= 0 else -1
