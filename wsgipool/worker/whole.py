"""A whole response written by the worker straight to the client's socket.

For a request on the fast lane (fastpath.py) the main process sends the
client's socket with the REQUEST (FLAG_CLIENT_SOCKET). A response that is whole
when the app is done (at most the 64 KiB a worker holds back) is written here
instead of travelling back as a RAW frame: the main process neither reads,
checks nor writes its bytes, and the kernel's work of the send (waking the
client) is this process's. The worker says PROGRESS before its first byte and
DONE (bytes, status, whether the connection may stay) after it has closed its
copy of the socket, so nothing it does can reach the connection's next request.
The worker never waits for the client: what its socket does not take at once
travels back with DONE and the main process writes it, as it writes RAW
answers, under the send deadline.

What stays the main process's: it sends the socket only while nothing of its
own is unsent; requests that arrive meanwhile wait for DONE; DONE decides
keep-alive. A worker that dies before PROGRESS wrote nothing (its request may
run again); after it, the socket's byte count against the one PROGRESS named
says whether it wrote none, all or part of the response (run again, answered,
cut); an answer of the main process's own (a timeout) waits until the worker
has read its CANCEL, after which it writes nothing (fastpath.SETTLE_GRACE).
"""

from __future__ import annotations

import os

from wsgipool.protocol import unsent
from wsgipool.worker.head import connection_line

__all__ = ["connection_head", "write_whole"]

_GONE = (BrokenPipeError, ConnectionResetError)


def connection_head(head: bytes, version: str, keep_alive: bool) -> bytes:
    """`head` with the Connection header the version needs to say `keep_alive`."""
    line = connection_line(version, keep_alive)
    return head[:-2] + line + b"\r\n" if line else head


def write_whole(fd: int, data: list[bytes]) -> tuple[int, bytes | None]:
    """Write what of `data` the client socket `fd` takes now: (bytes written, the rest).

    Never waits: the socket is non-blocking (it shares the main process's open
    file), and what does not fit in the socket's buffer at once is returned for
    the main process to write, under its send deadline, so a client that reads
    slowly or not at all holds no thread of this worker. The rest is None if
    the client is gone.
    """
    total = sum(map(len, data))
    written = 0
    while written < total:
        try:
            sent = os.writev(fd, data)
        except BlockingIOError:
            break
        except _GONE:
            return written, None
        written += sent
        data = unsent(data, sent)
    return written, b"".join(data)
