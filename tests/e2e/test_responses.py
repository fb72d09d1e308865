"""Issue 2, "Must have" 6 (and issue 3, 5): responses, for both executors.

Streaming, the start_response rules, write(), close() in every case, what the
frontend validates before anything goes on the wire, Content-Length, bodiless
responses, errors before and after the headers, and memory that stays flat
under a 1 GiB response.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e import rawhttp


def get(server, path: str, method: str = "GET", close: bool = True) -> rawhttp.Response:
    request = rawhttp.request_bytes(method, path, close=close)
    return rawhttp.parse_one(rawhttp.exchange(("127.0.0.1", server.port), request), method)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def closes(path: Path) -> int:
    return path.read_text().count("closed") if path.exists() else 0


def wait_for_log(server, text: str, timeout: float = 10.0) -> bool:
    return wait_for(lambda: text in server.log, timeout)


# -- streaming ---------------------------------------------------------------------------


def test_first_bytes_arrive_while_the_app_is_still_producing(run_server, executor_args, tmp_path):
    server = run_server("streamapp:app", *executor_args)
    flag = tmp_path / "flag"
    with rawhttp.connect(("127.0.0.1", server.port)) as sock:
        sock.sendall(rawhttp.request_bytes("GET", f"/block?flag={flag}"))
        data = b""
        deadline = time.monotonic() + 10
        while b"first-chunk\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert b"first-chunk\n" in data, data
        # The app is now blocked until the flag exists: nothing else can have come.
        assert b"after-flag" not in data
        flag.write_text("go")
        data += rawhttp.read_until_eof(sock)
    response = rawhttp.parse_one(data)
    assert response.status == 200
    assert response.complete
    assert response.body == b"first-chunk\nafter-flag\n"


def test_http10_streamed_response_ends_with_the_connection(run_server, executor_args):
    """No chunked encoding in HTTP/1.0: a response of unknown length is closed-delimited."""
    server = run_server("streamapp:app", *executor_args)
    raw = rawhttp.exchange(("127.0.0.1", server.port), b"GET /big?size=300000 HTTP/1.0\r\n\r\n")
    response = rawhttp.parse_one(raw)
    assert response.status == 200
    assert raw.startswith(b"HTTP/1.0 200 ") or raw.startswith(b"HTTP/1.1 200 ")
    assert response.header("transfer-encoding") is None
    assert response.body == b"x" * 300000


# -- start_response rules and write() -------------------------------------------------------


def test_second_start_response_without_exc_info_is_a_500(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    response = get(server, "/second-start")
    assert response.status == 500
    assert b"accepted" not in response.body
    assert wait_for_log(server, "second_start")


def test_exc_info_before_headers_replaces_the_status(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    response = get(server, "/exc-info-before-headers")
    assert (response.status, response.reason) == (503, b"Changed Mind")
    assert response.body == b"replaced"


def test_exc_info_after_headers_is_reraised_and_cuts_the_connection(
    run_server, executor_args, tmp_path
):
    server = run_server("badapps:app", *executor_args)
    record = tmp_path / "close.txt"
    response = get(server, f"/exc-info-after-headers?close={record}", close=False)
    assert response.status == 200
    assert not response.complete, "the response must be visibly broken, not ended cleanly"
    assert response.body == b"partial-"
    assert wait_for(lambda: closes(record) == 1)
    assert wait_for_log(server, "exc-info-after-headers")


def test_write_callable(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    response = get(server, "/write")
    assert response.status == 200
    assert response.complete
    assert response.body == b"one,two,three"


# -- validation of what the app returns ------------------------------------------------------

BAD_HEADERS = ["cr", "lf", "crlf", "nul", "name-crlf", "name-space", "name-colon"]
BAD_STATUSES = ["crlf", "lf", "nul", "nocode", "short"]


def test_invalid_headers_and_status_are_500_and_never_forwarded(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    cases = [f"/bad-header?kind={k}" for k in BAD_HEADERS]
    cases += [f"/bad-status?kind={k}" for k in BAD_STATUSES]
    for path in cases:
        raw = rawhttp.exchange(("127.0.0.1", server.port), rawhttp.request_bytes("GET", path))
        response = rawhttp.parse_one(raw)
        assert response.status == 500, (path, raw)
        assert b"X-Injected" not in raw, (path, raw)
        assert b"must not be sent" not in raw, (path, raw)
        assert "x-bad" not in response.header_names(), (path, raw)


def test_header_values_go_out_as_latin1_bytes(run_server, executor_args):
    """A header value "café" (a PEP 3333 native string) is the bytes b"caf\xe9" on the wire."""
    server = run_server("badapps:app", *executor_args)
    raw = rawhttp.exchange(
        ("127.0.0.1", server.port), rawhttp.request_bytes("GET", "/latin1-header")
    )
    response = rawhttp.parse_one(raw)
    assert response.status == 200, raw
    assert b"\r\nX-Latin1: caf\xe9 \xff\r\n" in response.raw_head + b"\r\n", response.raw_head
    assert b'filename="r\xe9sum\xe9.txt"' in response.raw_head, response.raw_head
    assert response.body == b"latin-1 headers"


def test_headers_as_lists_are_served_as_gunicorn_serves_them(run_server, executor_args):
    """[name, value] lists instead of tuples: a 200 with the headers, not a 500."""
    server = run_server("badapps:app", *executor_args)
    response = get(server, "/list-headers")
    assert response.status == 200
    assert response.header("x-colour") == "Blue"
    assert response.body == b"list headers"


def test_whitespace_around_header_values_is_not_sent(run_server, executor_args):
    """RFC 9110 section 5.5: it is not part of the value. Django's Set-Cookie values start
    with a space; gunicorn strips them too. Whole and streamed, alone (the fast lane in
    process mode) and pipelined (aiohttp's path)."""
    server = run_server("badapps:app", *executor_args)
    wanted = (b"\r\nSet-Cookie: a=1; Path=/\r\n", b"\r\nSet-Cookie: b=2\r\n", b"\r\nX-Tab: v\r\n")
    for target in ("/padded-headers", "/padded-headers?stream=1"):
        alone = rawhttp.exchange(
            ("127.0.0.1", server.port), rawhttp.request_bytes("GET", target, close=True)
        )
        pipelined = rawhttp.exchange(
            ("127.0.0.1", server.port),
            rawhttp.request_bytes("GET", target, close=False)
            + rawhttp.request_bytes("GET", target, close=True),
        )
        for raw in (alone, pipelined):
            assert raw.startswith(b"HTTP/1.1 200 "), raw
            for line in wanted:
                assert line in raw, (target, raw)


def test_app_server_and_date_headers_win(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    response = get(server, "/own-server-date")
    assert response.status == 200
    assert response.header("server") == "my-app/1.0"
    assert response.header("date") == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert response.body == b"ok"


def test_hop_by_hop_headers_are_dropped(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    response = get(server, "/hop-by-hop")
    assert response.status == 200
    assert response.complete
    assert response.body == b"hop-by-hop-body"
    names = response.header_names()
    for name in ("keep-alive", "upgrade", "te", "trailer", "proxy-authenticate"):
        assert name not in names, response.raw_head
    # The app's "Transfer-Encoding: chunked" must not be passed on over a plain body.
    assert response.header("transfer-encoding") is None, response.raw_head
    assert response.header("x-end-to-end") == "kept"


# -- Content-Length -------------------------------------------------------------------------


def test_short_body_closes_the_connection(run_server, executor_args, tmp_path):
    server = run_server("badapps:app", *executor_args)
    for path in ("/short", "/short-stream"):
        record = tmp_path / f"close{path.replace('/', '-')}.txt"
        # A keep-alive request, so only the server's decision can end the connection.
        request = rawhttp.request_bytes("GET", f"{path}?close={record}", close=False)
        raw = rawhttp.exchange(("127.0.0.1", server.port), request)
        response = rawhttp.parse_one(raw)
        assert response.status == 200, raw
        assert response.header("content-length") == "100", raw
        assert response.body == b"0123456789", raw
        assert not response.complete, raw
        assert wait_for(lambda record=record: closes(record) == 1), path


def test_long_body_is_cut_to_the_declared_length(run_server, executor_args, tmp_path):
    server = run_server("badapps:app", *executor_args)
    for path in ("/long", "/long-stream"):
        record = tmp_path / f"close{path.replace('/', '-')}.txt"
        requests = rawhttp.request_bytes("GET", f"{path}?close={record}", close=False)
        requests += rawhttp.request_bytes("GET", "/ok", close=True)
        raw = rawhttp.exchange(("127.0.0.1", server.port), requests)
        assert b"FGHIJ" not in raw, raw
        first = rawhttp.parse_one(raw)
        assert first.status == 200, raw
        assert first.header("content-length") == "5", raw
        assert first.body == b"ABCDE", raw
        # What follows is the next response, whole, or nothing: never the rest of the body.
        if first.rest:
            second = rawhttp.parse_one(first.rest)
            assert (second.status, second.body, second.complete) == (200, b"ok-body", True)
        assert wait_for(lambda record=record: closes(record) == 1), path


def test_exact_content_length_from_a_generator_keeps_the_connection(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    requests = rawhttp.request_bytes("GET", "/exact-stream", close=False)
    requests += rawhttp.request_bytes("GET", "/exact-then-pause", close=False)
    requests += rawhttp.request_bytes("GET", "/ok", close=True)
    raw = rawhttp.exchange(("127.0.0.1", server.port), requests)
    first = rawhttp.parse_one(raw)
    assert (first.status, first.body, first.complete) == (200, b"0123456789", True)
    second = rawhttp.parse_one(first.rest)
    assert (second.status, second.body, second.complete) == (200, b"0123456789", True)
    third = rawhttp.parse_one(second.rest)
    assert (third.status, third.body, third.complete) == (200, b"ok-body", True)
    assert third.rest == b""


# -- responses without a body ----------------------------------------------------------------

BODYLESS = [
    ("HEAD", "/head-body", 200),
    ("HEAD", "/head-body-stream", 200),
    ("GET", "/status-body?code=204", 204),
    ("GET", "/status-body-stream?code=204", 204),
    ("GET", "/status-body?code=304", 304),
    ("GET", "/status-body-stream?code=304", 304),
]


def test_no_body_for_head_204_304(run_server, executor_args, tmp_path):
    server = run_server("badapps:app", *executor_args)
    for index, (method, path, status) in enumerate(BODYLESS):
        record = tmp_path / f"close-{index}.txt"
        sep = "&" if "?" in path else "?"
        requests = rawhttp.request_bytes(method, f"{path}{sep}close={record}", close=False)
        requests += rawhttp.request_bytes("GET", "/ok", close=True)
        raw = rawhttp.exchange(("127.0.0.1", server.port), requests)
        first = rawhttp.parse_one(raw, method)
        assert first.status == status, raw
        assert b"must not be sent" not in raw
        assert b"0123456789" not in raw
        # The very next bytes are the next response: not one byte of body came between.
        assert first.rest.startswith(b"HTTP/1.1 200 "), raw
        second = rawhttp.parse_one(first.rest)
        assert (second.body, second.complete) == (b"ok-body", True), raw
        if status == 204:
            assert first.header("content-length") is None, raw
            assert first.header("transfer-encoding") is None, raw
        if path == "/head-body":
            assert first.header("content-length") == "1000", raw
        # The app's iterable is closed although none of it was sent.
        assert wait_for(lambda record=record: closes(record) == 1), (method, path)


def test_head_of_an_unknown_length_announces_none(run_server, executor_args):
    """werkzeug answers HEAD with an empty body and no Content-Length where GET's length is
    unknown (a streamed view, send_file of a file object): "Content-Length: 0" would tell
    the client the resource is empty (RFC 9110 section 9.3.2). One request at a time on a
    keep-alive connection, so in process mode it takes the fast lane."""
    server = run_server("badapps:app", *executor_args)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(2):
            connection.request("HEAD", "/head-empty")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length") is None, response.getheaders()
            assert response.read() == b""
            connection.request("GET", "/head-empty")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Length") is None, response.getheaders()
            assert response.read() == b"0123456789" * 100
        connection.request("HEAD", "/no-length")  # a whole body: its length is known
        response = connection.getresponse()
        assert (response.getheader("Content-Length"), response.read()) == ("12", b"")
    finally:
        connection.close()


# -- application errors ------------------------------------------------------------------

ERRORS_BEFORE_HEADERS = [
    # path, what the client must not see, what the log must show
    ("/error-before", "secret-detail-before-headers", "secret-detail-before-headers"),
    ("/error-in-iterable", "secret-detail-in-generator", "secret-detail-in-generator"),
    ("/no-start-response", "no start_response", "/no-start-response"),
    ("/not-bytes", "a str, not bytes", "/not-bytes"),
]


def test_exception_before_headers_is_a_generic_500(run_server, executor_args):
    server = run_server("badapps:app", *executor_args)
    for path, secret, logged in ERRORS_BEFORE_HEADERS:
        raw = rawhttp.exchange(("127.0.0.1", server.port), rawhttp.request_bytes("GET", path))
        response = rawhttp.parse_one(raw)
        assert response.status == 500, raw
        assert response.complete, raw
        assert secret.encode() not in raw, raw
        assert b"Traceback" not in raw, raw
        assert b".py" not in raw, raw
        # The traceback is in the server's log instead.
        assert wait_for_log(server, logged), (path, server.log)
    assert server.log.count("Traceback (most recent call last)") >= len(ERRORS_BEFORE_HEADERS)


def test_exception_after_headers_cuts_the_connection(run_server, executor_args, tmp_path):
    server = run_server("badapps:app", *executor_args)
    record = tmp_path / "close.txt"
    response = get(server, f"/error-after?close={record}", close=False)
    assert response.status == 200
    assert response.body == b"first-part-"
    assert not response.complete
    assert b"secret" not in response.body
    assert wait_for_log(server, "secret-detail-after-headers")
    assert wait_for(lambda: closes(record) == 1)


# -- wsgi.file_wrapper ----------------------------------------------------------------------


def test_file_wrapper(run_server, executor_args, tmp_path):
    server = run_server("streamapp:app", *executor_args)
    content = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    address = ("127.0.0.1", server.port)

    def fetch(target: str) -> rawhttp.Response:
        raw = rawhttp.exchange(address, rawhttp.request_bytes("GET", target), timeout=20)
        response = rawhttp.parse_one(raw)
        assert response.status == 200, raw[:300]
        assert response.complete, response.raw_head
        return response

    whole = fetch(f"/file?path={path}")
    assert whole.body == content
    # Transmission starts at the file's current position (PEP 3333).
    assert fetch(f"/file?path={path}&seek=1000").body == content[1000:]
    # A Content-Length shorter than the file bounds what is sent.
    limited = fetch(f"/file?path={path}&seek=10&length=5000")
    assert limited.header("content-length") == "5000"
    assert limited.body == content[10:5010]
    # A Content-Length longer than the file: a short body, so the connection ends.
    raw = rawhttp.exchange(
        address,
        rawhttp.request_bytes("GET", f"/file?path={path}&length={len(content) + 100}", close=False),
        timeout=20,
    )
    short = rawhttp.parse_one(raw)
    assert (short.status, short.body == content, short.complete) == (200, True, False)
    # Without a descriptor the wrapper is iterated.
    assert fetch("/filelike?repeat=300").body == bytes(range(256)) * 300

    # Keep-alive continues after a file response.
    requests = rawhttp.request_bytes("GET", f"/file?path={path}&seek=5", close=False)
    requests += rawhttp.request_bytes("GET", "/whoami", close=True)
    raw = rawhttp.exchange(address, requests, timeout=20)
    first = rawhttp.parse_one(raw)
    assert (first.body == content[5:], first.complete) == (True, True)
    second = rawhttp.parse_one(first.rest)
    assert second.status == 200
    assert second.complete


# -- close() -------------------------------------------------------------------------------


DISCONNECTS = [
    ("trickle", "interval=0.02&size=5"),  # a steady trickle: the next write fails
    ("thinking", "interval=0.5&size=5"),  # an app that thinks between chunks
    ("flow-control", "interval=0&size=65536"),  # a fast producer held back by credit
]


def test_close_is_called_when_the_client_disconnects(run_server, executor_args, tmp_path):
    server = run_server("streamapp:app", *executor_args)
    for name, query in DISCONNECTS:
        record = tmp_path / f"close-{name}.txt"
        sock = rawhttp.connect(("127.0.0.1", server.port))
        try:
            sock.sendall(
                rawhttp.request_bytes("GET", f"/ticks?{query}&close={record}", close=False)
            )
            first = sock.recv(4096)
            assert first.startswith(b"HTTP/1.1 200"), (name, first)
            if name == "flow-control":
                time.sleep(0.5)  # let the producer fill the window and wait for credit
            assert closes(record) == 0, f"{name}: the app must still be producing"
        finally:
            sock.close()
        assert wait_for(lambda record=record: closes(record) >= 1, timeout=5), (
            f"{name}: close() was not called within 5 s of the disconnect"
        )
        # The server keeps serving, and close() is not called twice.
        status, _headers, body = server.request("GET", "/whoami")
        assert status == 200, body
        assert closes(record) == 1, name


# -- memory -----------------------------------------------------------------------------------

GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.slow
def test_1gib_generator_response_keeps_main_process_memory_flat(run_server, executor_args):
    server = run_server("streamapp:app", *executor_args)
    main = psutil.Process(server.pid)
    # Warm up: the first response allocates what every response will reuse.
    status, _headers, body = server.request("GET", f"/big?size={8 * MIB}")
    assert (status, len(body)) == (200, 8 * MIB)
    baseline = main.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], main.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    received = 0
    try:
        conn.request("GET", f"/big?size={GIB}")
        response = conn.getresponse()
        assert response.status == 200
        paused = False
        while True:
            data = response.read(4 * MIB)
            if not data:
                break
            received += len(data)
            if not paused and received >= 64 * MIB:
                # A slow reader for a while: the server must not buffer what the app makes.
                paused = True
                time.sleep(1.5)
    finally:
        conn.close()
        stop.set()
        sampler.join(5)
    assert received == GIB
    growth = peak[0] - baseline
    print(
        f"\n1 GiB to a slow reader: main RSS {baseline / MIB:.1f} MiB, peak {peak[0] / MIB:.1f} MiB"
    )
    assert growth < 48 * MIB, f"main process RSS grew by {growth / MIB:.1f} MiB"
    assert peak[0] < 100 * MIB, f"main process RSS peaked at {peak[0] / MIB:.1f} MiB"
