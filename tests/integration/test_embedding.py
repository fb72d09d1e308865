"""The drop-in API in a program's own aiohttp app: WSGIHandler beside native routes.

An aiohttp `web.Application` with a native async handler, a websocket route and
`WSGIHandler` on the catch-all route, run with AppRunner/TCPSite on 127.0.0.1
inside the test, talked to by an aiohttp client.  With a ProcessExecutor the
pool starts and stops with the app (``cleanup_ctx``) and leaves no process
behind; without one the same app runs in threads of this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

APPS = Path(__file__).resolve().parents[1] / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

import faultapp  # noqa: E402

from wsgipool import ProcessExecutor, WSGIHandler  # noqa: E402


async def native(request: web.Request) -> web.Response:
    return web.json_response({"native": True, "pid": os.getpid()})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo: {message.data}")
    return ws


BARE_FUNCTION_WARNING = "Bare functions are deprecated"


def build_app(handler: WSGIHandler) -> web.Application:
    app = web.Application()
    app.router.add_get("/native", native)
    app.router.add_get("/ws", websocket)
    with warnings.catch_warnings():
        # Reported by test_handler_is_accepted_by_aiohttp_without_a_deprecation_warning;
        # ignored here so that the rest of the embedding is still checked.
        warnings.filterwarnings("ignore", BARE_FUNCTION_WARNING, DeprecationWarning)
        app.router.add_route("*", "/{path_info:.*}", handler)
    return app


def test_handler_is_accepted_by_aiohttp_without_a_deprecation_warning():
    """The documented drop-in line must not make aiohttp warn that the handler is not async."""
    app = web.Application()
    handler = WSGIHandler(faultapp.app)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.router.add_route("*", "/{path_info:.*}", handler)
    messages = [str(w.message) for w in caught]
    assert messages == [], messages


def new_children(before: set[int]) -> list[psutil.Process]:
    """Live processes under this one that were not there before (the resource tracker aside)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in before or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
            out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


async def exercise(app: web.Application) -> dict[str, Any]:
    """Run `app` on 127.0.0.1 and talk to its three kinds of route; returns what was seen."""
    runner = web.AppRunner(app)
    await runner.setup()
    seen: dict[str, Any] = {}
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/native") as response:
                assert response.status == 200
                seen["native"] = await response.json()
            async with session.get(f"{base}/hello") as response:
                assert response.status == 200
                seen["hello"] = (response.headers["Content-Type"], await response.read())
            async with session.get(f"{base}/pid") as response:
                assert response.status == 200
                seen["pid"] = await response.json()
            async with session.ws_connect(f"{base}/ws") as ws:
                await ws.send_str("ping")
                message = await ws.receive(timeout=10)
                assert message.type == aiohttp.WSMsgType.TEXT
                seen["ws"] = message.data

            async def slow(index: int) -> dict[str, Any]:
                async with session.get(f"{base}/slow?ms=400&i={index}") as response:
                    assert response.status == 200
                    return json.loads(await response.read())

            seen["slow"] = await asyncio.gather(*(slow(i) for i in range(4)))
            async with session.get(f"{base}/no-such-page") as response:
                seen["missing"] = response.status
    finally:
        seen["before_cleanup"] = {child.pid for child in psutil.Process().children(recursive=True)}
        await runner.cleanup()
    return seen


def test_process_executor_embedded_beside_native_and_websocket_routes():
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    executor = ProcessExecutor(workers=2, threads=2)
    handler = WSGIHandler(faultapp.app, executor=executor)
    app = build_app(handler)
    app.cleanup_ctx.append(executor.lifespan)
    pool: dict[str, list[int]] = {}

    async def on_startup(_app: web.Application) -> None:
        pool["workers"] = sorted(w.pid for w in executor.workers)
        pool["templates"] = list(executor.template_pids)

    app.on_startup.append(on_startup)
    seen = asyncio.run(exercise(app))

    assert seen["native"] == {"native": True, "pid": os.getpid()}
    assert seen["hello"] == ("text/plain", b"hello from faultapp\n")
    assert seen["ws"] == "echo: ping"
    assert seen["missing"] == 404
    info = seen["pid"]
    assert info["pid"] != os.getpid()
    assert info["multiprocess"] is True
    assert info["aiohttp_imported"] is False
    workers = pool["workers"]
    assert len(workers) == 2 and len(pool["templates"]) == 1, pool
    assert info["pid"] in workers
    # Four concurrent requests on 2 workers x 2 threads: both workers serve.
    assert {r["pid"] for r in seen["slow"]} == set(workers)
    assert set(workers) | set(pool["templates"]) <= seen["before_cleanup"]

    # After the app's cleanup, the pool is gone: no template, no worker.
    deadline = time.monotonic() + 10
    while new_children(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert new_children(before) == []
    for pid in [*workers, *pool["templates"]]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_thread_handler_serves_the_same_app_in_this_process():
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    seen = asyncio.run(exercise(build_app(WSGIHandler(faultapp.app))))

    assert seen["native"] == {"native": True, "pid": os.getpid()}
    assert seen["hello"] == ("text/plain", b"hello from faultapp\n")
    assert seen["ws"] == "echo: ping"
    assert seen["missing"] == 404
    info = seen["pid"]
    assert info["pid"] == os.getpid()
    assert info["multiprocess"] is False
    assert {r["pid"] for r in seen["slow"]} == {os.getpid()}
    assert new_children(before) == []


def test_both_executors_answer_alike():
    """Same app, same request: the same status, headers and body from either executor."""

    async def fetch_all(handler: WSGIHandler, lifespan: Any) -> list[tuple[int, str, bytes]]:
        app = build_app(handler)
        if lifespan is not None:
            app.cleanup_ctx.append(lifespan)
        runner = web.AppRunner(app)
        await runner.setup()
        out = []
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            async with aiohttp.ClientSession() as session:
                for path in ("/hello", "/no-such-page", "/slow?ms=1"):
                    async with session.get(f"http://{host}:{port}{path}") as response:
                        body = await response.read()
                        if path.startswith("/slow") or path == "/no-such-page":
                            body = json.dumps(
                                {k: v for k, v in json.loads(body).items() if k != "pid"}
                            ).encode()
                        out.append((response.status, response.headers["Content-Type"], body))
        finally:
            await runner.cleanup()
        return out

    threads = asyncio.run(fetch_all(WSGIHandler(faultapp.app), None))
    executor = ProcessExecutor(workers=1, threads=2)
    processes = asyncio.run(
        fetch_all(WSGIHandler(faultapp.app, executor=executor), executor.lifespan)
    )
    assert processes == threads
    assert [status for status, _, _ in threads] == [200, 404, 200]


def test_a_process_executor_starts_again_after_its_shutdown():
    """A second lifespan (a test client per test, a server started again): a new pool,
    not a stopped one whose requests wait 30 s for a 503."""
    from wsgipool.asgi import WSGIMiddleware

    executor = ProcessExecutor(workers=1, threads=1, queue_timeout=5)
    app = WSGIMiddleware(faultapp.app, executor=executor)

    async def one_request() -> int:
        sent: list[dict[str, Any]] = []
        incoming = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if incoming:
                return incoming.pop(0)
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/hello",
            "raw_path": b"/hello",
            "query_string": b"",
            "headers": [],
            "http_version": "1.1",
            "scheme": "http",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 5000),
        }
        await asyncio.wait_for(app(scope, receive, send), 30)
        return int(sent[0]["status"])

    before = {child.pid for child in psutil.Process().children(recursive=True)}

    async def cycle() -> tuple[int, set[int]]:
        await app.startup()
        try:
            status = await one_request()
            pids = {child.pid for child in psutil.Process().children(recursive=True)}
        finally:
            await app.shutdown()
        return status, pids - before  # this pool's template and workers

    try:
        first, first_pids = asyncio.run(cycle())
        second, second_pids = asyncio.run(cycle())
    finally:
        executor.kill()
    assert (first, second) == (200, 200)
    assert first_pids and second_pids and not first_pids & second_pids  # a new pool
