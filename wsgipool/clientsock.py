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
from typing import Any, Final

__all__ = [
    "AGAIN",
    "ANSWERED",
    "CUT",
    "queued",
    "reset_on_close",
    "whole_write_outcome",
    "written_total",
]

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
    main process how much of a whole write reached the socket (whole_write_outcome).
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


#: What became of a whole write whose worker died after PROGRESS (whole_write_outcome).
AGAIN: Final = 0  # none of it reached the socket: answer, or run, the request again
ANSWERED: Final = 1  # all of it: the request is answered, its connection may stay
CUT: Final = 2  # a part, or unknown: only cutting the connection keeps the client safe


def whole_write_outcome(fd: int, intent: tuple[int, int, int] | None) -> int:
    """AGAIN, ANSWERED or CUT: how much of a whole write reached the socket `fd`, by
    the count its PROGRESS named (`intent`: count before, size, status).

    One verdict for the fast lane (fastpath.py) and the handler (response.py),
    whose workers write the same way (worker/whole.py).
    """
    if intent is None or fd < 0 or intent[0] < 0:
        return CUT
    total = written_total(fd)
    if total < 0:
        return CUT
    written = total - intent[0]
    if written == 0:
        return AGAIN
    return ANSWERED if written == intent[1] else CUT
