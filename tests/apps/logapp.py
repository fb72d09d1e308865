"""An app for the log tests: small, streamed, failing, short and file responses."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from appkit import query

log = logging.getLogger("logapp")


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    args = query(environ)
    if path == "/file":
        file = open(args["path"], "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](file, 65536)
    if path.startswith("/raise"):
        raise RuntimeError("the app failed on purpose")
    if path.startswith("/short"):
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only ten b"]
    if path.startswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Out", "streamed")])
        size = int(args.get("size", "1000"))
        return (b"x" * size for _ in range(int(args.get("n", "5"))))
    if path.startswith("/slow"):
        time.sleep(int(args.get("ms", "50")) / 1000)
    if path.startswith("/stderr"):
        print(f"stderr line from {os.getpid()}", file=sys.stderr, flush=True)
    if path.startswith("/log"):
        log.warning("app warning from %d", os.getpid())
    body = f"hello {os.getpid()}\n".encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    if "out" in args:  # a header for the access log's %({X-Out}o)s on a small whole response
        headers.append(("X-Out", args["out"]))
    start_response("200 OK", headers)
    return [body]


KEPT: list[bytes] = []


def grow_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Each request keeps ``?mb=`` MiB more, written so it is resident."""
    args = query(environ)
    mb = int(args.get("mb", "0"))
    KEPT.append(b"\x01" * (mb << 20))
    body = f"kept {len(KEPT)} {os.getpid()}\n".encode()
    if "stream" in args:  # a streamed response: it ends with END, not RAW
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([body[:4], body[4:]])
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
