"""The send and body deadlines of `WSGIHandler` in a program's own aiohttp app (on a router).

The server here is aiohttp's AppRunner, not `serve()`: no head sweep, no
handler cancellation. The handler's own deadlines still cut a reader that
takes nothing (the app's iterable is closed, its thread freed) and answer a
stalled body with 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.apps import deadlineapp
from tests.e2e.slowclients import closed_marks, is_cut, slow_reader, stall_upload
from wsgipool import ProcessExecutor, WSGIHandler


async def _until(predicate: Callable[[], Any], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


async def _scenario(handler: WSGIHandler, executor: ProcessExecutor | None, tmp: Path) -> None:
    app = web.Application()
    app.router.add_route("*", "/{path_info:.*}", handler)
    if executor is not None:
        app.cleanup_ctx.append(executor.lifespan)
    runner = web.AppRunner(app)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        mark = tmp / "closed"
        reader = await loop.run_in_executor(None, slow_reader, port, f"/stream?close={mark}")
        try:
            assert await _until(lambda: closed_marks(mark) > 0, 20), "close() not called"
            assert await _until(lambda: is_cut(reader), 20), "the reader was not cut"
        finally:
            reader.close()
        # The only app thread is free again.
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://127.0.0.1:{port}/ok") as response,
        ):
            assert response.status == 200
        upload = await loop.run_in_executor(None, stall_upload, port, True)
        try:
            answer = await asyncio.wait_for(loop.run_in_executor(None, _read_all, upload), 20)
        finally:
            upload.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        # Every response, the whole ones aiohttp writes after the handler returned
        # included, is released by the send deadline once written.
        assert await _until(lambda: len(handler._sends or ()) == 0, 10)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_embedded_handler_enforces_send_and_body_deadlines(tmp_path, kind):
    executor = ProcessExecutor(workers=1, threads=1) if kind == "processes" else None
    handler = WSGIHandler(
        deadlineapp.app, executor=executor, send_timeout=1, body_timeout=1, watch_disconnects=True
    )
    asyncio.run(_scenario(handler, executor, tmp_path))


def test_handler_deadlines_are_checked():
    with pytest.raises(ValueError, match="send_timeout"):
        WSGIHandler(deadlineapp.app, send_timeout=0)
    with pytest.raises(ValueError, match="body_timeout"):
        WSGIHandler(deadlineapp.app, body_timeout=-1)
    WSGIHandler(deadlineapp.app, send_timeout=None, body_timeout="30s")
