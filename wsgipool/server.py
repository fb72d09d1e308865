"""serve(): listen, run the aiohttp app with the WSGI handler, handle signals, stop cleanly.

Startup order matters to users: the app is imported (by the template process,
or here with ``workers=0``) before any socket is bound, so a broken app never
leaves a half-started server; the sockets are bound before the first request
can arrive.  Shutdown is the reverse: stop accepting, let requests in flight
finish (``shutdown_timeout``), stop the workers, remove the unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from wsgipool.config import BindAddress, Config, ConfigError, PoolConfig, split_options
from wsgipool.executor import ProcessExecutor
from wsgipool.handler import WSGIHandler
from wsgipool.limits import GuardedAppRunner, GuardedServer
from wsgipool.loader import load_app
from wsgipool.logs import setup as logsetup
from wsgipool.logs.access import AccessLogger

__all__ = ["Server", "serve"]

logger = logging.getLogger("wsgipool.server")

#: The soft open-files limit taken when the hard one is unlimited (Linux's default nr_open).
_OPEN_FILES_CAP = 1 << 20

LOG_FORMAT = logsetup.LOG_FORMAT


def serve(application: Callable[..., Any] | str, **kwargs: Any) -> None:
    """Serve a WSGI app until SIGTERM or SIGINT; takes aiohttp-wsgi's keywords and wsgipool's.

    `application` is a WSGI callable or "module:attr".  Keywords are those of
    `Config` (server), `PoolConfig` (workers) and `WSGIHandler` (``stderr``).
    """
    server_options, pool_options, rest = split_options(kwargs)
    stderr = rest.pop("stderr", None)
    if rest:
        raise TypeError(f"serve() got unexpected keyword arguments: {', '.join(sorted(rest))}")
    config = Config(**server_options)
    pool = PoolConfig(**pool_options)
    Server(application, config, pool, stderr=stderr).run()


class Server:
    """One server: its sockets, its aiohttp runner, its executor and its signals."""

    def __init__(
        self,
        application: Callable[..., Any] | str,
        config: Config,
        pool: PoolConfig,
        *,
        stderr: Any = None,
    ) -> None:
        self.application = application
        self.config = config
        self.pool = pool
        self.stderr = stderr
        self.executor: ProcessExecutor | ThreadPoolExecutor | None = None
        self.runner: web.BaseRunner | None = None
        self.sockets: list[socket.socket] = []
        self._unix_paths: list[str] = []
        self._stop: asyncio.Future[str] | None = None
        self.log_setup = _log_setup(config)  # reads --log-config: a bad file fails here
        if pool.workers == 0 and isinstance(application, str):
            # Import before any event loop runs, as other WSGI servers do: an app that
            # touches Django's ORM at import must not find itself inside a loop.
            self.application = load_app(application)
        if pool.workers == 0:
            extra = pool.process_only_options()
            if extra:
                raise ConfigError(
                    f"{', '.join('--' + n.replace('_', '-') for n in extra)} need worker "
                    "processes; use --workers 1 or more"
                )

    def run(self) -> None:
        """Run until stopped; the exit status is the caller's (0 after a clean stop)."""
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
        handler = self._make_handler()
        if isinstance(self.executor, ProcessExecutor):
            await self.executor.start()  # imports the app: fails before any socket exists
        self.runner = self._make_runner(handler)
        await self.runner.setup()
        try:
            for address in self.config.binds():
                for sock in self._bind_all(address):
                    self.sockets.append(sock)
                    site = web.SockSite(self.runner, sock)
                    await site.start()
                    logger.info("listening on %s", _describe(address, sock))
        except BaseException:
            await self.stop(graceful=False)
            raise
        self._install_signals(loop)
        mode = (
            f"{self.pool.workers} worker process(es) x {self.pool.threads} threads"
            if isinstance(self.executor, ProcessExecutor)
            else f"{self.pool.threads} threads in the main process"
        )
        logger.info("wsgipool %s serving with %s", _version(), mode)

    def _make_handler(self) -> WSGIHandler:
        config = self.config
        if self.pool.workers > 0:
            options = {f.name: getattr(self.pool, f.name) for f in _pool_fields()}
            self.executor = ProcessExecutor(
                log_level=config.log_level, log_setup=self.log_setup, **options
            )
            application: Callable[..., Any] | str = self.application
        else:
            self.executor = ThreadPoolExecutor(self.pool.threads, thread_name_prefix="wsgipool-app")
            application = self.application  # imported in __init__, before any loop
        return WSGIHandler(
            application,
            url_scheme=config.url_scheme,
            stderr=self.stderr,
            inbuf_overflow=config.inbuf_overflow,
            max_request_body_size=config.max_request_body_size,
            executor=self.executor,
            forwarded_allow_ips=config.forwarded_allow_ips,
            script_name="" if config.static else config.script_name,
            watch_disconnects=False,  # aiohttp cancels the handler: handler_cancellation=True
        )

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
                shutdown_timeout=config.shutdown_timeout,
                handler_cancellation=True,
                **protocol_options,
            )
        server = GuardedServer(
            handler.handle_request,
            header_timeout=config.header_timeout,
            handler_cancellation=True,
            **protocol_options,
        )
        return web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=config.shutdown_timeout
        )

    def _make_app(self, handler: WSGIHandler) -> web.Application:
        config = self.config
        middlewares = []
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
                raise ConfigError(f"bind: cannot resolve {host!r}: {exc.strerror}") from None
            family, sockaddr = info[0], (str(info[4][0]), int(info[4][1]))
        try:
            sock = socket.create_server(sockaddr, family=family, backlog=backlog)
        except OSError as exc:
            raise ConfigError(
                f"bind: cannot listen on {host or '0.0.0.0'}:{address.port}: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        return sock

    def _bind_unix(self, path: str, backlog: int) -> socket.socket:
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        perms = self.config.unix_socket_perms
        try:
            with _umask(0o777 & ~perms):  # the socket is born with its permissions
                sock.bind(path)
            os.chmod(path, perms)  # umask cannot grant bits such as setgid; chmod settles it
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"unix_socket (--unix-socket): cannot listen on {path}: {exc.strerror}"
            ) from None
        self._unix_paths.append(path)
        sock.setblocking(False)
        return sock

    # -- signals and stopping ---------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.request_stop("graceful"),
            signal.SIGINT: lambda: self.request_stop("graceful"),
            signal.SIGQUIT: lambda: self.request_stop("quit"),
            signal.SIGHUP: self._reload,
            signal.SIGTTIN: lambda: self._scale(+1),
            signal.SIGTTOU: lambda: self._scale(-1),
            signal.SIGUSR1: self._reopen_logs,
        }
        for sig, callback in handlers.items():
            loop.add_signal_handler(sig, callback)

    def request_stop(self, how: str = "graceful") -> None:
        if self._stop is not None and not self._stop.done():
            logger.info("stopping (%s)", "at once" if how == "quit" else "gracefully")
            if how == "quit" and isinstance(self.executor, ProcessExecutor):
                self.executor.kill()
            self._stop.set_result(how)

    def _reload(self) -> None:
        if isinstance(self.executor, ProcessExecutor):
            logger.info("SIGHUP: reloading the app")
            task = asyncio.get_running_loop().create_task(self.executor.reload())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        else:
            logger.warning("SIGHUP ignored: reload needs worker processes (--workers 1 or more)")

    def _reopen_logs(self) -> None:
        """SIGUSR1: reopen the log files here, then in the template and the workers."""
        problems = logsetup.reopen(self.log_setup)
        for problem in problems:
            logger.error("SIGUSR1: %s; logging goes on to the old file", problem)
        if isinstance(self.executor, ProcessExecutor):
            self.executor.signal_processes(signal.SIGUSR1)
        logger.info("SIGUSR1: log files reopened")

    def _scale(self, delta: int) -> None:
        if isinstance(self.executor, ProcessExecutor):
            self.executor.scale(delta)
        else:
            logger.warning("SIGTTIN/SIGTTOU ignored: scaling needs worker processes")

    async def stop(self, graceful: bool = True) -> None:
        loop = asyncio.get_running_loop()
        for sig in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGQUIT,
            signal.SIGHUP,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGUSR1,
        ):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if self.runner is not None:
            # Stops accepting, then waits up to shutdown_timeout for requests in flight.
            await self.runner.cleanup()
            self.runner = None
        executor = self.executor
        if isinstance(executor, ProcessExecutor):
            await executor.shutdown(self.pool.graceful_timeout if graceful else 0.0)
        elif isinstance(executor, ThreadPoolExecutor):
            executor.shutdown(wait=False, cancel_futures=True)
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths.clear()


def _pool_fields() -> tuple[Any, ...]:
    import dataclasses

    return dataclasses.fields(PoolConfig)


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


def _describe(address: BindAddress, sock: socket.socket) -> str:
    if address.kind == "unix":
        return f"unix:{address.path}"
    name = sock.getsockname()
    if isinstance(name, tuple):
        host = name[0]
        return f"http://[{host}]:{name[1]}" if ":" in host else f"http://{host}:{name[1]}"
    return f"fd://{address.fd}"


def _expect_handler(limit: int) -> Callable[[web.Request], Any]:
    """Answer ``Expect: 100-continue`` with 413 at once when the body would be too large."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version != (1, 1):
            return None
        expectation = request.headers.get("Expect", "").lower()
        if expectation != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expectation}")
        if request.content_length is not None and request.content_length > limit:
            response = web.Response(status=413, text="413 Payload Too Large\n")
            response.force_close()
            return response
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
    return uvloop.run


def _version() -> str:
    from wsgipool import __version__

    return __version__
