"""Large streamed responses, which a worker writes straight to the client's socket.

- ``/stream?size=N&length=L``: N bytes of a position-dependent pattern in 64 KiB
  chunks, with a declared Content-Length L when given (L may differ from N).
- ``/fail?after=K``: K chunks, then an exception.
- ``/stall?after=K&flag=F``: K chunks, then waits (at most 30 s) for file F.
- ``/pid``: the worker's pid.
- ``/holds-client``: ``held`` if this worker has a socket connected to the
  client (the fast lane sends it with the request), else ``not held``.
- ``/whole?size=N&status=S``: a whole response of N bytes with status S.
- ``/short``: declares a Content-Length of 10 and sends 5 bytes.
- ``/sleep?s=S``: a small response after S seconds.

``close`` in the query names a file that close() appends to.
"""

from __future__ import annotations

import os
import time

from tests.apps.appkit import Recorded, client_descriptor
from tests.apps.appkit import query as parse_query

CHUNK = 64 * 1024


def pattern(start: int, size: int) -> bytes:
    """Bytes that differ with their position, so a misplaced byte is seen."""
    return bytes((start + i) * 7 % 251 for i in range(size))


_PATTERN = pattern(0, 251 * 1024)  # the pattern repeats every 251 bytes


def chunk_at(offset: int, size: int) -> bytes:
    start = offset % 251
    return _PATTERN[start : start + size]


def stream(size: int):
    offset = 0
    while offset < size:
        step = min(CHUNK, size - offset)
        yield chunk_at(offset, step)
        offset += step


def _fail(after: int):
    for index in range(after):
        yield chunk_at(index * CHUNK, CHUNK)
    raise RuntimeError("failed in the middle of a stream")


def _stall(after: int, flag: str):
    for index in range(after):
        yield chunk_at(index * CHUNK, CHUNK)
    deadline = time.monotonic() + 30
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield chunk_at(after * CHUNK, CHUNK)


def _small(start_response, body: bytes, status: str = "200 OK"):
    start_response(status, [("Content-Type", "text/plain")])
    return [body]


def app(environ, start_response):
    query = parse_query(environ)
    path = environ["PATH_INFO"]
    headers = [("Content-Type", "application/octet-stream")]
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/holds-client":
        return _small(start_response, b"held" if client_descriptor(environ) >= 0 else b"not held")
    if path == "/whole":
        status = query.get("status", "200 OK").replace("+", " ")
        return _small(start_response, chunk_at(0, int(query.get("size", "0"))), status)
    if path == "/short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]
    if path == "/sleep":
        time.sleep(float(query["s"]))
        return _small(start_response, b"slept")
    if "length" in query:
        headers.append(("Content-Length", query["length"]))
    start_response("200 OK", headers)
    if path == "/stream":
        chunks = stream(int(query["size"]))
    elif path == "/fail":
        chunks = _fail(int(query["after"]))
    elif path == "/stall":
        chunks = _stall(int(query["after"]), query["flag"])
    else:
        chunks = iter([b"unknown path\n"])
    return Recorded(chunks, query.get("close"))
