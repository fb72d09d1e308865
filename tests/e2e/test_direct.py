"""Large streamed responses written by the worker straight to the client's socket.

The framing is then the worker's: Content-Length when the app declared one,
chunked otherwise (close-delimited for HTTP/1.0); the connection is reused only
after a response that ended whole. Every response here is read by h11 in strict
mode, and each test goes on using the same connection where that must work.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from tests.apps.directapp import pattern
from tests.e2e import rawhttp

MIB = 1024 * 1024


@pytest.fixture
def server(run_server):
    return run_server("directapp:app", "--workers", "1", "--threads", "2")


def _pipe(server) -> rawhttp.StrictPipeline:
    return rawhttp.StrictPipeline(("127.0.0.1", server.port), timeout=30)


def _get(pipe: rawhttp.StrictPipeline, target: str, method: str = "GET") -> rawhttp.H11Response:
    pipe.send([(method, target, b"")])
    return pipe.next_response(method, target)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_large_stream_arrives_whole_and_the_connection_is_reused(server, declared):
    pipe = _pipe(server)
    try:
        target = f"/stream?size={MIB}" + (f"&length={MIB}" if declared else "")
        response = _get(pipe, target)
        assert response.status == 200 and response.complete
        assert response.body == pattern(0, MIB)
        if declared:
            assert response.headers["content-length"] == str(MIB)
        else:
            assert response.headers["transfer-encoding"] == "chunked"
        assert pipe.reusable
        again = _get(pipe, "/pid")
        assert again.status == 200 and again.body.isdigit()
    finally:
        pipe.close()


def test_declared_length_shorter_than_the_body_is_cut_and_the_connection_kept(server):
    pipe = _pipe(server)
    try:
        response = _get(pipe, f"/stream?size={MIB}&length={100_000}")
        assert response.complete and response.body == pattern(0, 100_000)
        assert _get(pipe, "/pid").status == 200  # no leftover byte desynchronised it
    finally:
        pipe.close()


def test_declared_length_longer_than_the_body_ends_the_connection(server):
    pipe = _pipe(server)
    try:
        response = _get(pipe, f"/stream?size={MIB}&length={2 * MIB}")
        assert response.status == 200
        assert not response.complete
        assert response.body == pattern(0, MIB)
        assert pipe.eof
    finally:
        pipe.close()


def test_http_10_gets_a_close_delimited_body(server):
    sock = rawhttp.connect(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(f"GET /stream?size={MIB} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = rawhttp.read_until_eof(sock, timeout=30)
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == pattern(0, MIB)


def test_head_of_a_large_stream_has_no_body(server):
    pipe = _pipe(server)
    try:
        response = _get(pipe, f"/stream?size={MIB}&length={MIB}", method="HEAD")
        assert response.status == 200 and response.body == b""
        assert response.headers["content-length"] == str(MIB)
        assert _get(pipe, "/pid").status == 200
    finally:
        pipe.close()


def test_app_failing_mid_stream_cuts_the_connection(server):
    pipe = _pipe(server)
    try:
        response = _get(pipe, "/fail?after=3")
        assert response.status == 200
        assert not response.complete
        assert pipe.eof
    finally:
        pipe.close()
    assert "failed in the middle of a stream" in server.log
    fresh = _pipe(server)
    try:
        assert _get(fresh, "/pid").status == 200
    finally:
        fresh.close()


def test_client_leaving_mid_stream_stops_the_app(server, tmp_path):
    closed = tmp_path / "closed"
    sock = rawhttp.connect(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"GET /stream?size={1024 * MIB}&close={closed} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    received = 0
    while received < 2 * MIB:
        received += len(sock.recv(65536))
    sock.close()
    deadline = time.monotonic() + 10
    while not closed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed.exists(), server.log
    assert server.request("GET", "/pid")[0] == 200


def test_worker_killed_mid_stream_cuts_only_that_response(server, tmp_path):
    flag = tmp_path / "flag"
    pipe = _pipe(server)
    try:
        pipe.send([("GET", f"/stall?after=2&flag={flag}", b"")])
        received = b""
        while len(received) < 128 * 1024:
            received += pipe.sock.recv(65536)
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        pipe.sock.settimeout(10)
        try:
            while pipe.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass  # cut either way
    finally:
        pipe.close()
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline and status != 200:
        try:
            status = server.request("GET", "/pid", timeout=5)[0]
        except OSError:
            time.sleep(0.1)
    assert status == 200


def test_timeout_in_the_middle_of_a_direct_stream_cuts_it(run_server, tmp_path):
    server = run_server("directapp:app", "--workers", "1", "--threads", "2", "--timeout", "1s")
    pipe = _pipe(server)
    try:
        response = _get(pipe, f"/stall?after=2&flag={tmp_path / 'never'}")
        assert response.status == 200
        assert not response.complete
    finally:
        pipe.close()
    deadline = time.monotonic() + 10
    while "_stall" not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "timed out" in server.log
    assert "_stall" in server.log  # the stack names the stuck generator


def test_slow_reader_is_not_a_timeout(run_server):
    """The worker waits on the client's socket, not on the app: --timeout must not fire."""
    server = run_server("directapp:app", "--workers", "1", "--threads", "2", "--timeout", "1s")
    sock = rawhttp.connect(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        size = 16 * MIB
        sock.sendall(f"GET /stream?size={size}&length={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = bytearray()
        started = time.monotonic()
        while time.monotonic() - started < 3.0:  # read slowly for 3 s: 3 timeouts long
            data += sock.recv(16 * 1024)
            time.sleep(0.01)
        main_rss = psutil.Process(server.pid).memory_info().rss
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and len(data) - head_end - 4 >= size:
                break
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == size
    assert body[:MIB] == pattern(0, MIB)
    assert "timed out" not in server.log
    assert main_rss < 100 * MIB
