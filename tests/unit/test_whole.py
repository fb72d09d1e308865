"""A whole response written to the client socket by the worker (wsgipool/worker/whole.py):
the Connection header, and the write over a real socketpair that takes all, part or none
of it, or is gone."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from wsgipool.worker.whole import connection_head, write_whole

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("version", "keep_alive", "line"),
    [
        ("1.1", True, b""),
        ("1.1", False, b"Connection: close\r\n"),
        ("1.0", True, b"Connection: keep-alive\r\n"),
        ("1.0", False, b""),
    ],
)
def test_the_connection_header_says_what_the_version_does_not(
    version: str, keep_alive: bool, line: bytes
) -> None:
    assert connection_head(HEAD, version, keep_alive) == HEAD[:-2] + line + b"\r\n"


def _pair(buffer: int = 4096) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    ours.setblocking(False)  # as the main process's client sockets are
    return ours, theirs


def test_what_the_socket_takes_at_once_is_written_and_the_rest_returned() -> None:
    """A reader that takes nothing: the write returns at once (no thread waits for a
    client), with every byte either written or in the rest, in order."""
    ours, theirs = _pair()
    data = os.urandom(300_000)
    try:
        started = time.monotonic()
        written, rest = write_whole(ours.fileno(), [data[:1000], data[1000:]])
        assert time.monotonic() - started < 5
        assert rest is not None and 0 < written < len(data)
        assert data[:written] + rest == data
        got = bytearray()

        def read() -> None:
            while chunk := theirs.recv(65536):
                got.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        ours.setblocking(True)
        ours.sendall(rest)  # what the main process does with it
    finally:
        ours.close()
    reader.join(10)
    theirs.close()
    assert bytes(got) == data


def test_a_response_that_fits_is_written_whole() -> None:
    ours, theirs = _pair(1 << 20)
    try:
        assert write_whole(ours.fileno(), [b"head\r\n\r\n", b"body"]) == (12, b"")
        assert theirs.recv(100) == b"head\r\n\r\nbody"
    finally:
        ours.close()
        theirs.close()


def test_a_reader_that_left_ends_the_write() -> None:
    ours, theirs = _pair()
    theirs.close()
    try:
        assert write_whole(ours.fileno(), [b"x" * 100_000]) == (0, None)
    finally:
        ours.close()
