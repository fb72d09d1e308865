"""Clients that stall, shared by test_deadlines and integration/test_deadlines_embedded."""

from __future__ import annotations

import socket
from pathlib import Path

_TCP_CLOSE = 7
_TCP_CLOSE_WAIT = 8


def slow_reader(port: int, path: str) -> socket.socket:
    """A client that asks for `path` and never reads the answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def is_cut(sock: socket.socket) -> bool:
    """The server closed or reset this connection (read without consuming anything)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


def closed_marks(path: Path) -> int:
    return path.read_text().count("closed") if path.exists() else 0


def stall_upload(port: int, chunked: bool) -> socket.socket:
    """Send a head and 2 MiB of a larger body (spooled to a file), then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    part = b"u" * (2 << 20)
    if chunked:
        head = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head + b"%x\r\n" % len(part) + part + b"\r\n")
    else:
        head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (10 << 20)
        sock.sendall(head + part)
    return sock
