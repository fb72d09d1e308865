"""What the test apps share: the query string as a dict, a mark file written whole,
and an iterable whose close() leaves a mark in a file, the tests' proof that
PEP 3333's close() ran."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs


def query(environ: dict[str, Any]) -> dict[str, str]:
    """The first value of each query parameter."""
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def mark(path: str, text: str) -> None:
    """Write `text` to `path` whole: a test that sees the file also sees its content
    (written to a dot file beside it, then renamed; a plain write_text creates it
    empty first)."""
    head, name = os.path.split(path)
    partial = os.path.join(head, f".{name}.partial")  # a dot file: not one of the marks
    with open(partial, "w") as file:
        file.write(text)
    os.replace(partial, path)


class Recorded:
    """Iterates `chunks`; close() closes them and appends a "closed" line to `path`."""

    def __init__(self, chunks: Iterable[bytes], path: str | None) -> None:
        self._chunks = chunks
        self._path = path

    def __iter__(self):
        return iter(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        if self._path:
            with open(self._path, "a") as file:
                file.write(f"closed {time.time()}\n")


def client_descriptor(environ: dict[str, Any]) -> int:
    """A descriptor of this process that is a socket connected to the request's client
    (the fast lane sends it to the worker with a GET), or -1."""
    client = (environ["REMOTE_ADDR"], int(environ["REMOTE_PORT"]))
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        finally:
            sock.detach()
        if isinstance(peer, tuple) and peer[:2] == client:
            return int(name)
    return -1
