"""serve(): listen, run the aiohttp app with the WSGI handler, handle signals, stop cleanly.

Startup order matters to users: the app is imported (by the template process,
or here with ``workers=0``) before any socket is bound, so a broken app never
leaves a half-started server; the sockets are bound before the first request
can arrive.  Shutdown is the reverse, all within ``graceful_timeout``: stop
accepting, let requests in flight finish (cut at the end of the drain), stop
the workers (killed when the budget is spent), remove the unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import ssl
import stat
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiohttp import web

from wsgipool import systemd, tls, wire
from wsgipool.config import (
    BindAddress,
    Config,
    ConfigError,
    PoolConfig,
    cross_check,
    describe,
    split_options,
)
from wsgipool.cpus import available_cpus
from wsgipool.executor import ProcessExecutor
from wsgipool.fastpath import FastLane
from wsgipool.handler import WSGIHandler
from wsgipool.hooks import call_hook, load_hook
from wsgipool.limits import GuardedAppRunner, GuardedServer
from wsgipool.loader import load_app
from wsgipool.pidfile import check_pid_file, remove_pid_file, write_pid_file
from wsgipool.proctitle import set_title
from wsgipool.reloader import Reloader, check_available
from wsgipool.response import error_response
from wsgipool.static import hide_dotfiles
from wsgipool.supervisor.handle import WorkerState
from wsgipool.threaded import APP_THREAD_PREFIX

if TYPE_CHECKING:
    from wsgipool.metrics.service import Observability
from wsgipool.logs import setup as logsetup
from wsgipool.logs.access import AccessLogger

__all__ = ["Server", "serve"]

logger = logging.getLogger("wsgipool.server")

#: The soft open-files limit taken when the hard one is unlimited (Linux's default nr_open).
_OPEN_FILES_CAP = 1 << 20

LOG_FORMAT = logsetup.LOG_FORMAT

#: The signals the main process answers, and the method that does (docs/operations.md, Signals).
#: gunicorn's list less SIGCHLD, whose default is to be ignored.
SIGNALS: dict[signal.Signals, str] = {
    signal.SIGTERM: "_on_term",  # graceful stop, bounded by --graceful-timeout
    signal.SIGINT: "_on_int",  # the same (Ctrl-C)
    signal.SIGQUIT: "_on_quit",  # stop at once
    signal.SIGHUP: "_on_hup",  # rolling reload
    signal.SIGTTIN: "_on_ttin",  # one worker more
    signal.SIGTTOU: "_on_ttou",  # one worker less
    signal.SIGUSR1: "_on_usr1",  # reopen log files
    signal.SIGUSR2: "_on_usr2",  # ignored, logged: no binary upgrade
    signal.SIGWINCH: "_on_winch",  # ignored, logged: no binary upgrade
}


def serve(application: Callable[..., Any] | str, **kwargs: Any) -> None:
    """Serve a WSGI app until SIGTERM or SIGINT; takes aiohttp-wsgi's keywords and wsgipool's.

    `application` is a WSGI callable or "module:attr".  Keywords are those of
    `Config` (server), `PoolConfig` (workers), `WSGIHandler` (``stderr``) and
    ``ssl_context`` (an `ssl.SSLContext` for HTTPS, instead of ``certfile``).
    Only the keywords count: ``serve()`` reads no config file and no environment
    variable (``wsgipool.sources.resolve()`` does, for a program that wants them).
    """
    server_options, pool_options, rest = split_options(kwargs)
    stderr = rest.pop("stderr", None)
    ssl_context = rest.pop("ssl_context", None)
    if rest:
        raise TypeError(f"serve() got unexpected keyword arguments: {', '.join(sorted(rest))}")
    config = Config(**server_options)
    pool = PoolConfig(**pool_options)
    sources = {name: "serve()" for name in kwargs}
    Server(application, config, pool, stderr=stderr, ssl_context=ssl_context, sources=sources).run()


class Server:
    """One server: its sockets, its aiohttp runner, its executor and its signals."""

    def __init__(
        self,
        application: Callable[..., Any] | str,
        config: Config,
        pool: PoolConfig,
        *,
        stderr: Any = None,
        ssl_context: ssl.SSLContext | None = None,
        sources: dict[str, str] | None = None,
    ) -> None:
        self.application = application
        self.config = config
        self.pool = pool
        self.stderr = stderr
        if ssl_context is not None and config.certfile is not None:
            raise ConfigError("ssl_context: give either ssl_context or certfile, not both")
        # Certificates are read now: a bad path is a one-line error before anything starts.
        self.ssl_context = ssl_context or tls.server_context(config)
        # Certificates from --certfile are read again on SIGHUP (a context given by the
        # embedding program is its own to renew).
        self.certificates = (
            tls.Certificates(config, self.ssl_context)
            if ssl_context is None and self.ssl_context is not None
            else None
        )
        self.notifier = systemd.Notifier(None)
        self._ready_task: asyncio.Task[None] | None = None
        self.sources = sources or {}
        self.reloader: Reloader | None = None
        self._pid_file: str | None = None
        self._activated = False  # listening on sockets systemd passed (LISTEN_FDS)
        cross_check(config, pool)
        if config.reload:
            check_available()
        if config.chdir is not None:
            _enter_directory(config.chdir)
        _extend_path(config.pythonpath)
        if config.pid is not None:
            check_pid_file(config.pid)
        self.executor: ProcessExecutor | ThreadPoolExecutor | None = None
        self.runner: web.BaseRunner | None = None
        self.sockets: list[socket.socket] = []
        self._unix_paths: list[str] = []
        self._stop: asyncio.Future[str] | None = None
        # With --frontends N > 1 (wsgipool.arbiter): this process's title, the listeners the
        # arbiter bound, and the channel that tells the arbiter what systemd would be told.
        self.role = "main"
        self.listeners: list[tuple[BindAddress, socket.socket]] | None = None
        self.link: systemd.Notifier | None = None
        # --metrics-bind / --health-path (wsgipool.metrics), imported only when asked for.
        self.observability: Observability | None = None
        if config.metrics_bind is not None or config.health_path is not None:
            from wsgipool.metrics.service import Observability

            self.observability = Observability(self)
        self.log_setup = _log_setup(config)  # reads --log-config: a bad file fails here
        if pool.workers == 0 and isinstance(application, str) and config.frontends == 1:
            # Import before any event loop runs, as other WSGI servers do: an app that
            # touches Django's ORM at import must not find itself inside a loop.
            self.application = load_app(application)

    def run(self) -> None:
        """Run until stopped; the exit status is the caller's (0 after a clean stop)."""
        if self.config.frontends > 1 and self.listeners is None:
            from wsgipool.arbiter import Arbiter

            Arbiter(self).run()  # binds, then runs this server in each frontend process
            return
        set_title(self.role, self.application if isinstance(self.application, str) else "")
        _configure_logging(self.log_setup)
        _raise_open_files_limit()
        runner = _event_loop_runner()
        try:
            runner(self.serve())
        except KeyboardInterrupt:
            pass

    async def serve(self) -> None:
        await self.start()
        try:
            assert self._stop is not None
            how = await self._stop
        finally:
            await self.stop(graceful=True)
        if how == "quit":
            logger.info("stopped at once (SIGQUIT)")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        logsetup.flush_access_per_iteration(loop)  # not a write(2) per access line
        # Taken (and removed from the environment) before the app's processes start.
        self.notifier = self.link or systemd.Notifier.from_environ()
        activated = systemd.listen_fds()
        self._activated = bool(activated)
        if self.config.umask is not None:
            os.umask(self.config.umask)  # before the template starts: the workers inherit it
        pool = self.pool
        on_starting = load_hook(pool.on_starting, "on_starting") if pool.on_starting else None
        when_ready = load_hook(pool.when_ready, "when_ready") if pool.when_ready else None
        call_hook(on_starting, "on_starting", self)
        observability = self.observability
        if observability is not None:
            observability.bind()  # a metrics address in use fails before the app is imported
        handler = self._make_handler()
        if observability is not None:
            observability.attach(self.executor)
        try:
            if isinstance(self.executor, ProcessExecutor):
                await self.executor.start()  # imports the app: fails before any socket exists
            self.runner = self._make_runner(handler)
            await self.runner.setup()
            for address, sock in self.bound_listeners(activated):
                self.sockets.append(sock)
                # aiohttp listens on the socket again: with --backlog, not its own 128.
                site = web.SockSite(
                    self.runner, sock, ssl_context=self.ssl_context, backlog=self.config.backlog
                )
                await site.start()
                logger.info(
                    "listening on %s", _describe(address, sock, self.ssl_context is not None)
                )
            if observability is not None:
                await observability.start()
        except BaseException:
            await self.stop(graceful=False)
            raise
        if self.config.pid is not None:
            try:
                write_pid_file(self.config.pid)
            except BaseException:
                await self.stop(graceful=False)
                raise
            self._pid_file = self.config.pid
        self._install_signals(loop)
        preload = "preloaded" if self.pool.preload else "each imports the app"
        if self.config.reload and isinstance(self.executor, ProcessExecutor):
            self.reloader = Reloader(os.getcwd(), self.executor.reload)
            self.reloader.start()
        mode = (
            f"{self.pool.workers} worker process(es) x {self.pool.threads} threads ({preload})"
            if isinstance(self.executor, ProcessExecutor)
            else f"{self.pool.threads} threads in the main process"
        )
        logger.info("wsgipool %s serving with %s (%s)", _version(), mode, self._origins())
        part = self.config.shutdown_timeout
        if part is not None and part > self.pool.graceful_timeout:
            logger.warning(
                "--shutdown-timeout %gs is longer than --graceful-timeout %gs, which bounds "
                "the whole stop: requests in flight get at most %gs after SIGTERM",
                part,
                self.pool.graceful_timeout,
                self._drain_time(),
            )
        call_hook(when_ready, "when_ready", self)
        if self.notifier.enabled:
            self._ready_task = loop.create_task(self._ready_when_serving(f"serving with {mode}"))
            self.notifier.start_watchdog()

    async def _ready_when_serving(self, status: str) -> None:
        """systemd's READY=1 once the sockets listen and a worker answers.

        executor.start() has normally waited for the workers already; if they
        were slower than its limit, READY waits for the first one.
        """
        executor = self.executor
        if isinstance(executor, ProcessExecutor):
            while not any(w.state is WorkerState.READY for w in executor.workers):
                await asyncio.sleep(0.05)
        self.notifier.ready(status)

    def bound_listeners(self, activated: list[int]) -> Iterator[tuple[BindAddress, socket.socket]]:
        """Each listening socket with its address: bound here, or by the arbiter before the fork."""
        if self.listeners is not None:
            yield from self.listeners
            return
        for address in self._addresses(activated):
            for sock in self._bind_all(address):
                yield address, sock

    def _addresses(self, activated: list[int]) -> tuple[BindAddress, ...]:
        """systemd's sockets when it passed any (they replace --bind), else the configured ones."""
        if not activated:
            return self.config.binds()
        logger.info(
            "systemd socket activation: %s (instead of the configured addresses)",
            ", ".join(f"fd://{fd}" for fd in activated),
        )
        return tuple(BindAddress("fd", fd=fd) for fd in activated)

    def _drain_time(self) -> float:
        """How long requests in flight may run after SIGTERM before they are cut."""
        budget = self.pool.graceful_timeout
        part = self.config.shutdown_timeout
        return budget if part is None else min(part, budget)

    def _cut_in_flight(self) -> None:
        """The drain is over: log the requests still in flight and close their connections.

        aiohttp would wait as long again for them after cancelling their requests'
        bodies; closing the connection cancels the handler (handler_cancellation),
        which tells the worker to stop producing.
        """
        connections = self._connections()
        if not connections:
            return
        if isinstance(self.executor, ProcessExecutor):
            count = sum(len(worker.inflight) for worker in self.executor.workers)
            what = f"{count} request(s) in flight"
        else:
            what = f"{len(connections)} connection(s) with a request in flight"
        logger.warning(
            "graceful timeout: %s after %.1fs; closing their connections", what, self._drain_time()
        )
        for connection in connections:
            connection.force_close()

    def _origins(self) -> str:
        """Where the listening address and the worker count came from, for the startup line."""

        def source(name: str) -> str:
            return self.sources.get(name, "default")

        if self._activated:
            where = "sockets from systemd (LISTEN_FDS)"
        elif self.config.bind:
            where = f"bind from {source('bind')}"
        elif self.config.unix_socket is not None:
            where = f"unix_socket from {source('unix_socket')}"
        else:
            where = f"host from {source('host')}, port from {source('port')}"
        workers = self.sources.get("workers") or f"default: {available_cpus().reason}"
        return f"{where}; workers from {workers}"

    def _make_handler(self) -> WSGIHandler:
        config = self.config
        if self.pool.workers > 0:
            options = {f.name: getattr(self.pool, f.name) for f in _pool_fields()}
            self.executor = ProcessExecutor(
                log_level=config.log_level, log_setup=self.log_setup, **options
            )
            application: Callable[..., Any] | str = self.application
        else:
            self.executor = ThreadPoolExecutor(
                self.pool.threads, thread_name_prefix=APP_THREAD_PREFIX
            )
            application = self.application  # imported in __init__, before any loop
        handler = WSGIHandler(
            application,
            url_scheme=config.url_scheme,
            stderr=self.stderr,
            inbuf_overflow=config.inbuf_overflow,
            max_request_body_size=config.max_request_body_size,
            executor=self.executor,
            forwarded_allow_ips=config.forwarded_allow_ips,
            script_name="" if config.static else config.script_name,
            watch_disconnects=False,  # aiohttp cancels the handler: handler_cancellation=True
            send_timeout=config.send_timeout,
            body_timeout=config.body_timeout,
        )
        if self.pool.workers == 0:  # the same waiting queue as the worker pool's
            handler.limit_queue(self.pool.threads, self.pool.queue_size, self.pool.queue_timeout)
        return handler

    def _make_runner(self, handler: WSGIHandler) -> web.BaseRunner:
        """aiohttp's low-level server when the app is all there is, else an Application."""
        config = self.config
        protocol_options: dict[str, Any] = {
            "access_log": (
                logging.getLogger(logsetup.ACCESS_LOGGER) if self.log_setup.access_enabled else None
            ),
            "access_log_class": AccessLogger,
            "access_log_format": config.access_log_format,
            "keepalive_timeout": config.keepalive_timeout,
            "max_line_size": config.limit_request_line,
            "max_field_size": config.limit_request_field_size,
            "max_headers": config.limit_request_fields,
        }
        if config.static:
            return GuardedAppRunner(
                self._make_app(handler),
                header_timeout=config.header_timeout,
                handle_signals=False,
                shutdown_timeout=self._drain_time() + 1.0,  # a backstop: see _cut_in_flight
                handler_cancellation=True,
                **protocol_options,
            )
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
        request_handler = handler.handle_request
        if self.observability is not None:
            request_handler = self.observability.wrap(request_handler)
        # The fast lane (fastpath.py) counts its requests in the metrics and writes
        # their access lines itself, and leaves --health-path to the wrapper.
        observability = self.observability
        stats = observability.stats if observability is not None else None
        lane = FastLane.of(handler, stats, config.health_path)
        server = GuardedServer(
            request_handler,
            header_timeout=config.header_timeout,
            lane=lane,
            handler_cancellation=True,
            **protocol_options,
        )
        return web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self._drain_time() + 1.0
        )

    def _make_app(self, handler: WSGIHandler) -> web.Application:
        config = self.config
        prefixes = tuple(url for url, _ in config.static)
        middlewares = [wire.middleware]  # wsgipool's own answers, on every route
        if not config.static_dotfiles:
            middlewares.append(hide_dotfiles(prefixes))
        if config.static_cors and config.static:
            middlewares.append(
                _static_cors(tuple(url for url, _ in config.static), config.static_cors)
            )
        app = web.Application(middlewares=middlewares, client_max_size=config.max_request_body_size)
        for url, directory in config.static:
            app.router.add_static(url, directory)
        expect = _expect_handler(config.max_request_body_size)
        if config.script_name:
            # The app owns PREFIX and PREFIX/..., never PREFIX-something-else.
            path = f"{config.script_name}{{path_info:(/.*)?}}"
        else:
            path = "/{path_info:.*}"
        if self.observability is not None:
            self.observability.add_health_routes(app)
            app.router.add_route("*", path, self.observability.wrap(handler), expect_handler=expect)
            return app
        app.router.add_route("*", path, handler, expect_handler=expect)
        return app

    # -- sockets -------------------------------------------------------------------

    def _bind_all(self, address: BindAddress) -> list[socket.socket]:
        socks = [self._bind(address)]
        if address.kind == "tcp" and address.host is None and socket.has_ipv6:
            port = socks[0].getsockname()[1]
            try:
                six = socket.create_server(
                    ("::", port), family=socket.AF_INET6, backlog=self.config.backlog
                )
            except OSError as exc:  # no IPv6 on this machine: IPv4 alone will do
                logger.debug("not listening on [::]:%d: %s", port, exc)
            else:
                six.setblocking(False)
                socks.append(six)
        return socks

    def _bind(self, address: BindAddress) -> socket.socket:
        backlog = self.config.backlog
        if address.kind == "fd":
            try:
                sock = socket.socket(fileno=address.fd)
            except OSError as exc:
                raise ConfigError(
                    f"bind (--bind): fd://{address.fd} is not a socket: {exc}"
                ) from None
            sock.setblocking(False)
            return sock
        if address.kind == "unix":
            return self._bind_unix(address.path, backlog)
        host = address.host
        if host is None:
            # All interfaces, as aiohttp-wsgi does: IPv4 here, IPv6 beside it in `_bind_all`.
            family, sockaddr = socket.AF_INET, ("0.0.0.0", address.port)
        else:
            try:
                info = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM)[0]
            except socket.gaierror as exc:
                raise ConfigError(
                    f"{self._address_option()}: cannot resolve {host!r}: {exc.strerror}"
                ) from None
            family, sockaddr = info[0], (str(info[4][0]), int(info[4][1]))
        try:
            sock = socket.create_server(sockaddr, family=family, backlog=backlog)
        except OSError as exc:
            where = host or "0.0.0.0"
            raise ConfigError(
                f"{self._address_option()}: cannot listen on {where}:{address.port}: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        return sock

    def _address_option(self) -> str:
        """The option an address to listen on came from, as messages name it."""
        config = self.config
        if config.bind:
            return describe("bind")
        return describe("unix_socket" if config.unix_socket is not None else "port")

    def _bind_unix(self, path: str, backlog: int) -> socket.socket:
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        perms = self.config.unix_socket_perms
        try:
            with _umask(0o777 & ~perms):  # the socket is born with its permissions
                sock.bind(path)
            os.chmod(path, perms)  # umask cannot grant bits such as setgid; chmod settles it
            if self.config.unix_socket_group is not None:
                os.chown(path, -1, _group_id(self.config.unix_socket_group))
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"{self._address_option()}: cannot listen on {path}: {exc.strerror}"
            ) from None
        self._unix_paths.append(path)
        sock.setblocking(False)
        return sock

    # -- signals and stopping ---------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig, name in SIGNALS.items():
            loop.add_signal_handler(sig, getattr(self, name))

    # Each runs on the loop (add_signal_handler) and returns at once: slow work goes in a task.

    # The handlers stay for the whole stop: a second SIGTERM (an arbiter forwarding
    # what systemd's control-group kill also sent, an impatient operator) must not
    # end the process by the default action in the middle of its drain.

    def _on_term(self) -> None:
        self._stop_or_note("SIGTERM")

    def _on_int(self) -> None:
        self._stop_or_note("SIGINT")

    def _on_quit(self) -> None:
        if self.stopping:
            self._stop_at_once()
        else:
            self.request_stop("quit")

    def _on_hup(self) -> None:
        if self.stopping:
            logger.info("SIGHUP ignored: the server is stopping")
        else:
            self._reload()

    def _on_ttin(self) -> None:
        self._scale(+1)

    def _on_ttou(self) -> None:
        self._scale(-1)

    def _stop_or_note(self, name: str) -> None:
        if self.stopping:
            logger.info("%s: already stopping gracefully (SIGQUIT stops at once)", name)
        else:
            self.request_stop("graceful")

    def _stop_at_once(self) -> None:
        """SIGQUIT during a graceful stop: kill the workers and close the connections now."""
        logger.info("SIGQUIT during the graceful stop: stopping at once")
        if isinstance(self.executor, ProcessExecutor):
            self.executor.kill()
        for connection in self._connections():
            connection.force_close()

    def _connections(self) -> list[Any]:
        """The open client connections (aiohttp's request handlers), for a stop to close."""
        server = self.runner.server if self.runner is not None else None
        return list(server.connections) if server is not None else []

    def _on_usr1(self) -> None:
        self._reopen_logs()

    def _on_usr2(self) -> None:
        logger.info("SIGUSR2 ignored: wsgipool has no binary upgrade; SIGHUP reloads the app")

    def _on_winch(self) -> None:
        logger.info("SIGWINCH ignored: wsgipool has no binary upgrade to hand workers over to")

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for (readiness is false from then on)."""
        return self._stop is not None and self._stop.done()

    def request_stop(self, how: str = "graceful") -> None:
        if self._stop is not None and not self._stop.done():
            logger.info("stopping (%s)", "at once" if how == "quit" else "gracefully")
            self.notifier.stopping()
            if how == "quit" and isinstance(self.executor, ProcessExecutor):
                self.executor.kill()
            self._stop.set_result(how)

    def _reload(self) -> None:
        if self.certificates is not None:
            problem = self.certificates.reload()
            if problem is None:
                logger.info("SIGHUP: TLS certificate reloaded from %s", self.config.certfile)
            else:
                logger.error("SIGHUP: %s; the previous certificate stays in use", problem)
        if isinstance(self.executor, ProcessExecutor):
            logger.info("SIGHUP: reloading the app")
            self.notifier.reloading()
            task = asyncio.get_running_loop().create_task(self.executor.reload())
            task.add_done_callback(self._reloaded)
        else:
            logger.warning(
                "SIGHUP: the app is not reloaded: that needs worker processes (--workers 1 or more)"
            )

    def _reloaded(self, task: asyncio.Task[bool]) -> None:
        """The new app is imported (or failed to, and the old workers serve on): ready again."""
        if not task.cancelled():
            task.exception()
        if self._stop is not None and not self._stop.done():
            self.notifier.ready("serving")

    def _reopen_logs(self) -> None:
        """SIGUSR1: reopen the log files here, then in the template and the workers."""
        problems = logsetup.reopen(self.log_setup)
        for problem in problems:
            logger.error("SIGUSR1: %s; logging goes on to the old file", problem)
        if isinstance(self.executor, ProcessExecutor):
            self.executor.signal_processes(signal.SIGUSR1)
        logger.info("SIGUSR1: log files reopened")

    def _scale(self, delta: int) -> None:
        if self.stopping:
            logger.info("SIGTTIN/SIGTTOU ignored: the server is stopping")
        elif isinstance(self.executor, ProcessExecutor):
            self.executor.scale(delta)
        else:
            logger.warning("SIGTTIN/SIGTTOU ignored: scaling needs worker processes")

    async def stop(self, graceful: bool = True) -> None:
        """Stop within --graceful-timeout in all: drain, then stop the workers, then kill.

        Requests in flight get the drain (all of the budget, or --shutdown-timeout
        if that is shorter) and are cut when it ends; the workers get what is left
        of the budget (nothing, if the drain used it all) and are killed a second
        after that.
        """
        loop = asyncio.get_running_loop()
        if self.reloader is not None:
            await self.reloader.stop()
            self.reloader = None
        if self._stop is None or not self._stop.done():
            self.notifier.stopping()  # request_stop() has not said it yet
        self.notifier.stop_watchdog()
        if self._ready_task is not None:
            self._ready_task.cancel()
        budget = self.pool.graceful_timeout if graceful else 0.0
        deadline = loop.time() + budget
        if self.runner is not None:
            # Stops accepting, then waits for requests in flight; those left at the end
            # of the drain are cut by `_cut_in_flight`.
            cut = loop.call_later(self._drain_time(), self._cut_in_flight)
            try:
                await self.runner.cleanup()
            finally:
                cut.cancel()
            self.runner = None
        logsetup.flush_access_per_iteration(None)  # the last access lines are written
        executor = self.executor
        if isinstance(executor, ProcessExecutor):
            await executor.shutdown(max(0.0, deadline - loop.time()))
        elif isinstance(executor, ThreadPoolExecutor):
            executor.shutdown(wait=False, cancel_futures=True)
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths.clear()
        if self._pid_file is not None:
            remove_pid_file(self._pid_file)
            self._pid_file = None
        if self.observability is not None:
            await self.observability.stop()  # last: /readyz says 503 until the very end


def _pool_fields() -> tuple[Any, ...]:
    import dataclasses

    return dataclasses.fields(PoolConfig)


def _enter_directory(directory: str) -> None:
    """--chdir: work in `directory`, and import the app from it first, as gunicorn does."""
    try:
        os.chdir(directory)
    except OSError as exc:
        raise ConfigError(
            f"{describe('chdir')}: cannot change to {directory!r}: {exc.strerror}"
        ) from None
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


def _extend_path(directories: tuple[str, ...]) -> None:
    """--pythonpath: each directory first on sys.path, in the order given (the workers
    get this process's sys.path); one that is not a directory is a ConfigError."""
    for directory in reversed(directories):
        absolute = os.path.abspath(directory)
        if not os.path.isdir(absolute):
            raise ConfigError(f"{describe('pythonpath')}: {directory!r} is not a directory")
        if absolute not in sys.path:
            sys.path.insert(0, absolute)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a dead server is removed; a live server's is an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"unix_socket (--unix-socket): {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(f"unix_socket (--unix-socket): another server is listening on {path}")


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _group_id(group: str) -> int:
    import grp

    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid


def _describe(address: BindAddress, sock: socket.socket, tls: bool = False) -> str:
    suffix = " (TLS)" if tls else ""
    if address.kind == "unix":
        return f"unix:{address.path}{suffix}"
    name = sock.getsockname()
    scheme = "https" if tls else "http"
    if isinstance(name, tuple):
        host = name[0]
        return f"{scheme}://[{host}]:{name[1]}" if ":" in host else f"{scheme}://{host}:{name[1]}"
    return f"fd://{address.fd}{suffix}"


def _expect_handler(limit: int) -> Callable[[web.Request], Any]:
    """Answer ``Expect: 100-continue`` with 413 at once when the body would be too large."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version != (1, 1):
            return None
        expectation = request.headers.get("Expect", "").lower()
        if expectation != "100-continue":
            return error_response(417, close=True)
        if request.content_length is not None and request.content_length > limit:
            return error_response(413, close=True)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
        return None

    return expect


def _static_cors(prefixes: tuple[str, ...], origin: str) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if any(request.path == p or request.path.startswith(p.rstrip("/") + "/") for p in prefixes):
            response.headers["Access-Control-Allow-Origin"] = origin
        return response

    return middleware


def _raise_open_files_limit() -> None:
    """Every connection holds a descriptor: serve up to the hard limit, not the soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else _OPEN_FILES_CAP
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # above the kernel's nr_open, say
            logger.debug("open files limit stays at %d: %s", soft, exc)
            return
        logger.debug("open files limit raised from %d to %d", soft, wanted)


def _log_setup(config: Config) -> logsetup.LogSetup:
    """What the logging options say, the --log-config file read; a bad file is a ConfigError."""
    try:
        dict_config = (
            logsetup.load_dict_config(config.log_config) if config.log_config is not None else None
        )
    except logsetup.LogConfigError as exc:
        raise ConfigError(str(exc)) from None
    return logsetup.LogSetup(
        level=config.log_level,
        format=config.log_format,
        error_logfile=config.error_logfile,
        access_log=config.access_log,
        access_logfile=config.access_logfile,
        access_format=config.access_log_format,
        dict_config=dict_config,
    )


def _configure_logging(setup: logsetup.LogSetup) -> None:
    """Logging as the options say, before anything else runs (files opened, dictConfig applied)."""
    try:
        logsetup.configure(setup, main=True)
    except logsetup.LogConfigError as exc:
        raise ConfigError(str(exc)) from None


def _event_loop_runner() -> Callable[[Any], Any]:
    """uvloop when it is installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    runner: Callable[[Any], Any] = uvloop.run  # typed whether or not uvloop is installed
    return runner


def _version() -> str:
    from wsgipool import __version__

    return __version__
