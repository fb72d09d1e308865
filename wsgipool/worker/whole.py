"""A whole response written by the worker straight to the client's socket.

For a request on the fast lane (fastpath.py) the main process sends the
client's socket with the REQUEST (FLAG_CLIENT_SOCKET). A response that is whole
when the app is done (at most the 64 KiB a worker holds back) is written here
instead of travelling back as a RAW frame: the main process neither reads,
checks nor writes its bytes, and the kernel's work of the send (waking the
client) is this process's. The worker says PROGRESS before its first byte and
DONE (bytes, status, whether the connection may stay) after it has closed its
copy of the socket, so nothing it does can reach the connection's next request.

What stays the main process's: it sends the socket only while nothing of its
own is unsent; requests that arrive meanwhile wait for DONE; DONE decides
keep-alive. A worker that dies before PROGRESS wrote nothing (its request may
run again), after it the connection is cut; an answer of the main process's
own (a timeout) waits until the worker has read its CANCEL, after which it
writes nothing (fastpath.SETTLE_GRACE).
"""

from __future__ import annotations

import os
import select
import socket
import time

from wsgipool.clientsock import reset_on_close

__all__ = ["connection_head", "write_whole"]

_CLOSE_LINE = b"Connection: close\r\n\r\n"
_KEEP_LINE = b"Connection: keep-alive\r\n\r\n"
_GONE = (BrokenPipeError, ConnectionResetError)


def connection_head(head: bytes, version: str, keep_alive: bool) -> bytes:
    """`head` with the Connection header the version needs to say `keep_alive`, as
    aiohttp writes it: "close" on HTTP/1.1, "keep-alive" on HTTP/1.0, else none."""
    if version == "1.1":
        return head if keep_alive else head[:-2] + _CLOSE_LINE
    return head[:-2] + _KEEP_LINE if keep_alive else head


def write_whole(fd: int, data: list[bytes], send_timeout: float | None) -> tuple[int, bool]:
    """Write `data` to the client socket `fd`: (bytes written, whether all of them were).

    The socket is non-blocking (it shares the main process's open file). A
    client that takes no bytes for `send_timeout` seconds is reset, as the
    main process's send deadline would; one that left ends the write.
    """
    total = sum(map(len, data))
    written = 0
    last = 0.0
    while True:
        try:
            sent = os.writev(fd, data)
        except BlockingIOError:
            sent = 0
        except _GONE:
            return written, False
        written += sent
        if written >= total:
            return written, True
        data = _rest(data, sent)
        now = time.monotonic()
        if sent or not last:
            last = now
        if send_timeout is not None and now - last >= send_timeout:
            sock = socket.socket(fileno=fd)  # only to set SO_LINGER: the caller closes fd
            reset_on_close(sock)
            sock.detach()
            return written, False
        wait = 0.25 if send_timeout is None else max(0.0, min(0.25, last + send_timeout - now))
        select.select([], [fd], [], wait)


def _rest(data: list[bytes], sent: int) -> list[bytes]:
    """The parts of `data` after its first `sent` bytes."""
    for index, part in enumerate(data):
        if sent < len(part):
            return [part[sent:], *data[index + 1 :]]
        sent -= len(part)
    return []
