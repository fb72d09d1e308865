"""Issue 2, "Must have" 4 (and 7): the PEP 3333 environ, seen from the client side.

`envapp` answers with its environ as JSON from behind wsgiref's validator and
werkzeug's linter (warnings are errors), so an environ that breaks PEP 3333
turns into a 500 here.  Every test runs against both executors and expects
the same answer, except wsgi.multiprocess and wsgipool.worker_pid.
"""

from __future__ import annotations

import http.client
import json
import socket

import pytest

import wsgipool
from tests.e2e import rawhttp


def is_process_mode(executor_args: list[str]) -> bool:
    return executor_args[executor_args.index("--workers") + 1] != "0"


def get_environ(
    server,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> dict:
    status, _headers, data = server.request(method, path, body=body, headers=headers)
    assert status == 200, data[:2000]
    return json.loads(data)


def raw_environ(address, request: bytes) -> dict:
    """Send hand-made request bytes (with Connection: close) and decode the environ."""
    response = rawhttp.parse_one(rawhttp.exchange(address, request))
    assert response.status == 200, response.body[:2000]
    assert response.complete
    return json.loads(response.body)


# -- PATH_INFO, SCRIPT_NAME, QUERY_STRING, REQUEST_URI ---------------------------------


def test_path_info_is_latin1_of_unquoted_bytes(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    address = ("127.0.0.1", server.port)

    environ = get_environ(server, "/caf%C3%A9")
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9"
    assert environ["SCRIPT_NAME"] == ""
    # What Django does with it: back to bytes, then UTF-8.
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café"

    # Lower-case escapes, and a raw request line, give the same bytes.
    raw = raw_environ(address, rawhttp.request_bytes("GET", "/caf%c3%a9"))
    assert raw["PATH_INFO"] == "/caf\u00c3\u00a9"
    assert raw["RAW_URI"] == "/caf%c3%a9"

    # Non-latin scripts: each byte of the UTF-8 encoding is one latin-1 character.
    japanese = "/日本/ключ"
    quoted = "/%E6%97%A5%E6%9C%AC/%D0%BA%D0%BB%D1%8E%D1%87"
    environ = get_environ(server, quoted)
    assert environ["PATH_INFO"] == japanese.encode("utf-8").decode("latin-1")
    assert environ["REQUEST_URI"] == quoted

    # Bytes that are not UTF-8 at all go through unchanged.
    assert get_environ(server, "/%FF%FE%80")["PATH_INFO"] == "/\u00ff\u00fe\u0080"

    # %2F is unquoted like every other escape (as in CGI); REQUEST_URI keeps it.
    environ = get_environ(server, "/a%2Fb/sp%20ace")
    assert environ["PATH_INFO"] == "/a/b/sp ace"
    assert environ["REQUEST_URI"] == "/a%2Fb/sp%20ace"


def test_query_string_is_raw(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    query = "a=1&b=%20&c=caf%C3%A9&d=+&e&f=%2F&a=2"
    environ = get_environ(server, "/q?" + query)
    assert environ["QUERY_STRING"] == query
    assert environ["PATH_INFO"] == "/q"
    assert get_environ(server, "/q")["QUERY_STRING"] == ""
    assert get_environ(server, "/q?")["QUERY_STRING"] == ""


def test_request_uri_and_raw_uri(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    target = "/p%20x/caf%C3%A9/a%2Fb?q=%2F&r=caf%C3%A9&s"
    environ = get_environ(server, target)
    assert environ["REQUEST_URI"] == target
    assert environ["RAW_URI"] == target
    assert environ["PATH_INFO"] == "/p x/caf\u00c3\u00a9/a/b"
    assert environ["QUERY_STRING"] == "q=%2F&r=caf%C3%A9&s"


def test_absolute_form_and_odd_targets(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    address = ("127.0.0.1", server.port)
    environ = raw_environ(
        address, rawhttp.request_bytes("GET", "http://example.com/p%20x/caf%C3%A9?x=1")
    )
    assert environ["PATH_INFO"] == "/p x/caf\u00c3\u00a9"
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["REQUEST_URI"] == "http://example.com/p%20x/caf%C3%A9?x=1"
    # The target's authority, not the Host header, is the host (RFC 9112, 3.2.2).
    assert environ["HTTP_HOST"] == "example.com"
    environ = raw_environ(
        address,
        rawhttp.request_bytes("GET", "http://example.org:8080/x", [("Host", "other.test")]),
    )
    assert (environ["HTTP_HOST"], environ["PATH_INFO"]) == ("example.org:8080", "/x")
    environ = raw_environ(address, rawhttp.request_bytes("GET", "/a?b?c=%3F"))
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/a", "b?c=%3F")
    environ = raw_environ(address, rawhttp.request_bytes("GET", "HTTPS://example.net/y?a@b"))
    assert (environ["HTTP_HOST"], environ["PATH_INFO"]) == ("example.net", "/y")
    # Userinfo is no part of the host (gunicorn's corpus takes the request as valid).
    environ = raw_environ(address, rawhttp.request_bytes("GET", "http://u:p@example.com:81/z"))
    assert (environ["HTTP_HOST"], environ["PATH_INFO"]) == ("example.com:81", "/z")
    # Another scheme than http(s): 400, and the request before it in the packet stands.
    for target in ("ftp://example.com/x", "ws://example.com/x", "example.com"):
        raw = rawhttp.exchange(
            address,
            rawhttp.request_bytes("GET", "/first", close=False)
            + rawhttp.request_bytes("GET", target),
        )
        first = rawhttp.parse_one(raw)
        assert first.status == 200, raw
        assert rawhttp.parse_one(first.rest).status == 400, (target, raw)


def test_options_asterisk_gets_a_valid_environ(run_server, executor_args):
    """``OPTIONS *`` is a legal request; its PATH_INFO must still be CGI-valid ("" or "/...")."""
    server = run_server("envapp:app", *executor_args)
    raw = rawhttp.exchange(("127.0.0.1", server.port), rawhttp.request_bytes("OPTIONS", "*"))
    response = rawhttp.parse_one(raw)
    assert response.status == 200, server.log[-1500:]
    environ = json.loads(response.body)
    assert environ["REQUEST_METHOD"] == "OPTIONS"
    assert environ["REQUEST_URI"] == "*"
    assert environ["PATH_INFO"] in ("", "/")


# -- addresses, protocol, software ---------------------------------------------------


def test_server_and_remote_addresses(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        conn.request("GET", "/addr", headers={"Host": "example.com:1234"})
        response = conn.getresponse()
        assert response.status == 200
        environ = json.loads(response.read())
    finally:
        conn.close()
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(server.port)
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] == str(client_port)
    assert environ["HTTP_HOST"] == "example.com:1234"
    assert environ["wsgi.url_scheme"] == "http"


def test_server_protocol_http10_and_http11(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    address = ("127.0.0.1", server.port)
    old = rawhttp.parse_one(rawhttp.exchange(address, b"GET /old HTTP/1.0\r\n\r\n"))
    assert old.status == 200, old.body
    assert json.loads(old.body)["SERVER_PROTOCOL"] == "HTTP/1.0"
    new = raw_environ(address, rawhttp.request_bytes("GET", "/new", version="1.1"))
    assert new["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_server_software(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    environ = get_environ(server, "/")
    assert environ["SERVER_SOFTWARE"] == f"wsgipool/{wsgipool.__version__}"


# -- body: CONTENT_TYPE and CONTENT_LENGTH --------------------------------------------


def test_content_type_and_length(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    body = b"name=value&x=caf%C3%A9"
    environ = get_environ(
        server,
        "/form",
        method="POST",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert environ["CONTENT_LENGTH"] == str(len(body))
    assert environ["body_length"] == len(body)
    assert environ["body_head"] == body.decode("latin-1")
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ

    # No body and no Content-Length header: no CONTENT_LENGTH (as gunicorn and werkzeug).
    environ = get_environ(server, "/nobody")
    assert "CONTENT_LENGTH" not in environ
    assert environ["body_length"] == 0
    assert "CONTENT_TYPE" not in environ


def test_content_length_of_chunked_uploads(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    address = ("127.0.0.1", server.port)
    parts = [b"a" * 1000, b"b" * 3000, b"c" * 6000]
    request = rawhttp.request_bytes(
        "POST",
        "/chunked",
        [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")],
        rawhttp.chunked(parts),
    )
    environ = raw_environ(address, request)
    assert environ["CONTENT_LENGTH"] == "10000"
    assert environ["body_length"] == 10000
    assert environ["body_head"] == "a" * 64
    assert environ["CONTENT_TYPE"] == "application/octet-stream"

    # Larger than --inbuf-overflow (512K by default): spooled to a file, same answer.
    big = [bytes([65 + i % 26]) * 100_000 for i in range(20)]
    request = rawhttp.request_bytes(
        "POST", "/chunked-big", [("Transfer-Encoding", "chunked")], rawhttp.chunked(big)
    )
    environ = raw_environ(address, request)
    assert environ["CONTENT_LENGTH"] == "2000000"
    assert environ["body_length"] == 2_000_000
    assert environ["body_head"] == "A" * 64

    # An empty chunked body.
    request = rawhttp.request_bytes(
        "POST", "/chunked-empty", [("Transfer-Encoding", "chunked")], b"0\r\n\r\n"
    )
    environ = raw_environ(address, request)
    assert environ["CONTENT_LENGTH"] == "0"
    assert environ["body_length"] == 0


# -- request headers ------------------------------------------------------------------


def test_repeated_headers_are_joined(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    request = rawhttp.request_bytes(
        "GET",
        "/headers",
        [
            ("X-Multi", "a"),
            ("Accept", "text/html"),
            ("X-Multi", "b"),
            ("Cookie", "a=1"),
            ("x-multi", "c"),
            ("Cookie", "b=2; c=3"),
            ("Accept", "application/json"),
        ],
    )
    environ = raw_environ(("127.0.0.1", server.port), request)
    assert environ["HTTP_X_MULTI"] == "a,b,c"  # as gunicorn, werkzeug and Granian join them
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_headers_with_underscores_are_dropped(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    address = ("127.0.0.1", server.port)

    alone = raw_environ(
        address,
        rawhttp.request_bytes(
            "GET", "/u", [("X_Auth_User", "evil"), ("Content_Type", "evil/type")]
        ),
    )
    assert "HTTP_X_AUTH_USER" not in alone
    assert "CONTENT_TYPE" not in alone
    assert not any("evil" in str(value) for value in alone.values())

    for headers in (
        [("X_Auth_User", "evil"), ("X-Auth-User", "good")],
        [("X-Auth-User", "good"), ("X_Auth_User", "evil")],
    ):
        environ = raw_environ(address, rawhttp.request_bytes("GET", "/u", headers))
        assert environ["HTTP_X_AUTH_USER"] == "good"


# -- wsgi.* ---------------------------------------------------------------------------


def test_wsgi_keys_are_truthful(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    environ = get_environ(server, "/wsgi")
    assert environ["wsgi.version"] == [1, 0]
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input_terminated"] is True
    assert environ["has_file_wrapper"] is True
    assert environ["errors_writable"] is True
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.run_once"] is False
    if is_process_mode(executor_args):
        assert environ["wsgi.multiprocess"] is True
        pid = environ["wsgipool.worker_pid"]
        assert pid != server.pid
        assert pid in server.worker_pids()
    else:
        assert environ["wsgi.multiprocess"] is False
        assert "wsgipool.worker_pid" not in environ


def test_both_executors_give_the_same_environ(run_server):
    """Same requests, both executors: identical environ but for the documented keys."""
    threads = run_server("envapp:app", "--workers", "0", "--threads", "2")
    processes = run_server("envapp:app", "--workers", "2", "--threads", "2")
    requests = [
        ("GET", "/caf%C3%A9/x?a=1&b=%20", None, {"X-Multi": "1", "Cookie": "a=1"}),
        ("POST", "/post", b"x" * 700_000, {"Content-Type": "application/octet-stream"}),
        ("PUT", "/put%2Fx", b"small", {"Content-Type": "text/plain"}),
    ]
    ignored = {"wsgi.multiprocess", "wsgipool.worker_pid", "SERVER_PORT", "REMOTE_PORT"}
    for method, path, body, headers in requests:
        one = get_environ(threads, path, method=method, body=body, headers=headers)
        two = get_environ(processes, path, method=method, body=body, headers=headers)
        assert one["HTTP_HOST"] == f"127.0.0.1:{threads.port}"
        one["HTTP_HOST"] = two["HTTP_HOST"] = "host"
        assert {k: v for k, v in one.items() if k not in ignored} == {
            k: v for k, v in two.items() if k not in ignored
        }
        assert one["wsgi.multiprocess"] is False
        assert two["wsgi.multiprocess"] is True


# -- unix sockets ----------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def test_unix_socket_values(run_server, executor_args, short_tmp):
    path = str(short_tmp / "s.sock")
    run_server("envapp:app", *executor_args, "--bind", f"unix:{path}", bind=False)
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/unix/caf%C3%A9?x=1")
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    assert response.status == 200, data
    environ = json.loads(data)
    assert environ["SERVER_NAME"] == "unix"
    assert environ["SERVER_PORT"] == path
    assert environ["REMOTE_ADDR"] == "unix"
    assert environ["PATH_INFO"] == "/unix/caf\u00c3\u00a9"
    assert environ["QUERY_STRING"] == "x=1"


# -- script_name -----------------------------------------------------------------------


def test_script_name_serves_prefix_and_below_only(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--script-name", "/foo")

    environ = get_environ(server, "/foo")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/foo", "")
    environ = get_environ(server, "/foo/")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/foo", "/")
    environ = get_environ(server, "/foo/bar/caf%C3%A9?x=1")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/foo", "/bar/caf\u00c3\u00a9")
    assert environ["REQUEST_URI"] == "/foo/bar/caf%C3%A9?x=1"
    assert environ["QUERY_STRING"] == "x=1"

    for outside in ("/foobar", "/foobar/x", "/fo", "/", "/bar/foo"):
        status, _headers, body = server.request("GET", outside)
        assert status == 404, (outside, body[:300])
        assert b"SCRIPT_NAME" not in body


# -- forwarded_allow_ips ---------------------------------------------------------------

FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def test_forwarded_headers_from_trusted_peer(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--forwarded-allow-ips", "*")
    environ = get_environ(server, "/fwd", headers=FORWARDED)
    assert environ["REMOTE_ADDR"] == "203.0.113.7"
    assert environ["wsgi.url_scheme"] == "https"
    # Without the headers, the peer's own values.
    environ = get_environ(server, "/fwd")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"


def test_forwarded_headers_from_default_trusted_localhost(run_server, executor_args):
    server = run_server("envapp:app", *executor_args)
    environ = get_environ(server, "/fwd", headers=FORWARDED)
    assert environ["REMOTE_ADDR"] == "203.0.113.7"
    assert environ["wsgi.url_scheme"] == "https"


def test_forwarded_headers_from_untrusted_peer_are_ignored(run_server, executor_args):
    server = run_server("envapp:app", *executor_args, "--forwarded-allow-ips", "10.0.0.1")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        conn.request("GET", "/fwd", headers=FORWARDED)
        response = conn.getresponse()
        assert response.status == 200
        environ = json.loads(response.read())
    finally:
        conn.close()
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] == str(client_port)
    assert environ["wsgi.url_scheme"] == "http"
    # The headers themselves still reach the app, untouched.
    assert environ["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"


def test_header_values_arrive_as_latin1_strings(run_server, executor_args):
    """Header values with latin-1 bytes arrive as the same latin-1 characters."""
    server = run_server("envapp:app", *executor_args)
    request = (
        b"GET /hdr HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Name: caf\xc3\xa9 \xff\r\n"
        b"Connection: close\r\n\r\n"
    )
    environ = raw_environ(("127.0.0.1", server.port), request)
    assert environ["HTTP_X_NAME"] == "caf\u00c3\u00a9 \u00ff"


def test_forwarded_for_takes_the_rightmost_hop_not_the_clients(run_server, executor_args):
    """Issue 9, item 7: behind a proxy that appends, the leftmost hop is the client's to write."""
    server = run_server("envapp:app", *executor_args, "--forwarded-allow-ips", "*")
    spoofed = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    assert get_environ(server, "/fwd", headers=spoofed)["REMOTE_ADDR"] == "203.0.113.7"
    # Not an address: ignored, the peer's own address stays.
    for value in ("<script>", "1.2.3.4, not-an-ip", "unknown"):
        environ = get_environ(server, "/fwd", headers={"X-Forwarded-For": value})
        assert environ["REMOTE_ADDR"] == "127.0.0.1", value
        assert environ["REMOTE_HOST"] == "127.0.0.1", value
    # X-Forwarded-Proto likewise: a proxy that appends (HAProxy's add-header, a second
    # header line) leaves the client's value on the left; the nearest proxy's counts.
    for value, scheme in (("https, http", "http"), ("http, https", "https"), ("https", "https")):
        environ = get_environ(server, "/fwd", headers={"X-Forwarded-Proto": value})
        assert environ["wsgi.url_scheme"] == scheme, value
    request = (
        b"GET /fwd HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Proto: http\r\nConnection: close\r\n\r\n"
    )
    assert raw_environ(("127.0.0.1", server.port), request)["wsgi.url_scheme"] == "http"


def _unix_environ(path, headers: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /fwd HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    response = rawhttp.parse_one(data)
    assert response.status == 200, response.body[:2000]
    return json.loads(response.body)


@pytest.mark.parametrize(("allow", "trusted"), [("unix", True), ("127.0.0.1", False)])
def test_forwarded_headers_from_unix_socket_peers(
    run_server, short_tmp, executor_args, allow, trusted
):
    """`--forwarded-allow-ips unix` trusts nginx on a unix socket, without trusting '*'."""
    path = short_tmp / "fwd.sock"
    server = run_server(
        "envapp:app",
        *executor_args,
        "--bind",
        f"unix:{path}",
        "--forwarded-allow-ips",
        allow,
        bind=False,
    )
    assert server.proc.poll() is None
    environ = _unix_environ(
        path, b"X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
    )
    if trusted:
        assert environ["REMOTE_ADDR"] == "203.0.113.7"
        assert environ["wsgi.url_scheme"] == "https"
    else:
        assert environ["REMOTE_ADDR"] == "unix"
        assert environ["wsgi.url_scheme"] == "http"
