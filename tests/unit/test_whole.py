"""A whole response written to the client socket by the worker (wsgipool/worker/whole.py):
the Connection header, and the write over a real socketpair that is slow, stalled or gone."""

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


def test_a_slow_reader_gets_every_byte() -> None:
    ours, theirs = _pair()
    data = os.urandom(300_000)
    got = bytearray()

    def read() -> None:
        while chunk := theirs.recv(1000):
            got.extend(chunk)
            time.sleep(0.0005)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert write_whole(ours.fileno(), [data[:1000], data[1000:]], 10.0) == (len(data), True)
    finally:
        ours.close()
        reader.join(10)
        theirs.close()
    assert bytes(got) == data


def test_a_reader_that_takes_nothing_is_given_up_after_the_send_timeout() -> None:
    ours, theirs = _pair()
    try:
        started = time.monotonic()
        written, complete = write_whole(ours.fileno(), [b"x" * 1_000_000], 0.3)
        assert not complete and 0 < written < 1_000_000
        assert time.monotonic() - started < 10
    finally:
        ours.close()
        theirs.close()


def test_a_reader_that_left_ends_the_write() -> None:
    ours, theirs = _pair()
    theirs.close()
    try:
        assert write_whole(ours.fileno(), [b"x" * 100_000], 10.0) == (0, False)
    finally:
        ours.close()
