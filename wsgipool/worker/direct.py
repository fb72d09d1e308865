"""A streamed response written by the worker straight to the client's socket.

For a large streamed response, carrying every byte through the main process
costs it three copies per byte and a frame per chunk; the main process hands
the worker a duplicate of the client socket instead (as it sends files with
sendfile in the other direction), and the worker writes the response itself.
The socket's own backpressure replaces credit: a slow client makes this
thread wait, never anyone's memory grow, and a client that takes no bytes
for the send timeout the SOCKET frame carried is cut (the connection reset,
the app's iterable closed) as the main process would.  The framing is this module's job:
Content-Length when the app declared one, else chunked, or close-delimited
for HTTP/1.0; DONE tells the main process whether the connection may be reused.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

from wsgipool.clientsock import queued, reset_on_close
from wsgipool.protocol import unsent
from wsgipool.worker.head import connection_line, head_lines

__all__ = ["ClientGone", "DirectWriter", "SendTimedOut"]

#: How often a long transfer tells the main process it is alive (for --timeout).
PROGRESS_EVERY = 0.25


class ClientGone(Exception):
    """The client closed the connection during a direct write."""


class SendTimedOut(ClientGone):
    """The client accepted no bytes for the send timeout: the connection is being reset."""


class DirectWriter:
    def __init__(
        self,
        fd: int,
        version: str,
        keep_alive: bool,
        status: str,
        headers: list[tuple[str, str]],
        progress: Callable[[], None],
        send_timeout: float | None = None,
    ) -> None:
        self.sock = socket.socket(fileno=fd)
        self._progress = progress
        self._last_progress = self._last_sent = time.monotonic()
        self._send_timeout = send_timeout
        self.status = int(status[:3])
        lines, declared = head_lines(version, status, headers)
        self.declared = declared
        self.chunked = declared is None and version == "1.1"
        # Only a response whose end the client can see may leave the connection open.
        self.keep_alive = keep_alive and (declared is not None or self.chunked)
        if declared is not None:
            lines.append(f"Content-Length: {declared}\r\n")
        elif self.chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append(connection_line(version, self.keep_alive).decode("latin-1"))
        lines.append("\r\n")
        self._head = "".join(lines).encode("latin-1")
        self.body_written = 0  # body bytes, without chunk framing
        self.written = 0  # everything, head and framing included

    def write(self, chunks: list[bytes]) -> None:
        """Write body chunks (the head goes with the first); ClientGone if the client left."""
        parts: list[bytes] = []
        if self._head:
            parts.append(self._head)
            self._head = b""
        for chunk in chunks:
            piece = chunk
            if self.declared is not None:  # a longer body is cut at the declared length
                piece = chunk[: max(self.declared - self.body_written, 0)]
            if not piece:
                continue
            self.body_written += len(piece)
            if self.chunked:
                parts += (f"{len(piece):x}\r\n".encode("ascii"), piece, b"\r\n")
            else:
                parts.append(piece)
        self._send(parts)

    def finish(self) -> bool:
        """End the response; whether the client can reuse the connection."""
        parts = [self._head] if self._head else []
        self._head = b""
        if self.chunked:
            parts.append(b"0\r\n\r\n")
        if parts:
            self._send(parts)
        complete = self.declared is None or self.body_written == self.declared
        return self.keep_alive and complete

    def close(self) -> None:
        self.sock.close()

    def _send(self, parts: list[bytes]) -> None:
        while parts:
            try:
                sent = self.sock.sendmsg(parts)
            except BlockingIOError:
                self._wait_writable()
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ClientGone(str(exc)) from None
            self.written += sent
            parts = unsent(parts, sent)
            self._last_sent = time.monotonic()
            self._tick()

    def _wait_writable(self) -> None:
        timeout = self._send_timeout
        backlog = queued(self.sock) if timeout is not None else -1
        while True:
            _, writable, _ = select.select([], [self.sock], [], PROGRESS_EVERY)
            self._tick()
            if writable:
                return
            if timeout is None:
                continue
            now_queued = queued(self.sock)
            if now_queued != backlog:  # the client is draining the kernel's buffer
                backlog = now_queued
                self._last_sent = time.monotonic()
            elif time.monotonic() - self._last_sent >= timeout:
                # Reset, not a FIN queued behind bytes the client will never take.
                reset_on_close(self.sock)
                raise SendTimedOut(
                    f"client accepted no response bytes for {timeout:g}s (--send-timeout); "
                    "connection reset"
                )

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self._progress()
