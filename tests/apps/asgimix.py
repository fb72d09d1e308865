"""The ASGI apps the adapter tests serve with uvicorn and Hypercorn, chosen by environment.

``ASGI_MODE``: ``thread`` (the ASGI server's threads) or ``process`` (a
ProcessExecutor whose keywords are the JSON in ``ASGI_POOL``).  ``ASGI_LAYOUT``:
``top`` (the adapter is the ASGI app; its lifespan starts the pool) or
``starlette`` (mounted at /legacy next to a native route /native and a
websocket route /ws; Starlette's lifespan runs the adapter's).

The WSGI app routes by PATH_INFO: streamapp's, faultapp's and badapps' paths, ``/count``
(reads wsgi.input in 64 KiB pieces and answers how many bytes), anything else
envapp (the environ as JSON).
"""

from __future__ import annotations

import json
import os

from tests.apps import badapps, envapp, faultapp, streamapp
from wsgipool import ProcessExecutor
from wsgipool.asgi import WSGIMiddleware

_STREAM = {"/block", "/ticks", "/big", "/file", "/filelike", "/whoami"}
_FAULT = {"/pid", "/hello", "/slow", "/cpu", "/exit", "/leak", "/drip", "/version", "/hog"}


def _count(environ, start_response):
    stream = environ["wsgi.input"]
    total = 0
    while True:
        piece = stream.read(65536)
        if not piece:
            break
        total += len(piece)
    body = json.dumps({"count": total, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def wsgi_app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path in _STREAM:
        return streamapp.app(environ, start_response)
    if path in _FAULT:
        return faultapp.app(environ, start_response)
    if path in badapps.ROUTES:
        return badapps.app(environ, start_response)
    if path == "/count":
        return _count(environ, start_response)
    return envapp.app(environ, start_response)


def _build():
    options = json.loads(os.environ.get("ASGI_OPTIONS", "{}"))
    if os.environ.get("ASGI_MODE", "thread") == "process":
        pool = json.loads(os.environ.get("ASGI_POOL", "{}"))
        options["executor"] = ProcessExecutor(**pool)
    legacy = WSGIMiddleware("asgimix:wsgi_app", **options)
    if os.environ.get("ASGI_LAYOUT", "top") == "top":
        return legacy

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route, WebSocketRoute

    async def native(request):
        return PlainTextResponse("native async route\n")

    async def echo(websocket):
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text("echo: " + text)
        await websocket.close()

    return Starlette(
        routes=[
            Route("/native", native),
            WebSocketRoute("/ws", echo),
            Mount("/legacy", app=legacy),
        ],
        lifespan=legacy.lifespan,
    )


app = _build()
