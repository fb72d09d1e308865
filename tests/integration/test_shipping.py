"""Apps that cannot be imported by name reach the workers with dill, once, at start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import APPS, ROOT, free_port, server_env
from wsgipool import ProcessExecutor, WSGIHandler


def _closure_app(greeting: bytes):
    def app(environ, start_response):
        body = greeting + str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app


async def _serve_and_get(handler: WSGIHandler, executor: ProcessExecutor) -> bytes:
    app = web.Application()
    app.cleanup_ctx.append(executor.lifespan)
    app.router.add_route("*", "/{path_info:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as response,
        ):
            assert response.status == 200
            return await response.read()
    finally:
        await runner.cleanup()


def test_a_closure_is_shipped_with_dill_and_runs_in_a_worker():
    executor = ProcessExecutor(workers=1, threads=1)
    handler = WSGIHandler(_closure_app(b"closure in "), executor=executor)
    body = asyncio.run(_serve_and_get(handler, executor))
    assert body.startswith(b"closure in ")
    assert int(body.split()[-1]) != os.getpid()  # it ran in a worker process


def test_an_app_that_cannot_reach_the_workers_is_refused_at_once():
    class Holding:
        def __init__(self) -> None:
            self.source = (n for n in range(3))  # a generator: dill cannot pickle it

        def __call__(self, environ, start_response):
            start_response("200 OK", [])
            return [b""]

    with pytest.raises(TypeError, match=r"cannot send .* to the worker processes"):
        WSGIHandler(Holding(), executor=ProcessExecutor(workers=1))


def test_an_app_in_a_script_main_module_is_served():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "mainscript.py"), str(port)],
        env=server_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline and not body:
            try:
                import http.client

                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                body = conn.getresponse().read()
                conn.close()
            except OSError:
                time.sleep(0.1)
        assert body.startswith(b"shipped from __main__ by "), body
        assert int(body.split()[-1]) != proc.pid
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
