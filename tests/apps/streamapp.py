"""Well-behaved streaming apps that tell the test what they are doing through files.

Paths (query parameters name the files, all inside the test's tmp_path):

- ``/block?flag=F``: yields a first chunk, then waits (at most 30 s) for file F
  to exist before yielding the second.
- ``/ticks?close=C&interval=S``: yields a chunk every S seconds for at most 60 s;
  close() appends to file C.
- ``/big?size=N``: a generator of N bytes in 64 KiB chunks.
- ``/slow?seconds=S&started=F``: creates F, sleeps S seconds, answers "slow-done";
  with ``until=G`` instead of seconds it waits (at most 30 s) for file G to exist;
  with ``size=N`` it answers N bytes from a generator instead.
- ``/file?path=P&seek=N&length=L``: file P from offset N through wsgi.file_wrapper,
  with Content-Length L when given; ``/filelike``: a BytesIO through it.
- ``/listed``: an object whose iterator is a list's (as Django's HttpResponse);
  ``/generated``: the same chunks from an iterator that cannot tell what is left.
- ``/whoami``: the process and thread that served the request.
"""

from __future__ import annotations

import io
import os
import threading
import time

from tests.apps.appkit import Recorded, mark
from tests.apps.appkit import query as _query

TEXT = [("Content-Type", "text/plain")]
_CHUNK = 64 * 1024


def _block(flag: str):
    yield b"first-chunk\n"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(flag):
            yield b"after-flag\n"
            return
        time.sleep(0.01)
    yield b"flag-timeout\n"


def _ticks(interval: float, size: int):
    deadline = time.monotonic() + 60
    payload = b"t" * size
    while time.monotonic() < deadline:
        yield payload
        time.sleep(interval)


def _big(size: int):
    chunk = b"x" * _CHUNK
    left = size
    while left >= _CHUNK:
        yield chunk
        left -= _CHUNK
    if left:
        yield chunk[:left]


class _Listed:
    """A response object that iterates a list (as Django's HttpResponse does)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)


def app(environ, start_response):
    environ["wsgi.input"].read()
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/block":
        start_response("200 OK", TEXT)
        return _block(query["flag"])
    if path == "/ticks":
        start_response("200 OK", TEXT)
        interval = float(query.get("interval", "0.2"))
        size = int(query.get("size", "5"))
        return Recorded(_ticks(interval, size), query.get("close"))
    if path == "/big":
        size = int(query["size"])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _big(size)
    if path == "/slow":
        mark(query["started"], str(os.getpid()))
        if "until" in query:
            deadline = time.monotonic() + 30
            while not os.path.exists(query["until"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(float(query.get("seconds", "1")))
        if "size" in query:  # then a streamed answer, which the fast lane hands back
            start_response("200 OK", TEXT)
            return _big(int(query["size"]))
        body = b"slow-done"
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
        return [body]
    if path == "/file":
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in query:
            headers.append(("Content-Length", query["length"]))
        file = open(query["path"], "rb")
        file.seek(int(query.get("seek", "0")))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](file, 32768)
    if path == "/filelike":
        # A file-like object without a descriptor: the server must iterate it.
        data = bytes(range(256)) * int(query.get("repeat", "1"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(data), 1000)
    if path == "/listed":
        start_response("200 OK", TEXT)
        return _Listed([b"listed-body"])
    if path == "/generated":
        start_response("200 OK", TEXT)
        return iter([b"generated-body"].__iter__().__next__, None)
    if path == "/late-big":  # a whole response too large for the fast lane, after a wait
        time.sleep(float(query.get("seconds", "0.6")))
        body = b"x" * int(query.get("size", "40000"))
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
        return [body]
    if path == "/whoami":
        body = f"{os.getpid()} {threading.current_thread().name}".encode()
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", TEXT)
    return [b"not found\n"]
