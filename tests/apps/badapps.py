"""Apps that break PEP 3333 or HTTP on purpose, one per path, for the response tests.

Not wrapped in a validator: the point is to see what the *server* does with
what a careless app returns.  Every iterable here records its close() in the
file named by the ``close`` query parameter, when given.
"""

from __future__ import annotations

import sys
import time

from tests.apps.appkit import Recorded
from tests.apps.appkit import query as _query

#: Not a WSGI callable: `wsgipool serve badapps:NOT_CALLABLE` must refuse it.
NOT_CALLABLE = 42

OK_BODY = b"ok-body"
TEXT = [("Content-Type", "text/plain")]


def ok(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(OK_BODY)))])
    return [OK_BODY]


def second_start(environ, start_response):
    start_response("200 OK", TEXT)
    start_response("201 Created", TEXT)  # no exc_info: a PEP 3333 violation
    return [b"second start_response was accepted"]


def exc_info_before_headers(environ, start_response):
    """The legal use of exc_info: nothing was sent yet, so the status may change."""
    start_response("200 OK", TEXT)
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Changed Mind", TEXT, sys.exc_info())
    return [b"replaced"]


def _exc_info_after_headers(start_response):
    yield b"partial-"
    try:
        raise ValueError("exc-info-after-headers")
    except ValueError:
        start_response("500 Internal Server Error", TEXT, sys.exc_info())
    yield b"must never be sent"


def exc_info_after_headers(environ, start_response):
    start_response("200 OK", TEXT)
    return Recorded(_exc_info_after_headers(start_response), _query(environ).get("close"))


def write_callable(environ, start_response):
    write = start_response("200 OK", TEXT)
    write(b"one,")
    write(b"two,")
    return [b"three"]


def bad_header(environ, start_response):
    kind = _query(environ).get("kind", "cr")
    values = {
        "cr": ("X-Bad", "a\rX-Injected: cr"),
        "lf": ("X-Bad", "a\nX-Injected: lf"),
        "crlf": ("X-Bad", "a\r\nX-Injected: crlf"),
        "nul": ("X-Bad", "a\x00X-Injected: nul"),
        "name-crlf": ("X-Bad\r\nX-Injected", "name"),
        "name-space": ("X Injected", "name"),
        "name-colon": ("X-Injected:", "colon"),
    }
    start_response("200 OK", [*TEXT, values[kind]])
    return [b"X-Injected body must not be sent"]


def bad_status(environ, start_response):
    kind = _query(environ).get("kind", "crlf")
    statuses = {
        "crlf": "200 OK\r\nX-Injected: status",
        "lf": "200 OK\nX-Injected: status",
        "nul": "200 OK\x00X-Injected",
        "nocode": "OK",
        "short": "20 OK",
    }
    start_response(statuses[kind], TEXT)
    return [b"X-Injected body must not be sent"]


def hop_by_hop(environ, start_response):
    body = b"hop-by-hop-body"
    start_response(
        "200 OK",
        [
            *TEXT,
            ("Connection", "close"),
            ("Keep-Alive", "timeout=1"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Proxy-Authenticate", "Basic"),
            ("X-End-To-End", "kept"),
        ],
    )
    return [body]


def short_length(environ, start_response):
    """Declares 100 bytes, sends 10."""
    start_response("200 OK", [*TEXT, ("Content-Length", "100")])
    return Recorded([b"0123456789"], _query(environ).get("close"))


def _short_gen():
    yield b"01234"
    yield b"56789"


def short_length_stream(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", "100")])
    return Recorded(_short_gen(), _query(environ).get("close"))


def long_length(environ, start_response):
    """Declares 5 bytes, sends 20: only 5 may leave."""
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return Recorded([b"ABCDE", b"FGHIJKLMNOPQRST"], _query(environ).get("close"))


def _long_gen():
    yield b"ABC"
    yield b"DEFGHIJ"
    yield b"KLMNOPQRST"


def long_length_stream(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", "5")])
    return Recorded(_long_gen(), _query(environ).get("close"))


def _exact_gen():
    yield b"01234"
    yield b"56789"


def _exact_then_pause_gen():
    yield b"01234"
    yield b"56789"
    time.sleep(0.3)  # the app is still running when its declared length is complete


def exact_then_pause(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", "10")])
    return Recorded(_exact_then_pause_gen(), _query(environ).get("close"))


def exact_length_stream(environ, start_response):
    """A generator whose Content-Length is right: the everyday streamed download."""
    start_response("200 OK", [*TEXT, ("Content-Length", "10")])
    return Recorded(_exact_gen(), _query(environ).get("close"))


def status_with_body(environ, start_response):
    """204 or 304 (?code=) with a body the server must not send."""
    code = _query(environ).get("code", "204")
    reason = {"204": "No Content", "304": "Not Modified"}[code]
    body = b"this body must not be sent"
    start_response(
        f"{code} {reason}", [*TEXT, ("ETag", '"v1"'), ("Content-Length", str(len(body)))]
    )
    return Recorded([body], _query(environ).get("close"))


def status_with_body_stream(environ, start_response):
    code = _query(environ).get("code", "204")
    reason = {"204": "No Content", "304": "Not Modified"}[code]

    def gen():
        yield b"this body "
        yield b"must not be sent"

    start_response(f"{code} {reason}", [*TEXT, ("ETag", '"v1"')])
    return Recorded(gen(), _query(environ).get("close"))


def head_body(environ, start_response):
    """Answers every method with the same body (HEAD too, as many apps do)."""
    body = b"0123456789" * 100
    start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
    return Recorded([body], _query(environ).get("close"))


def _head_stream_gen():
    for _ in range(100):
        yield b"0123456789"


def head_body_stream(environ, start_response):
    start_response("200 OK", TEXT)
    return Recorded(_head_stream_gen(), _query(environ).get("close"))


def error_before_headers(environ, start_response):
    raise RuntimeError("secret-detail-before-headers")


def _error_in_gen():
    raise RuntimeError("secret-detail-in-generator")
    yield b""  # pragma: no cover - makes this a generator


def error_in_iterable_before_body(environ, start_response):
    start_response("200 OK", TEXT)
    return Recorded(_error_in_gen(), _query(environ).get("close"))


def _error_after_gen():
    yield b"first-part-"
    raise RuntimeError("secret-detail-after-headers")


def error_after_headers(environ, start_response):
    start_response("200 OK", TEXT)
    return Recorded(_error_after_gen(), _query(environ).get("close"))


def no_start_response(environ, start_response):
    return [b"no start_response"]


def not_bytes(environ, start_response):
    start_response("200 OK", TEXT)
    return ["a str, not bytes"]


def own_server_and_date(environ, start_response):
    """Headers the server would otherwise set itself: the app's must win, once each."""
    start_response(
        "200 OK",
        [
            *TEXT,
            ("Server", "my-app/1.0"),
            ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("Content-Length", "2"),
        ],
    )
    return [b"ok"]


def latin1_header(environ, start_response):
    """PEP 3333: header values are native strings whose characters are latin-1 bytes."""
    start_response(
        "200 OK",
        [
            *TEXT,
            ("X-Latin1", "caf\u00e9 \u00ff"),
            ("Content-Disposition", 'attachment; filename="r\u00e9sum\u00e9.txt"'),
        ],
    )
    return [b"latin-1 headers"]


def list_headers(environ, start_response):
    """Headers as [name, value] lists, not PEP 3333's tuples: gunicorn and waitress take them."""
    start_response("200 OK", [["Content-Type", "text/plain"], ["X-Colour", "Blue"]])
    return [b"list headers"]


def padded_headers(environ, start_response):
    """Values with whitespace around them: Django sends every Set-Cookie as " name=value"."""
    headers = [*TEXT, ("Set-Cookie", " a=1; Path=/"), ("Set-Cookie", " b=2 "), ("X-Tab", "\tv")]
    start_response("200 OK", headers)
    if _query(environ).get("stream"):
        return iter([b"padded ", b"headers"])
    return [b"padded headers"]


def no_length(environ, start_response):
    """A whole body (a list) without Content-Length: the server declares it (HEAD too)."""
    start_response("200 OK", TEXT)
    return [b"twelve bytes"]


def head_empty(environ, start_response):
    """werkzeug's way with HEAD (Flask's send_file of a file object, streamed views): an
    empty body and no Content-Length, where GET streams a body of unknown length."""
    start_response("200 OK", TEXT)
    if environ["REQUEST_METHOD"] == "HEAD":
        return Recorded([], _query(environ).get("close"))
    return Recorded(_head_stream_gen(), _query(environ).get("close"))


def conflicting_length(environ, start_response):
    start_response("200 OK", [*TEXT, ("Content-Length", "3"), ("Content-Length", "4")])
    return [b"abcd"]


ROUTES = {
    "/ok": ok,
    "/second-start": second_start,
    "/exc-info-before-headers": exc_info_before_headers,
    "/exc-info-after-headers": exc_info_after_headers,
    "/write": write_callable,
    "/bad-header": bad_header,
    "/bad-status": bad_status,
    "/hop-by-hop": hop_by_hop,
    "/short": short_length,
    "/short-stream": short_length_stream,
    "/long": long_length,
    "/long-stream": long_length_stream,
    "/exact-stream": exact_length_stream,
    "/exact-then-pause": exact_then_pause,
    "/status-body": status_with_body,
    "/status-body-stream": status_with_body_stream,
    "/head-body": head_body,
    "/head-body-stream": head_body_stream,
    "/error-before": error_before_headers,
    "/error-in-iterable": error_in_iterable_before_body,
    "/error-after": error_after_headers,
    "/no-start-response": no_start_response,
    "/not-bytes": not_bytes,
    "/conflicting-length": conflicting_length,
    "/no-length": no_length,
    "/head-empty": head_empty,
    "/own-server-date": own_server_and_date,
    "/latin1-header": latin1_header,
    "/list-headers": list_headers,
    "/padded-headers": padded_headers,
}


def app(environ, start_response):
    environ["wsgi.input"].read()
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        start_response("404 Not Found", TEXT)
        return [b"no such bad app\n"]
    return route(environ, start_response)
