"""A tiny WSGI app to see wsgipool at work: ``wsgipool serve wsgipool.demo:app``.

Each page says which process and thread served it; reload a few times to see
the requests spread over the workers.
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["app"]

_STARTED = time.time()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    if path not in ("/", ""):
        body = b"404 Not Found\n"
        start_response(
            "404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    mode = "worker process" if environ.get("wsgi.multiprocess") else "main process (threads)"
    rows = [
        ("served by", mode),
        ("process id", str(os.getpid())),
        ("thread", threading.current_thread().name),
        ("request", f"{environ.get('REQUEST_METHOD')} {environ.get('RAW_URI', path)}"),
        ("client", environ.get("REMOTE_ADDR", "")),
        ("server", environ.get("SERVER_SOFTWARE", "")),
        ("app loaded", f"{time.time() - _STARTED:.1f}s ago"),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = (
        "<!doctype html><meta charset=utf-8><title>wsgipool demo</title>"
        "<h1>Hello from wsgipool</h1>"
        f"<table>{table}</table><p>Reload to see other workers answer.</p>\n"
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))],
    )
    return [page]
