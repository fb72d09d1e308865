"""Whole responses a worker writes to the client socket itself (wsgipool/worker/whole.py).

A GET or HEAD on the fast lane, and a request that never runs again (a POST) on
the handler's path, carry the client's socket to its worker, which writes a
whole response to it and reports DONE. These tests look from outside:
the worker really holds the client's socket (and does not where it may not),
every response shape leaves a keep-alive connection usable, a timeout is still
a 504 with nothing after it, and the app runs once.
"""

from __future__ import annotations

import http.client
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps import directapp
from tests.conftest import free_port, http_get
from tests.e2e import rawhttp
from tests.polling import wait_for

ONE_THREAD = ("--workers", "1", "--threads", "1")


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def test_the_worker_holds_the_client_socket_of_a_lane_request(run_server):
    """The app sees its own client among the worker's sockets, request after request
    on one keep-alive connection, the connection's first included; so do a POST
    whose body came with its head (the lane's too) and one whose body did not (the
    handler's: it never runs again); a GET with a body (the handler's, and it may
    run again) does not."""
    server = run_server("directapp:app", *ONE_THREAD)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        answers = []
        for _ in range(4):
            conn.request("GET", "/holds-client")
            response = conn.getresponse()
            answers.append((response.status, response.read()))
        assert answers == [(200, b"held")] * 4, answers
        conn.request("POST", "/holds-client", body=b"a body")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"held")
        conn.request("POST", "/holds-client", body=b"x" * (200 * 1024))  # over the lane's
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"held")
        conn.request("GET", "/holds-client", body=b"a body")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"not held")
    finally:
        conn.close()


def test_with_an_access_log_the_main_process_writes_the_response(run_server, tmp_path):
    """The access line names the response's head, which then must pass the main process."""
    server = run_server("directapp:app", *ONE_THREAD, "--access-logfile", str(tmp_path / "a"))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(3):
            conn.request("GET", "/holds-client")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"not held")
    finally:
        conn.close()


def test_every_whole_response_shape_leaves_the_connection_usable(run_server):
    """Empty, small, larger than the lane's own 16 KiB, HEAD, 204 and 304 bodies, one after
    the other on one connection (a framing mistake would garble the next), then a body
    shorter than its Content-Length, which must end the connection."""
    server = run_server("directapp:app", *ONE_THREAD)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for method, path, status, size in [
            ("GET", "/whole?size=0", 200, 0),
            ("GET", "/whole?size=13", 200, 13),
            ("GET", "/whole?size=40000", 200, 40000),
            ("HEAD", "/whole?size=500", 200, 0),
            ("GET", "/whole?size=5&status=204+No+Content", 204, 0),
            ("GET", "/whole?size=5&status=304+Not+Modified", 304, 0),
            ("GET", "/whole?size=60000", 200, 60000),
        ]:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            assert (response.status, len(body)) == (status, size), path
            if method == "HEAD":
                assert response.getheader("Content-Length") == "500"
            if status == 200 and method == "GET":
                assert response.getheader("Content-Length") == str(size)
        conn.request("GET", "/short")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        conn.close()


def test_pipelined_requests_behind_a_direct_response_are_answered_in_order(run_server):
    """Three requests in one packet: the first is the lane's (its worker writes it); the
    others wait for its DONE and follow it, in order, on the same connection."""
    server = run_server("directapp:app", *ONE_THREAD)
    last = b"HEAD /whole?size=7 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(_get("/whole?size=3") + _get("/whole?size=30000") + last)
        data = rawhttp.read_until_eof(sock, timeout=20)
    first = rawhttp.parse_one(data)
    second = rawhttp.parse_one(first.rest)
    third = rawhttp.parse_one(second.rest, "HEAD")
    assert [r.status for r in (first, second, third)] == [200, 200, 200]
    assert [len(r.body) for r in (first, second, third)] == [3, 30000, 0]
    assert third.header("content-length") == "7"
    assert third.rest == b""


@pytest.mark.parametrize(
    "request_bytes",
    [
        _get("/sleep?s=4"),  # the lane's
        # the handler's: a POST's worker holds the client socket too
        b"POST /sleep?s=4 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    ],
    ids=["GET", "POST"],
)
def test_a_timeout_is_still_a_504_and_the_worker_writes_nothing_after_it(
    run_server, request_bytes: bytes
):
    """The worker holds the client socket when the request times out: the main process
    answers 504 once the worker has read its CANCEL, and the app's late response never
    reaches the client."""
    server = run_server("directapp:app", *ONE_THREAD, "--timeout", "1")
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        sock.sendall(request_bytes)
        response = rawhttp.read_response(sock, timeout=20)
        assert response.status == 504
        assert time.monotonic() - started < 15
        sock.settimeout(6)  # past the app's 4 s
        try:
            rest = sock.recv(65536)
        except TimeoutError:
            rest = b""
        assert rest == b"", rest


def test_posts_on_one_connection_each_get_their_whole_response(run_server):
    """POSTs whose worker writes the response, each body read whole first, keep-alive
    between them; larger than a socket takes at once, so DONE brings a rest."""
    server = run_server("directapp:app", *ONE_THREAD)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for size in (0, 13, 60000, 5):
            conn.request("POST", f"/whole?size={size}", body=b"x" * 70000)
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, directapp.chunk_at(0, size))
    finally:
        conn.close()


def test_clients_that_leave_do_not_stop_the_next(run_server):
    """Twenty clients that close right after their GET (the worker may be writing to
    one, the others wait in the queue and give up their places): the next client of
    the same worker thread is answered at once. (A place given up did not wake the
    queue behind it, and the next request waited for the queue's timeout.)"""
    server = run_server("directapp:app", *ONE_THREAD)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(_get("/whole?size=50000"))
    status, _headers, body = server.request("GET", "/whole?size=11", timeout=20)
    assert (status, len(body)) == (200, 11), server.log
    assert "Traceback" not in server.log


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_client_that_reads_its_answer_and_leaves_is_counted_as_answered(run_server, method):
    """The worker writes the response, the client reads it and closes before the
    worker's DONE has been read by the main process: the request was answered, and
    the metrics say so (they counted it aborted, or not at all, when the
    connection's loss was handled first). A POST's handler, cancelled by aiohttp
    when its client leaves, waits for that DONE."""
    metrics = free_port()
    server = run_server("directapp:app", *ONE_THREAD, "--metrics-bind", f"127.0.0.1:{metrics}")
    request = _get("/whole?size=13", method)
    if method == "POST":
        request = request[:-2] + b"Content-Length: 2\r\n\r\nhi"
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)
            assert rawhttp.read_response(sock).status == 200
    counts = {}

    def all_counted() -> bool:
        status, body = http_get(metrics, "/metrics")
        assert status == 200
        counts.clear()
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "wsgipool_http_requests_total":
                    counts[sample.labels["status"]] = sample.value
        return sum(counts.values()) >= 40

    assert wait_for(all_counted, 20), counts
    assert counts == {"2xx": 40}, counts


def _pipeline(port: int, count: int, size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fills fast
    sock.sendall(_get(f"/whole?size={size}") * count)
    return sock


@pytest.mark.parametrize(
    "request_bytes",
    [
        _get("/whole?size=60000"),  # the lane's
        b"POST /whole?size=60000 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["GET", "POST"],
)
def test_a_client_that_never_reads_holds_no_worker_thread(run_server, request_bytes: bytes):
    """Requests for 60,000 bytes sent one by one, each once the one before was answered
    (so each is a request whose worker writes to the socket: a lane GET, or a POST on
    the handler's path), by a client that never reads: the socket's buffers fill, and
    what the worker cannot write at once goes back to the main process (DONE's rest).
    The one worker thread stays free for the next client, not held until the send
    deadline (60 s) by a worker waiting for the reader."""
    server = run_server("directapp:app", *ONE_THREAD)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.settimeout(30)
    hog.connect(("127.0.0.1", server.port))
    try:
        for _ in range(150):  # 9 MB: more than the buffers of a connection nobody reads
            hog.sendall(request_bytes)
            time.sleep(0.02)
        started = time.monotonic()
        status, _headers, body = server.request("GET", "/whole?size=11", timeout=30)
        assert (status, len(body)) == (200, 11), server.log
        assert time.monotonic() - started < 15, server.log  # the deadline is 60 s
    finally:
        hog.close()
    assert "Traceback" not in server.log


def test_a_late_reader_gets_every_pipelined_response_whole_and_in_order(run_server):
    """The same pipelined load read after a pause: each response's bytes (part written
    by the worker, the rest by the main process, then the next ones) arrive in order."""
    server = run_server("directapp:app", *ONE_THREAD)
    count, size = 12, 60000
    sock = _pipeline(server.port, count, size)
    try:
        time.sleep(1)
        data = b""
        for index in range(count):
            while True:
                try:
                    response = rawhttp.parse_one(data)
                except ValueError:
                    response = None
                if response is not None and response.complete:
                    break
                chunk = sock.recv(1 << 20)
                assert chunk, f"connection closed before response {index + 1}"
                data += chunk
            assert response.status == 200
            assert response.body == directapp.chunk_at(0, size), index
            data = response.rest
    finally:
        sock.close()
