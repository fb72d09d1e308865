"""The same WSGI workloads as ASGI apps, for uvicorn, through a2wsgi's WSGIMiddleware.

``uvicorn bench.apps.asgi:app`` with ``BENCH_APP=bench.apps.workloads:hello`` (the
WSGI app to wrap) and ``BENCH_THREADS`` (the size of a2wsgi's thread pool in each
worker process).
"""

from __future__ import annotations

import importlib
import os

from a2wsgi import WSGIMiddleware


def _load(target: str) -> object:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr or "application")


app = WSGIMiddleware(
    _load(os.environ["BENCH_APP"]),  # type: ignore[arg-type]
    workers=int(os.environ.get("BENCH_THREADS", "4")),
)
