"""The same WSGI workloads as ASGI apps, for uvicorn, through an ASGI adapter.

``uvicorn bench.apps.asgi:app`` with ``BENCH_APP=bench.apps.workloads:hello`` (the
WSGI app to wrap), ``BENCH_ASGI`` (the adapter: ``a2wsgi``, the default,
``asgiref`` or ``wsgipool``) and ``BENCH_THREADS``: the size of a2wsgi's thread
pool in each uvicorn worker process, asgiref's (its ``ASGI_THREADS``), or the
threads of each of wsgipool's ``BENCH_WORKERS`` worker processes (process mode;
run uvicorn with ``--lifespan on`` so the pool starts before the first request).
"""

from __future__ import annotations

import importlib
import os
from typing import Any


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr or "application")


def _build() -> Any:
    adapter = os.environ.get("BENCH_ASGI", "a2wsgi")
    threads = int(os.environ.get("BENCH_THREADS", "4"))
    target = os.environ["BENCH_APP"]
    if adapter == "wsgipool":
        from wsgipool import ProcessExecutor
        from wsgipool.asgi import WSGIMiddleware

        workers = int(os.environ.get("BENCH_WORKERS", "2"))
        executor = ProcessExecutor(workers=workers, threads=threads)
        return WSGIMiddleware(target, executor=executor)
    if adapter == "asgiref":
        os.environ["ASGI_THREADS"] = str(threads)  # asgiref's thread pool size
        from asgiref.wsgi import WsgiToAsgi

        return WsgiToAsgi(_load(target))
    from a2wsgi import WSGIMiddleware as A2WSGIMiddleware

    return A2WSGIMiddleware(_load(target), workers=threads)


app = _build()
