"""Issue 2, "Must have" 5 and 10: body size limits, the request-head deadline, head sizes.

All from a raw socket, so the test decides exactly what the server has seen
when it answers: a 413 that arrives while the body was never sent was decided
"before the body is read".
"""

from __future__ import annotations

import json
import socket
import time

from tests.e2e import rawhttp

LIMIT = 1024 * 1024  # --max-request-body-size for these tests


# -- request bodies ---------------------------------------------------------------------


def test_declared_content_length_over_the_limit_is_413_before_the_body(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--max-request-body-size", str(LIMIT))
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        # Headers only: not one byte of the body is ever sent.
        sock.sendall(
            rawhttp.request_bytes(
                "POST", "/upload", [("Content-Length", str(LIMIT + 1))], close=False
            )
        )
        response = rawhttp.read_response(sock)
    assert response.status == 413
    # The unread body must never be taken for a next request: the connection ends.
    assert response.header("connection") == "close"

    # At the limit exactly, the body is accepted.
    body = b"z" * LIMIT
    status, _headers, data = server.request("POST", "/upload", body=body)
    assert status == 200, data[:300]
    assert json.loads(data)["body_length"] == LIMIT


def test_expect_100_continue_over_the_limit_is_413_at_once(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--max-request-body-size", str(LIMIT))
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            rawhttp.request_bytes(
                "POST",
                "/upload",
                [("Content-Length", str(LIMIT * 8)), ("Expect", "100-continue")],
                close=False,
            )
        )
        response = rawhttp.read_response(sock)
    assert response.status == 413
    assert response.header("connection") == "close"


def test_expect_100_continue_within_the_limit_gets_continue(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--max-request-body-size", str(LIMIT))
    body = b"e" * 5000
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            rawhttp.request_bytes(
                "POST", "/upload", [("Content-Length", str(len(body))), ("Expect", "100-continue")]
            )
        )
        interim = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in interim and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            assert chunk, interim
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        _head, _, early = interim.partition(b"\r\n\r\n")
        sock.sendall(body)
        response = rawhttp.parse_one(early + rawhttp.read_until_eof(sock))
    assert response.status == 200
    assert json.loads(response.body)["body_length"] == len(body)


def test_chunked_body_is_413_as_soon_as_it_passes_the_limit(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--max-request-body-size", str(LIMIT))
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            rawhttp.request_bytes(
                "POST", "/upload", [("Transfer-Encoding", "chunked")], close=False
            )
        )
        piece = b"c" * (64 * 1024)
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sent = 0
        # Just past the limit, and the body is never terminated (no 0-size chunk).
        while sent <= LIMIT:
            sock.sendall(chunk)
            sent += len(piece)
        response = rawhttp.read_response(sock)
    assert response.status == 413
    assert response.header("connection") == "close"

    # A chunked body within the limit is fine.
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            rawhttp.request_bytes(
                "POST",
                "/upload",
                [("Transfer-Encoding", "chunked")],
                rawhttp.chunked([piece] * 4),
            )
        )
        response = rawhttp.parse_one(rawhttp.read_until_eof(sock))
    assert response.status == 200
    assert json.loads(response.body)["body_length"] == 4 * len(piece)


# -- the request head -------------------------------------------------------------------


def test_incomplete_request_head_gets_408_after_the_header_timeout(run_server):
    server = run_server("envapp:app", "--workers", "0", "--header-timeout", "1s")
    with rawhttp.connect(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: yes\r\n")
        data = rawhttp.read_until_eof(sock, timeout=15)
    response = rawhttp.parse_one(data)
    assert response.status == 408
    assert "envapp" not in data.decode("latin-1")


def test_trickled_request_head_gets_408(run_server):
    """A client that keeps sending one byte at a time still runs out of time."""
    server = run_server("envapp:app", "--workers", "0", "--header-timeout", "1s")
    head = b"GET /trickle HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 1000
    with rawhttp.connect(("127.0.0.1", server.port), timeout=15) as sock:
        sent = 0
        closed = False
        deadline = time.monotonic() + 15
        while sent < len(head) and time.monotonic() < deadline:
            try:
                sock.sendall(head[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK) is not None:
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
                sock.settimeout(15)
        assert closed, "the server kept waiting for a head that never ends"
        assert sent < len(head)
        data = rawhttp.read_until_eof(sock, timeout=15)
    assert rawhttp.parse_one(data).status == 408


def test_idle_connection_without_a_request_is_closed(run_server):
    server = run_server("envapp:app", "--workers", "0", "--header-timeout", "1s")
    with rawhttp.connect(("127.0.0.1", server.port), timeout=15) as sock:
        data = rawhttp.read_until_eof(sock, timeout=15)
    # Nothing was asked, so nothing is answered: the connection just ends.
    assert data == b"" or rawhttp.parse_one(data).status == 408


def test_request_line_over_the_limit_is_414(run_server):
    server = run_server("envapp:app", "--workers", "0", "--limit-request-line", "1024")
    long_path = "/" + "a" * 2000
    raw = rawhttp.exchange(("127.0.0.1", server.port), rawhttp.request_bytes("GET", long_path))
    assert rawhttp.parse_one(raw).status == 414
    # Under the limit is fine.
    ok_path = "/" + "a" * 900
    raw = rawhttp.exchange(("127.0.0.1", server.port), rawhttp.request_bytes("GET", ok_path))
    response = rawhttp.parse_one(raw)
    assert response.status == 200
    assert json.loads(response.body)["PATH_INFO"] == ok_path


def test_header_field_over_the_limit_is_431(run_server):
    server = run_server("envapp:app", "--workers", "0", "--limit-request-field-size", "1024")
    address = ("127.0.0.1", server.port)
    raw = rawhttp.exchange(address, rawhttp.request_bytes("GET", "/", [("X-Big", "b" * 2000)]))
    assert rawhttp.parse_one(raw).status == 431
    raw = rawhttp.exchange(address, rawhttp.request_bytes("GET", "/", [("X-Big", "b" * 900)]))
    response = rawhttp.parse_one(raw)
    assert response.status == 200
    assert json.loads(response.body)["HTTP_X_BIG"] == "b" * 900


def test_too_many_header_fields_is_431(run_server):
    server = run_server("envapp:app", "--workers", "0", "--limit-request-fields", "10")
    address = ("127.0.0.1", server.port)
    many = [(f"X-H{i}", str(i)) for i in range(20)]
    raw = rawhttp.exchange(address, rawhttp.request_bytes("GET", "/", many))
    assert rawhttp.parse_one(raw).status == 431
    few = [(f"X-H{i}", str(i)) for i in range(5)]
    raw = rawhttp.exchange(address, rawhttp.request_bytes("GET", "/", few))
    response = rawhttp.parse_one(raw)
    assert response.status == 200
    assert json.loads(response.body)["HTTP_X_H4"] == "4"


def test_malformed_requests_get_400_and_one_quiet_log_line(run_server):
    """A client's garbage is answered and logged in one line, never as an ERROR traceback."""
    server = run_server("envapp:app", "--workers", "0")
    address = ("127.0.0.1", server.port)
    garbage = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # TLS on a plain port
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for data in garbage:
        assert rawhttp.parse_one(rawhttp.exchange(address, data)).status == 400
    assert server.request("GET", "/")[0] == 200
    assert server.log.count("for a malformed request from 127.0.0.1") == 3
    assert "Traceback" not in server.log
