"""A plain app for the wire tests: what the client sees on the wire, in both modes.

- ``/echo``: the request as JSON (method, path, query, protocol, CONTENT_LENGTH
  when present, the body's length); with ``status=S`` the status line is S as
  given (``200`` or ``200 `` test a status without a reason phrase); with
  ``headers=1`` also the request's HTTP_ variables.
- ``/stream?parts=N``: N chunks from a generator, no Content-Length.
- ``/bare``: a body with no header at all (no Content-Type, no Content-Length).
- ``/server``: sets its own Server header.
- ``/count``: counts the requests this process served (for "the app ran").
"""

from __future__ import annotations

import json
import threading

from tests.apps.appkit import query as _query

_lock = threading.Lock()
_served = [0]


def _stream(parts: int):
    for index in range(parts):
        yield f"part-{index};".encode()


def app(environ, start_response):
    body_in = environ["wsgi.input"].read()
    with _lock:
        _served[0] += 1
        served = _served[0]
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(int(query.get("parts", "3")))
    if path == "/bare":
        start_response("200 OK", [])
        return [b"bare-body"]
    if path == "/server":
        start_response("200 OK", [("Server", "my-app"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/count":
        data = str(served).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))]
        )
        return [data]
    echo = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"],
        "body_length": len(body_in),
    }
    if "CONTENT_LENGTH" in environ:
        echo["CONTENT_LENGTH"] = environ["CONTENT_LENGTH"]
    if query.get("headers"):  # the request's header variables, for the trailer test
        echo["headers"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    data = json.dumps(echo, sort_keys=True).encode()
    status = query.get("status", "200 OK")  # "200+" is "200 ": a space and no reason
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
