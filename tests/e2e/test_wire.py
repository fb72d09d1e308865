"""Issue 9, items 1, 5, 6 and 9: what a client's odd or hostile bytes get on the wire.

Raw sockets against real servers, in both modes (and, where the path differs,
with ``--static``, which puts the app behind a router as in embedded use, and
with `WSGIHandler` in an aiohttp app of this process).  wsgipool's own answers
carry ``Server: wsgipool`` and an HTTP/1.1 status line, and no worker ever
pays for a client's bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e import rawhttp
from tests.polling import wait_for
from wsgipool import WSGIHandler

ADDRESS_HOST = "127.0.0.1"
BAD_VERSIONS = [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0"]


def address(server) -> tuple[str, int]:
    return (ADDRESS_HOST, server.port)


def one(addr, data: bytes, method: str = "GET", timeout: float = 10.0) -> rawhttp.Response:
    """Send `data`; the server must answer and close the connection within `timeout`."""
    return rawhttp.parse_one(rawhttp.exchange(addr, data, timeout), method)


def assert_own_answer(response: rawhttp.Response, status: int) -> None:
    """wsgipool's own response: the status, ``Server: wsgipool``, an HTTP/1.1 status line."""
    assert response.status == status, response.raw_head
    assert response.raw_head.startswith(b"HTTP/1.1 %d " % status), response.raw_head
    assert response.header("server") == "wsgipool", response.raw_head


@pytest.fixture(params=["plain", "router"])
def route_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """No router (aiohttp's low-level server), or a router as in embedded use (--static)."""
    if request.param == "plain":
        return []
    static = tmp_path / "static"
    static.mkdir()
    return ["--static", f"/static={static}"]


# -- 1. versions other than HTTP/1.0 and 1.1 ------------------------------------------


def test_unsupported_versions_get_505_from_the_main_process(run_server, executor_args):
    server = run_server("wireapp:app", *executor_args)
    workers = server.worker_pids()
    for version in BAD_VERSIONS:
        # Keep-alive asked: the answer must still close the connection.
        response = one(address(server), b"GET /echo " + version + b"\r\nHost: x\r\n\r\n")
        assert_own_answer(response, 505)
        assert response.header("connection") == "close"
        assert b"method" not in response.body  # the app did not answer
    assert server.request("GET", "/echo")[0] == 200
    assert server.worker_pids() == workers
    assert "died" not in server.log


def test_505_behind_a_router_too(run_server, executor_args, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "a.txt").write_text("static file")
    server = run_server("wireapp:app", *executor_args, "--static", f"/static={static}")
    for target in (b"/echo", b"/static/a.txt"):
        response = one(address(server), b"GET " + target + b" HTTP/2.0\r\nHost: x\r\n\r\n")
        assert_own_answer(response, 505)


def test_rtsp_request_line_is_a_400_not_http_10(run_server, executor_args, route_args):
    """llhttp reads ``GET / RTSP/1.0`` as HTTP/1.0; wsgipool answers 400 and closes,
    after answering what was pipelined before it, and a header that merely holds
    the words is served.  (A request line split inside the word over two packets
    is not seen: upgrade.py says so.)"""
    server = run_server("wireapp:app", *executor_args, *route_args)
    addr = address(server)
    rtsp = b"GET /echo?x=2 RTSP/1.0\r\nHost: x\r\nCSeq: 1\r\n\r\n"
    response = one(addr, rtsp)
    assert_own_answer(response, 400)
    assert response.header("connection") == "close"
    assert b"method" not in response.body  # the app did not answer
    before = b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = rawhttp.exchange(addr, before + rtsp, timeout=10)
    first = rawhttp.parse_one(raw)
    assert first.status == 200 and json.loads(first.body)["query"] == "x=1", raw
    assert_own_answer(rawhttp.parse_one(first.rest), 400)
    quoted = b"GET /echo?x=4 HTTP/1.1\r\nHost: x\r\nX-Note: GET /echo?x=4 RTSP/1.0\r\n"
    response = one(addr, quoted + b"Connection: close\r\n\r\n")
    assert response.status == 200 and json.loads(response.body)["query"] == "x=4"
    assert server.request("GET", "/echo")[0] == 200


TRAILED = (
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nz\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nCookie: session=attacker\r\n\r\n"
)
NEXT_ECHO = b"GET /echo?headers=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_trailer_fields_never_reach_the_next_request(run_server, executor_args):
    """aiohttp's C parser keeps a chunked body's last trailer field and adds it to the
    next request's headers on the connection (a Cookie, an X-Forwarded-For, a Host):
    a chunked request is the connection's last, whether the next one follows in the
    same packet or later. The same request on a new connection is served as sent."""
    server = run_server("wireapp:app", *executor_args)
    addr = address(server)
    raw = rawhttp.exchange(addr, TRAILED + NEXT_ECHO, timeout=10)
    first = rawhttp.parse_one(raw)
    assert first.status == 200 and json.loads(first.body)["body_length"] == 1, raw
    assert first.header("connection") == "close", raw
    assert first.rest == b"", raw  # the next request is not served on this connection
    with rawhttp.connect(addr) as sock:
        sock.sendall(TRAILED)
        first = rawhttp.read_response(sock)
        assert first.status == 200 and first.header("connection") == "close"
        time.sleep(0.3)
        try:
            sock.sendall(NEXT_ECHO)
            sock.settimeout(5)
            assert sock.recv(65536) == b""  # closed: nothing answered from that parser
        except (BrokenPipeError, ConnectionResetError):
            pass
    response = one(addr, NEXT_ECHO)
    assert json.loads(response.body)["headers"] == {"HTTP_CONNECTION": "close", "HTTP_HOST": "x"}


@pytest.mark.parametrize("coding", ["chunked", "gzip"])
def test_upgrade_with_transfer_encoding_is_refused_not_left_hanging(
    run_server, executor_args, coding
):
    """With chunked, the request was never answered and its connection never closed; with
    gzip, llhttp read no body and served what followed as requests."""
    server = run_server("wireapp:app", *executor_args)
    addr = address(server)
    first = b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    upgrade = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: " + coding.encode() + b"\r\n\r\n"
    )
    if coding == "chunked":
        upgrade += b"3\r\nabc\r\n0\r\n\r\n"
    smuggled = b"GET /echo?x=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with rawhttp.connect(addr) as sock:
        sock.sendall(first)
        assert rawhttp.read_response(sock).status == 200
        sock.sendall(upgrade + smuggled)
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(65536):  # until the server closes (a timeout fails)
            data += chunk
    assert_own_answer(rawhttp.parse_one(data), 400)
    assert b"smuggled" not in data


def test_version_attack_under_load_kills_no_worker(run_server):
    """The 30-byte HTTP/2.0 request, 100 times, beside normal clients: no death, no 502."""
    server = run_server("wireapp:app", "--workers", "2", "--threads", "2")
    addr = address(server)
    workers = server.worker_pids()
    assert len(workers) == 2
    attacks = 100
    statuses: list[int] = []
    stop = threading.Event()
    normal: list[int] = []

    def load() -> None:
        while not stop.is_set() and len(normal) < 2000:
            normal.append(server.request("GET", "/echo", timeout=10)[0])

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        for index in range(attacks):
            version = BAD_VERSIONS[index % 2]  # HTTP/2.0 and HTTP/0.9, as reported
            statuses.append(one(addr, b"GET / " + version + b"\r\nHost: x\r\n\r\n").status)
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    deaths = len(set(workers) - set(server.worker_pids()))
    bad_gateways = normal.count(502)
    print(
        f"\nversion attack: {attacks} attacks, {statuses.count(505)} answered 505; "
        f"{len(normal)} normal requests, {bad_gateways} x 502; worker deaths: {deaths}"
    )
    assert statuses == [505] * attacks
    assert normal and set(normal) == {200}
    assert deaths == 0
    assert server.worker_pids() == workers
    assert "died" not in server.log


# -- the rules on every response path (RAW head, aiohttp's objects, a router) --------


def test_response_rules_on_every_path(run_server, executor_args, route_args):
    """Items 5 and 6, and item 9's Server, reason-phrase and Content-Type rules."""
    server = run_server("wireapp:app", *executor_args, *route_args)
    addr = address(server)

    # 5. HTTP/1.0 keep-alive and a body of unknown length: delimited by the close
    # (exchange() fails if the server never closes).
    request = b"GET /stream?parts=4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    raw = rawhttp.exchange(addr, request, timeout=10)
    response = rawhttp.parse_one(raw)
    assert response.status == 200
    assert raw.startswith(b"HTTP/1.0 200 "), raw
    assert response.header("transfer-encoding") is None
    assert response.header("content-length") is None
    assert response.header("connection") in (None, "close")
    assert response.body == b"part-0;part-1;part-2;part-3;"

    # 6. HTTP/1.0 with Transfer-Encoding: 400, closed, what follows never runs.
    smuggled = b"GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    request = (
        b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n" + smuggled
    )
    raw = rawhttp.exchange(addr, request)
    response = rawhttp.parse_one(raw)
    assert response.status == 400, raw
    assert response.header("server") == "wsgipool"
    assert b"method" not in raw  # the app never ran
    assert response.rest == b"", "the bytes after it must not run as a request"

    # An app response without Server gets "wsgipool", never a version; the app's own wins.
    for target, expected in (("/echo", "wsgipool"), ("/stream", "wsgipool"), ("/server", "my-app")):
        response = one(addr, rawhttp.request_bytes("GET", target))
        assert response.header("server") == expected, response.raw_head
        assert b"aiohttp" not in response.raw_head and b"Python" not in response.raw_head

    # A status without a reason phrase keeps its space (RFC 9112 section 4).
    for status in ("200", "200+", "404"):
        raw = rawhttp.exchange(addr, rawhttp.request_bytes("GET", f"/echo?status={status}"))
        assert raw.startswith(b"HTTP/1.1 " + status[:3].encode() + b" \r\n"), raw[:100]

    # Expect: 413 over the limit, 417 for an unknown expectation, wsgipool's own answers.
    # (The body is never sent: the answer is read without waiting for the close.)
    for expect, length, status in (("100-continue", 4 << 30, 413), ("teapot", 3, 417)):
        headers = [("Content-Length", str(length)), ("Expect", expect)]
        with rawhttp.connect(addr) as sock:
            sock.sendall(rawhttp.request_bytes("POST", "/echo", headers, close=False))
            response = rawhttp.read_response(sock)
        assert response.status == status, response.raw_head
        assert response.header("server") == "wsgipool", response.raw_head
        assert response.header("connection") == "close", response.raw_head

    # No Content-Type the app did not set.
    response = one(addr, rawhttp.request_bytes("GET", "/bare"))
    assert (response.status, response.body) == (200, b"bare-body")
    assert response.header("content-type") is None, response.raw_head


# -- 9. smaller wire defects ---------------------------------------------------------------


def _fragment_is_stripped_before_the_query(addr) -> None:
    for target, path, query in (
        (b"/a?x=1#frag", "/a", "x=1"),
        (b"/a#f?x=1", "/a", ""),
        (b"/a%23b?x=%23#f", "/a#b", "x=%23"),
    ):
        request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        echo = json.loads(one(addr, request).body)
        assert (echo["path"], echo["query"]) == (path, query), target


def test_parser_errors_are_http11_and_say_server_wsgipool(run_server, executor_args):
    server = run_server(
        "wireapp:app",
        *executor_args,
        "--limit-request-line",
        "1024",
        "--limit-request-field-size",
        "1024",
        "--limit-request-fields",
        "10",
    )
    addr = address(server)
    cases = [
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), 400),
        (rawhttp.request_bytes("GET", "/" + "a" * 2000), 414),
        (rawhttp.request_bytes("GET", "/", [("X-Big", "b" * 2000)]), 431),
        (rawhttp.request_bytes("GET", "/", [(f"X-H{i}", "1") for i in range(20)]), 431),
    ]
    for data, status in cases:
        response = one(addr, data)
        assert_own_answer(response, status)
        assert response.header("connection") == "close"


def test_own_errors_say_server_wsgipool(run_server, executor_args, tmp_path):
    server = run_server(
        "streamapp:app",
        *executor_args,
        "--script-name",
        "/app",
        "--max-request-body-size",
        "1000",
        "--header-timeout",
        "1s",
    )
    addr = address(server)
    assert_own_answer(one(addr, rawhttp.request_bytes("GET", "/elsewhere")), 404)
    assert_own_answer(one(addr, rawhttp.request_bytes("POST", "/app/x", body=b"x" * 2000)), 413)
    assert_own_answer(one(addr, rawhttp.request_bytes("CONNECT", "example.com:443")), 501)
    with rawhttp.connect(addr, timeout=15) as sock:
        sock.sendall(b"GET /app/x HTTP/1.1\r\nHost: x\r\n")
        assert_own_answer(rawhttp.parse_one(rawhttp.read_until_eof(sock, 15)), 408)


def test_app_errors_and_pool_errors_say_server_wsgipool(run_server, tmp_path):
    server = run_server("streamapp:app", "--workers", "1", "--threads", "2", "--timeout", "1s")
    addr = address(server)
    # 504: the app is silent past --timeout.
    started = tmp_path / "started"
    target = f"/slow?seconds=5&started={started}"
    assert_own_answer(one(addr, rawhttp.request_bytes("GET", target), timeout=20), 504)
    # 502: the worker dies while the request is in flight (and no retry runs it again).
    server = run_server("streamapp:app", "--workers", "1", "--threads", "2", "--retry-methods", "")
    addr = address(server)
    started2 = tmp_path / "started2"
    flag = tmp_path / "never"
    with rawhttp.connect(addr, timeout=20) as sock:
        sock.sendall(rawhttp.request_bytes("GET", f"/slow?until={flag}&started={started2}"))
        assert wait_for(started2.exists, 10)
        os.kill(int(started2.read_text()), signal.SIGKILL)
        assert_own_answer(rawhttp.parse_one(rawhttp.read_until_eof(sock, 20)), 502)


def test_app_500_says_server_wsgipool(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    assert_own_answer(one(address(server), rawhttp.request_bytes("GET", "/error-before")), 500)


def _connect_is_501_and_closes(addr) -> None:
    request = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    response = one(addr, request + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_own_answer(response, 501)
    assert response.header("connection") == "close"
    assert response.rest == b""  # what follows a CONNECT is never a request


def _bytes_after_an_upgrade_request_are_answered(addr) -> None:
    follow = b"GET /echo?x=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for upgrade in (
        b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"POST /echo?x=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3\r\n\r\nabc",
        # Header names in any case: llhttp upgrades on these too.
        b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\nConnection: uPgRaDe\r\nUpGrAdE: h2c\r\n\r\n",
    ):
        raw = rawhttp.exchange(addr, upgrade + follow, timeout=10)
        first = rawhttp.parse_one(raw)
        assert first.status == 200 and json.loads(first.body)["query"] == "x=1", raw
        second = rawhttp.parse_one(first.rest)
        assert second.status == 200 and json.loads(second.body)["query"] == "x=2", raw
    # The upgrade request arrives in the packet that ends a large body: the body's
    # packets are not searched for the word, the bytes after the body are.
    body = b"x" * 200_000
    head = b"POST /echo?x=0 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    upgrade = b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with rawhttp.connect(addr, 10) as sock:
        sock.sendall(head + body[:-10])
        time.sleep(0.3)  # most likely its own packet(s); the test holds either way
        sock.sendall(body[-10:] + upgrade + follow)
        raw = rawhttp.read_until_eof(sock, 10)
    answers = [rawhttp.parse_one(raw)]
    while len(answers) < 3:
        answers.append(rawhttp.parse_one(answers[-1].rest))
    queries = [json.loads(a.body)["query"] for a in answers]
    assert [a.status for a in answers] == [200, 200, 200] and queries == ["x=0", "x=1", "x=2"]


def _requests_before_one_that_closes_are_answered(addr) -> None:
    """Bytes pipelined after a request that ends the connection (HTTP/1.0, or
    Connection: close) in the same packet: llhttp refused the whole packet (400).
    The requests up to that one are answered, then the connection closes. So
    are good requests before a bad one."""
    for data, queries in (
        (b"GET /echo?x=1 HTTP/1.0\r\n\r\nGET /echo?x=2 HTTP/1.1\r\nHost: x\r\n\r\n", ["x=1"]),
        (
            b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo?x=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /echo?x=3 HTTP/1.1\r\nHost: x\r\n\r\n",
            ["x=1", "x=2"],
        ),
    ):
        raw = rawhttp.exchange(addr, data, timeout=10)
        answers = [rawhttp.parse_one(raw)]
        while len(answers) < len(queries):
            answers.append(rawhttp.parse_one(answers[-1].rest))
        got = [(a.status, json.loads(a.body)["query"]) for a in answers]
        assert got == [(200, q) for q in queries] and answers[-1].rest == b"", raw
    # A bad request behind good ones in the same packet: llhttp refused the whole
    # packet (400 alone); now the good ones are answered, then the 400.
    data = (
        b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo?x=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /echo?x=3 HTTP/1.1\r\n\r\n"  # no Host
        b"GET /echo?x=4 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    raw = rawhttp.exchange(addr, data, timeout=10)
    first = rawhttp.parse_one(raw)
    second = rawhttp.parse_one(first.rest)
    bad = rawhttp.parse_one(second.rest)
    assert [json.loads(a.body)["query"] for a in (first, second)] == ["x=1", "x=2"], raw
    assert (first.status, second.status, bad.status, bad.rest) == (200, 200, 400, b""), raw
    # Bytes that are no request line at all behind a request (waitress's tests send
    # these: a body longer than its Content-Length, or one on a GET without any): the
    # request is answered, then the 400; after HTTP/1.0 the bytes never run at all.
    junk = b"a" * 1050
    for data in (
        b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\n\r\n" + junk,
        b"POST /echo?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + junk,
    ):
        raw = rawhttp.exchange(addr, data, timeout=10)
        first = rawhttp.parse_one(raw)
        bad = rawhttp.parse_one(first.rest)
        assert (first.status, json.loads(first.body)["query"]) == (200, "x=1"), raw
        assert (bad.status, bad.rest) == (400, b""), raw
    raw = rawhttp.exchange(addr, b"GET /echo?x=1 HTTP/1.0\r\n\r\n" + junk, timeout=10)
    only = rawhttp.parse_one(raw)
    assert (only.status, json.loads(only.body)["query"], only.rest) == (200, "x=1", b""), raw


def test_static_serves_no_dotfiles_unless_allowed(run_server, executor_args, tmp_path):
    static = tmp_path / "static"
    (static / ".git").mkdir(parents=True)
    (static / ".git" / "config").write_text("secret")
    (static / ".env").write_text("secret")
    (static / "sub").mkdir()
    (static / "sub" / ".hidden").write_text("secret")
    (static / "public.txt").write_text("public")
    hidden = ["/static/.env", "/static/.git/config", "/static/sub/.hidden", "/static/%2Eenv"]
    server = run_server("wireapp:app", *executor_args, "--static", f"/static={static}")
    for path in hidden:
        response = one(address(server), rawhttp.request_bytes("GET", path))
        assert response.status == 404, (path, response.raw_head)
        assert response.header("server") == "wsgipool"
        assert b"secret" not in response.body
    assert one(address(server), rawhttp.request_bytes("GET", "/static/public.txt")).body == (
        b"public"
    )
    allowing = run_server(
        "wireapp:app", *executor_args, "--static", f"/static={static}", "--static-dotfiles"
    )
    for path in hidden:
        response = one(address(allowing), rawhttp.request_bytes("GET", path))
        assert (response.status, response.body) == (200, b"secret"), path


def test_queue_size_and_timeout_bound_thread_mode(run_server, tmp_path):
    server = run_server(
        "streamapp:app",
        "--workers",
        "0",
        "--threads",
        "1",
        "--queue-size",
        "1",
        "--queue-timeout",
        "1s",
    )
    addr = address(server)
    flag = tmp_path / "go"
    busy = rawhttp.connect(addr, timeout=20)
    queued = rawhttp.connect(addr, timeout=20)
    try:
        busy.sendall(rawhttp.request_bytes("GET", f"/slow?until={flag}&started={tmp_path / 's1'}"))
        assert wait_for((tmp_path / "s1").exists, 10)  # the only thread is taken
        queued.sendall(rawhttp.request_bytes("GET", "/whoami"))  # waits in the queue
        time.sleep(0.2)
        overflow = one(addr, rawhttp.request_bytes("GET", "/whoami"))
        assert_own_answer(overflow, 503)
        assert overflow.header("retry-after") == "1"
        # The queued request runs out of --queue-timeout while the thread is still busy.
        timed_out = rawhttp.parse_one(rawhttp.read_until_eof(queued, 20))
        assert_own_answer(timed_out, 503)
        flag.write_text("go")
        assert rawhttp.parse_one(rawhttp.read_until_eof(busy, 20)).body == b"slow-done"
    finally:
        busy.close()
        queued.close()
    assert server.request("GET", "/whoami")[0] == 200


# -- CONTENT_LENGTH of bodyless requests -------------------------------------------------


def _content_length_only_when_the_request_has_a_body_or_says_so(addr) -> None:

    def echo(data: bytes) -> dict:
        return json.loads(one(addr, data).body)

    assert "CONTENT_LENGTH" not in echo(rawhttp.request_bytes("GET", "/echo"))
    assert "CONTENT_LENGTH" not in echo(rawhttp.request_bytes("POST", "/echo"))
    zero = rawhttp.request_bytes("POST", "/echo", [("Content-Length", "0")])
    assert echo(zero)["CONTENT_LENGTH"] == "0"
    empty_chunked = rawhttp.request_bytes(
        "POST", "/echo", [("Transfer-Encoding", "chunked")], b"0\r\n\r\n"
    )
    assert echo(empty_chunked)["CONTENT_LENGTH"] == "0"
    assert echo(rawhttp.request_bytes("POST", "/echo", body=b"abc"))["CONTENT_LENGTH"] == "3"


# -- the embedded handler (WSGIHandler in an aiohttp app of this process) ----------------


def test_request_rules(run_server, executor_args):
    """Fragment, CONNECT, pipelining after Upgrade or close, CONTENT_LENGTH: a server per mode."""
    server = run_server("wireapp:app", *executor_args)
    addr = address(server)
    _fragment_is_stripped_before_the_query(addr)
    _connect_is_501_and_closes(addr)
    _bytes_after_an_upgrade_request_are_answered(addr)
    _requests_before_one_that_closes_are_answered(addr)
    _content_length_only_when_the_request_has_a_body_or_says_so(addr)


def _stream_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"one;", b"two;"])


@pytest.fixture
def embedded() -> Iterator[tuple[str, int]]:
    """A WSGIHandler on an aiohttp router, served by this process on 127.0.0.1."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(2)
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []
    port_box: list[int] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{path_info:.*}", WSGIHandler(_stream_app, executor=executor))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, ADDRESS_HOST, 0)
        await site.start()
        runner_box.append(runner)
        port_box.append(runner.addresses[0][1])

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield (ADDRESS_HOST, port_box[0])
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        executor.shutdown(wait=False)


def test_embedded_handler_wire_rules(embedded):
    assert_own_answer(one(embedded, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505)
    raw = rawhttp.exchange(embedded, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    response = rawhttp.parse_one(raw)
    assert (response.status, response.body) == (200, b"one;two;")
    assert response.header("content-type") == "text/plain"
    chunked_10 = (
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    refused = one(embedded, chunked_10)
    assert refused.status == 400
    assert refused.rest == b""
