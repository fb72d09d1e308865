"""The fast lane (wsgipool/fastpath.py): GETs on idle keep-alive connections served
without aiohttp's per-request objects, and everything around them unchanged.

Each test drives `wsgipool serve` (which has the lane)
over raw sockets, where the lane's own work shows: a request arriving behind one
on the lane, clients that leave while their request waits for a worker thread
or runs, the keep-alive timeout, a graceful stop, and the Connection header.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.e2e import rawhttp
from tests.polling import wait_for

ONE_THREAD = ("--workers", "1", "--threads", "1")


def _get(path: str, version: str = "1.1", headers: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: t\r\n{headers}\r\n".encode()


class _Reader:
    """Responses with a Content-Length, one after the other, from a keep-alive connection."""

    def __init__(self, sock: socket.socket, timeout: float = 20.0) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed after {self.buffer!r}"
        self.buffer += chunk

    def response(self) -> rawhttp.Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            self._fill()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = rest[length:]
        return rawhttp.parse_one(head + b"\r\n\r\n" + rest[:length])


def _read_response(sock: socket.socket) -> rawhttp.Response:
    """The one response the connection has (nothing may follow it)."""
    reader = _Reader(sock)
    response = reader.response()
    assert reader.buffer == b"", "bytes after the response: nothing was asked for"
    return response


def test_request_behind_a_lane_request_is_answered_in_order(run_server, tmp_path: Path):
    """The second request arrives while the first runs on the lane: it waits, then aiohttp
    serves it, in order, on the same connection."""
    server = run_server("streamapp:app", "--workers", "1", "--threads", "2")
    started = tmp_path / "started"
    go = tmp_path / "go"
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(_get(f"/slow?started={started}&until={go}"))
        wait_for(started.exists, timeout=20)
        sock.sendall(_get("/whoami"))
        time.sleep(0.2)  # the second is parsed and queued behind the first
        go.write_text("")
        reader = _Reader(sock)
        first = reader.response()
        second = reader.response()
    assert (first.status, first.body) == (200, b"slow-done")
    assert second.status == 200 and second.body.split()[0].isdigit()


def test_clients_that_leave_while_queued_or_running_free_their_places(run_server, tmp_path: Path):
    """GETs waiting on the lane for the only thread, a POST waiting on aiohttp's path,
    and a GET running: their clients leave; the queue and the thread are free after."""
    server = run_server("streamapp:app", *ONE_THREAD, "--queue-timeout", "10s")
    started = tmp_path / "started"
    go = tmp_path / "go"
    address = ("127.0.0.1", server.port)
    running = rawhttp.connect(address)
    running.sendall(_get(f"/slow?started={started}&until={go}"))
    wait_for(started.exists, timeout=20)
    waiting = []
    for request in (
        _get("/whoami"),
        _get("/whoami"),
        rawhttp.request_bytes("POST", "/whoami", body=b"x=1"),
    ):
        sock = rawhttp.connect(address)
        sock.sendall(request)
        waiting.append(sock)
    time.sleep(0.5)  # all three are queued
    for sock in waiting:
        sock.close()
    running.close()
    time.sleep(0.3)
    go.write_text("")  # the running request ends; its client is gone
    time.sleep(0.5)  # and the thread is idle: only a correct count lets the next one in
    began = time.monotonic()
    status, _headers, body = server.request("GET", "/whoami", timeout=30)
    assert status == 200, body
    # Served as soon as the thread was free, not after the queue timeout (10 s).
    assert time.monotonic() - began < 8


def test_a_post_on_the_lane_sees_what_the_handlers_path_gives(run_server):
    """A POST whose body comes in the packet of its head takes the lane; the same POST
    with its body sent later is the handler's: the app sees the same environ and body."""
    server = run_server("envapp:app", *ONE_THREAD)
    body = b"name=value&other=%20x"
    head = (
        "POST /form?q=1 HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        reader = _Reader(sock)
        sock.sendall(head + body)  # the lane's
        on_lane = reader.response()
        sock.sendall(head)
        time.sleep(0.3)  # the head is parsed alone: its body is still to come
        sock.sendall(body)
        on_handler = reader.response()
    assert (on_lane.status, on_handler.status) == (200, 200), server.log
    lane, handler = json.loads(on_lane.body), json.loads(on_handler.body)
    assert lane == handler
    assert lane["CONTENT_LENGTH"] == str(len(body))
    assert (lane["body_length"], lane["body_head"]) == (len(body), body.decode())


def test_keepalive_timeout_closes_a_connection_the_lane_served(run_server):
    server = run_server("streamapp:app", *ONE_THREAD, "--keepalive-timeout", "1")
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        for _ in range(3):
            sock.sendall(_get("/whoami"))
            assert _read_response(sock).status == 200
        began = time.monotonic()
        assert rawhttp.read_until_eof(sock, timeout=15) == b""
    assert time.monotonic() - began < 10


def test_graceful_stop_waits_for_a_lane_request(run_server, tmp_path: Path):
    server = run_server("streamapp:app", *ONE_THREAD)
    started = tmp_path / "started"
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(_get(f"/slow?started={started}&seconds=1.5"))
        wait_for(started.exists, timeout=20)
        server.signal(signal.SIGTERM)
        response = _read_response(sock)
    assert (response.status, response.body) == (200, b"slow-done")
    assert server.wait(30) == 0


def test_graceful_stop_answers_a_lane_request_it_hands_back(run_server, tmp_path: Path):
    """A stop that begins while a request is on the lane, whose answer the lane then
    hands to aiohttp's task (a streamed one): the task must still be there to write it."""
    server = run_server("streamapp:app", *ONE_THREAD, "--graceful-timeout", "10")
    started = tmp_path / "started"
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(_get(f"/slow?started={started}&seconds=1.5&size=200000"))
        wait_for(started.exists, timeout=20)
        server.signal(signal.SIGTERM)
        began = time.monotonic()
        response = rawhttp.parse_one(rawhttp.read_until_eof(sock, timeout=20))
    assert (response.status, len(response.body)) == (200, 200000)
    assert time.monotonic() - began < 8  # answered when the app was, not cut at the drain's end
    assert server.wait(30) == 0


@pytest.mark.parametrize(
    ("version", "headers", "line", "closes"),
    [
        ("1.1", "", None, False),
        ("1.1", "Connection: close\r\n", b"Connection: close", True),
        ("1.0", "", None, True),
        ("1.0", "Connection: keep-alive\r\n", b"Connection: keep-alive", False),
    ],
)
def test_connection_header_and_close_on_the_lane(
    run_server, version: str, headers: str, line: bytes | None, closes: bool
):
    server = run_server("streamapp:app", *ONE_THREAD)
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(_get("/whoami", version, headers))
        response = _read_response(sock)
        assert response.status == 200
        connection = [v for n, v in response.headers if n.lower() == b"connection"]
        assert connection == ([line.split(b": ")[1]] if line else [])
        if closes:
            assert rawhttp.read_until_eof(sock, timeout=10) == b""
        else:
            sock.sendall(_get("/whoami", version, headers))
            assert _read_response(sock).status == 200


def test_responses_the_lane_does_not_write_are_the_handlers(run_server):
    """A streamed response and one over the lane's size come back whole."""
    server = run_server("streamapp:app", *ONE_THREAD)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for size in (100, 100_000, 3 * 1024 * 1024):
            conn.request("GET", f"/big?size={size}")
            response = conn.getresponse()
            assert response.status == 200
            assert len(response.read()) == size
    finally:
        conn.close()


@pytest.mark.parametrize("executor_args", [ONE_THREAD, ("--workers", "0", "--threads", "2")])
def test_a_list_iterator_response_leaves_whole(run_server, executor_args):
    """An iterable whose iterator is a list's says when its last chunk comes: that chunk
    leaves with the end, so the response is whole (Content-Length, not chunked); an
    iterator that cannot tell is streamed chunk by chunk, as before."""
    server = run_server("streamapp:app", *executor_args)
    status, headers, body = server.request("GET", "/listed")
    assert (status, body) == (200, b"listed-body")
    assert headers.get("content-length") == "11"
    assert "transfer-encoding" not in headers
    status, headers, body = server.request("GET", "/generated")
    assert (status, body) == (200, b"generated-body")
    assert headers.get("transfer-encoding") == "chunked"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [(f"/{'a' * 400}", "", 414), ("/whoami", f"X-Big: {'b' * 400}\r\n", 431)],
)
def test_oversized_heads_after_a_lane_request_get_their_status(
    run_server, path: str, headers: str, status: int
):
    """The 414/431 rule measures each head's request line, the one after a lane request too."""
    server = run_server(
        "streamapp:app",
        *ONE_THREAD,
        "--limit-request-line",
        "200",
        "--limit-request-field-size",
        "200",
    )
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(_get("/whoami"))
        assert _Reader(sock).response().status == 200
        sock.sendall(_get(path, headers=headers))
        response = rawhttp.parse_one(rawhttp.read_until_eof(sock))
    assert response.status == status
