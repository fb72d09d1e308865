"""An app whose requests kill their worker, for the retry tests (wsgipool/retry.py).

Every answer is JSON with the answering worker's ``pid``, the request's
``retry`` (``environ['wsgipool.retry']``, 0 when absent), its ``method``, and
the ``size`` and ``sha256`` of the body it read.

- ``/slow[ms, touch]``: sleeps `ms` milliseconds (default 500); with `touch`,
  first writes this worker's pid to that file name in ``$RETRYAPP_MARK_DIR``.
- ``/die-once``: on its first run the worker crashes (``os._exit(3)``, after
  reading the body); a retry answers.
- ``/poison``: SIGKILLs its worker on every run.
- ``/hog-once[mb, ms]``: on its first run holds `mb` MiB (default 150) for `ms`
  milliseconds (default 20000) so ``--max-rss-hard`` kills the worker; a retry answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from tests.apps.appkit import mark

_MIB = 1024 * 1024


def _touch(name: str) -> None:
    directory = os.environ.get("RETRYAPP_MARK_DIR")
    if directory and name and "/" not in name and not name.startswith("."):
        mark(os.path.join(directory, name), str(os.getpid()))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    body = environ["wsgi.input"].read()
    retry = environ.get("wsgipool.retry", 0)
    path = environ["PATH_INFO"]
    _touch(query.get("touch", ""))
    if path == "/slow":
        time.sleep(int(query.get("ms", "500")) / 1000)
    elif path == "/die-once" and not retry:
        os._exit(3)  # a crash
    elif path == "/poison":
        os.kill(os.getpid(), signal.SIGKILL)
    elif path == "/hog-once" and not retry:
        hog = bytearray(int(query.get("mb", "150")) * _MIB)
        for i in range(0, len(hog), 4096):  # touch every page: resident
            hog[i] = 1
        time.sleep(int(query.get("ms", "20000")) / 1000)
        del hog
    payload = {
        "pid": os.getpid(),
        "retry": retry,
        "method": environ["REQUEST_METHOD"],
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    data = json.dumps(payload, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]
