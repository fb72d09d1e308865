"""The metrics listener (``--metrics-bind``) and the health paths (``--health-path``).

Both are answered by the main process's event loop, never by a worker, so they
answer while every worker is busy, dead or in a crash backoff.  The listener is
a separate aiohttp runner on its own socket: a scrape never waits behind client
connections, and the app's URL space is untouched.  It is bound before the app
is imported (a port in use fails fast, exit 2) and closed last, after the
workers have stopped, so /readyz says 503 for the whole shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from wsgipool.config import ConfigError, describe, parse_bind
from wsgipool.executor import ProcessExecutor
from wsgipool.metrics import page, smaps
from wsgipool.metrics.history import SAMPLE_INTERVAL, History, Slots
from wsgipool.metrics.requests import Handler, RequestStats
from wsgipool.metrics.smaps import Memory
from wsgipool.metrics.snapshot import ServerView, Snapshot, take_snapshot
from wsgipool.supervisor.handle import WorkerState

__all__ = ["Observability", "create"]

logger = logging.getLogger("wsgipool.metrics")

_LAG_INTERVAL = 0.5
_NO_CACHE = {"Cache-Control": "no-store"}


def create(server: ServerView) -> Observability | None:
    """The server's observability, or None when neither option asks for any."""
    config = server.config
    if config.metrics_bind is None and config.health_path is None:
        return None
    return Observability(server)


class Observability:
    def __init__(self, server: ServerView) -> None:
        self.server = server
        config = server.config
        self.stats = RequestStats() if config.metrics_bind is not None else None
        self.history = History()
        self.slots = Slots()
        self.loop_lag = 0.0
        self.started_at = time.time()
        self._sock: socket.socket | None = None
        self._unix_path: str | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle (called by Server) -------------------------------------------------

    def bind(self) -> None:
        """Bind the metrics socket now: a bad address is a ConfigError before the app loads."""
        text = self.server.config.metrics_bind
        if text is None:
            return
        sock, self._unix_path = bind_listener(text, self.server.config.unix_socket_perms)
        sock.setblocking(False)
        self._sock = sock

    def attach(self, executor: object) -> None:
        """Hear of each dispatched request's queue wait from a process pool, and have its
        workers measure each request's RSS change."""
        if self.stats is not None and isinstance(executor, ProcessExecutor):
            executor.wait_observer = self.stats.queue_wait.observe
            executor.request_rss = True  # the leak finder: RSS growth by request path

    def wrap(self, handler: Handler) -> Handler:
        """The main listener's handler: health paths first, then the app, counted."""
        inner = self.stats.wrap(handler) if self.stats is not None else handler
        health = self.server.config.health_path
        if health is None:
            return inner
        ready_path = health + "/ready"

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            path = request.path
            if path in (health, ready_path):
                return self.health_response(path == ready_path)
            return await inner(request)

        return handle

    def add_health_routes(self, app: web.Application) -> None:
        """The health paths as routes of an Application (the --static mode's main app)."""
        health = self.server.config.health_path
        if health is None:
            return

        async def alive(_request: web.Request) -> web.StreamResponse:
            return self.health_response(False)

        async def ready(_request: web.Request) -> web.StreamResponse:
            return self.health_response(True)

        app.router.add_route("GET", health, alive)
        app.router.add_route("GET", health + "/ready", ready)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch_lag()))
        if self._sock is None:
            return
        self._tasks.append(loop.create_task(self._sample()))
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, shutdown_timeout=1.0).start()
        logger.info("metrics on %s", _describe(self._sock))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
            self._unix_path = None

    # -- facts ---------------------------------------------------------------------------

    def ready(self) -> bool:
        """At least one worker ready for requests, and not shutting down (cheap: no /proc)."""
        server = self.server
        if server.stopping:
            return False
        executor = server.executor
        if isinstance(executor, ProcessExecutor):
            supervisor = executor.supervisor
            return supervisor is not None and any(
                w.state is WorkerState.READY for w in supervisor.workers
            )
        return executor is not None

    def snapshot(self, memory: Mapping[int, Memory] | None = None) -> Snapshot:
        return take_snapshot(
            self.server,
            self.stats,
            self.history,
            self.slots,
            started_at=self.started_at,
            loop_lag=self.loop_lag,
            memory=memory,
        )

    async def full_snapshot(self) -> Snapshot:
        """A snapshot with the workers' USS and PSS, read in a thread (smaps.py says why)."""
        executor = self.server.executor
        pids: list[int] = []
        if isinstance(executor, ProcessExecutor) and executor.supervisor is not None:
            pids = [w.pid for w in executor.supervisor.workers if w.alive]
        memory = await asyncio.get_running_loop().run_in_executor(None, smaps.read_all, pids)
        return self.snapshot(memory)

    def health_response(self, readiness: bool) -> web.Response:
        if not readiness:
            return web.Response(text="ok\n", headers=_NO_CACHE)
        if self.ready():
            return web.Response(text="ready\n", headers=_NO_CACHE)
        reason = "shutting down" if self.server.stopping else "no worker ready"
        return web.Response(status=503, text=f"not ready: {reason}\n", headers=_NO_CACHE)

    # -- the listener's routes ----------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.StreamResponse:
        return self.health_response(False)

    async def _readyz(self, _request: web.Request) -> web.StreamResponse:
        return self.health_response(True)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        from wsgipool.metrics.exposition import render

        body, content_type = render(await self.full_snapshot(), request.headers.get("Accept"))
        response = web.Response(body=body, headers=_NO_CACHE)
        response.headers["Content-Type"] = content_type
        return response

    async def _stats(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=json.dumps((await self.full_snapshot()).as_json()),
            content_type="application/json",
            headers=_NO_CACHE,
        )

    async def _page(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=page.render((await self.full_snapshot()).as_json()),
            content_type="text/html",
            headers=_NO_CACHE,
        )

    # -- background ---------------------------------------------------------------------

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(_LAG_INTERVAL)
            self.loop_lag = max(0.0, loop.time() - before - _LAG_INTERVAL)

    async def _sample(self) -> None:
        """Copy the supervisor's latest RSS samples into the history ring."""
        while True:
            executor = self.server.executor
            rss: dict[int, int] = {}
            if isinstance(executor, ProcessExecutor) and executor.supervisor is not None:
                rss = {w.pid: w.rss for w in executor.supervisor.workers if w.alive}
            total = self.stats.total if self.stats is not None else 0
            self.history.record(rss, total)
            await asyncio.sleep(SAMPLE_INTERVAL)


def bind_listener(text: str, perms: int) -> tuple[socket.socket, str | None]:
    """The metrics socket for ``--metrics-bind`` (and its unix path); ConfigError if not.

    Also the arbiter's, for the address it serves for every frontend (merged.py).
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{describe('metrics_bind')}: needs prometheus_client; "
            "install it with: pip install 'wsgipool[metrics]'"
        ) from None
    address = parse_bind(text)
    if address.kind == "unix":
        return _bind_unix(address.path, perms), address.path
    host = address.host or "0.0.0.0"
    try:
        info = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM)[0]
        sock = socket.create_server((str(info[4][0]), int(info[4][1])), family=info[0])
    except socket.gaierror as exc:
        raise ConfigError(
            f"{describe('metrics_bind')}: cannot resolve {host!r}: {exc.strerror}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{describe('metrics_bind')}: cannot listen on {text}: {exc.strerror}"
        ) from None
    return sock, None


def _bind_unix(path: str, perms: int) -> socket.socket:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"{describe('metrics_bind')}: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # left by a dead server
        else:
            raise ConfigError(f"{describe('metrics_bind')}: another server is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, perms)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"{describe('metrics_bind')}: cannot listen on unix:{path}: {exc.strerror}"
        ) from None
    sock.setblocking(False)
    return sock


def _describe(sock: socket.socket) -> str:
    name: Any = sock.getsockname()
    if isinstance(name, tuple):
        host = name[0]
        return f"http://[{host}]:{name[1]}/" if ":" in host else f"http://{host}:{name[1]}/"
    return f"unix:{name}"
