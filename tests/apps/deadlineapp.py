"""An app for the send and body deadlines: responses a client can refuse to read.

- ``/stream?close=C``: 64 KiB chunks for at most 60 s; close() appends to file C.
  With ``unwatched=1`` the worker stops enforcing the send deadline on the
  responses it writes itself (it always sees progress): a worker the main
  process must not trust.
- ``/whole?size=N``: N bytes as one chunk, with Content-Length (a whole response).
- ``/file?path=P``: file P through wsgi.file_wrapper (sendfile).
- ``/upload``: reads the body, answers its length.
- anything else: ``ok``.
"""

from __future__ import annotations

import time

from tests.apps.appkit import Recorded, query

_CHUNK = b"s" * 65536


def _stream():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        yield _CHUNK


def app(environ, start_response):
    path = environ["PATH_INFO"]
    params = query(environ)
    if path == "/stream":
        if params.get("unwatched"):
            import itertools

            import wsgipool.worker.direct as direct

            ticks = itertools.count(1)
            direct.queued = lambda sock: next(ticks)  # type: ignore[assignment]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Recorded(_stream(), params.get("close"))
    if path == "/whole":
        body = b"w" * int(params["size"])
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(params["path"], "rb"), 65536)
    if path == "/upload":
        size = len(environ["wsgi.input"].read())
        body = str(size).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
