"""Where log lines go, in which format, and how files are reopened after rotation.

Decided once (docs/operations.md, "Logs"):

* The error log is file descriptor 2 of every process.  With ``--error-logfile
  PATH`` the main process opens PATH and ``dup2``s it onto fd 2 before the
  template process is started, so the template, every worker and anything
  they run (``wsgi.errors``, ``print(file=sys.stderr)``, a C extension's
  messages) write to the same file, with ``O_APPEND``.
* The access log is written by the main process only (it sees every request):
  to stderr by default, to stdout with ``--access-logfile -``, or to a file.
* SIGUSR1 reopens both in the main process, from its event loop; the main
  process then sends SIGUSR1 to the template and the workers, whose handler
  (installed by `configure` in the template, inherited by every fork) reopens
  the error log path and ``dup2``s it onto their fd 2.  Any ``FileHandler`` a
  ``--log-config`` file added is reopened too.

`LogSetup` is what the template needs to do the same: it travels in the
worker settings.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import logging.config
import os
import signal
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from wsgipool.logs.atoms import DEFAULT_FORMAT

if TYPE_CHECKING:  # not at run time: the template and workers never import asyncio
    import asyncio

__all__ = [
    "LOG_FORMAT",
    "JsonFormatter",
    "LogSetup",
    "configure",
    "flush_access_per_iteration",
    "load_dict_config",
    "reopen",
]

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"

ACCESS_LOGGER = "wsgipool.access"

_FILE_MODE = 0o644
_LOG_CONFIG = "log_config (--log-config)"


class LogConfigError(ValueError):
    """A log file or --log-config file that cannot be used; one line naming the option."""


@dataclass(frozen=True, slots=True)
class LogSetup:
    """How this process logs; picklable, so the template can do the same."""

    level: str = "info"
    format: str = "text"  # or "json"
    error_logfile: str | None = None  # None or "-": stderr as inherited
    access_log: bool = False
    access_logfile: str | None = None  # None: stderr; "-": stdout
    access_format: str = DEFAULT_FORMAT
    dict_config: dict[str, Any] | None = None

    @property
    def access_enabled(self) -> bool:
        return self.access_log or self.access_logfile is not None

    @property
    def wants_rss_change(self) -> bool:
        """Workers measure their RSS around each request only for an access log that uses it."""
        return self.access_enabled and (
            "%(M)s" in self.access_format or self.format == "json" or self.dict_config is not None
        )


def load_dict_config(path: str) -> dict[str, Any]:
    """A logging dictConfig from a JSON or TOML (``.toml``) file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LogConfigError(f"{_LOG_CONFIG}: cannot read {path}: {exc.strerror}") from None
    try:
        if path.endswith(".toml"):
            config: object = tomllib.loads(data.decode("utf-8"))
        else:
            config = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LogConfigError(f"{_LOG_CONFIG}: {path} is not valid {kind}: {message}") from None
    if not isinstance(config, dict):
        raise LogConfigError(f"{_LOG_CONFIG}: {path}: expected a mapping (a logging dictConfig)")
    config.setdefault("version", 1)
    # wsgipool's loggers exist before the file is read: keep them unless told otherwise.
    config.setdefault("disable_existing_loggers", False)
    return config


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the field names are documented in docs/operations.md."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access is not None:  # an atoms.RequestRecord: the access line's fields
            out.update(access.fields())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii escapes every control character but DEL; one line, always.
        return json.dumps(out, ensure_ascii=True, default=str).replace("\x7f", "\\u007f")


class OnceFilter(logging.Filter):
    """For wsgipool's handler on the root logger: skip records another handler wrote.

    An app that configures its own logging (Django with its default LOGGING)
    has handlers on its loggers, and its records still propagate to the root;
    without this filter each of them would be written twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "root":
            return True
        logger: logging.Logger | None = logging.getLogger(name)
        root = logging.getLogger()
        while logger is not None and logger is not root:
            for handler in logger.handlers:
                if record.levelno >= handler.level and handler.filter(record):
                    return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def _formatter(setup: LogSetup) -> logging.Formatter:
    return JsonFormatter() if setup.format == "json" else logging.Formatter(LOG_FORMAT)


def _access_formatter(setup: LogSetup) -> logging.Formatter:
    return JsonFormatter() if setup.format == "json" else logging.Formatter("%(message)s")


class _FlushPerIteration(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, once given the event loop, flushes once per iteration.

    Access lines are written on the main process's event loop, one per request;
    flushing each is a write(2) per request.  With `flush_access_per_iteration`
    a flush asked for on the loop's thread is done at the end of the loop's
    current iteration (``call_soon``), after the other lines of that iteration;
    anywhere else, or once the loop is closed, it is done at once.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _thread = 0
    _pending = False

    def flush(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or threading.get_ident() != self._thread:
            super().flush()
        elif not self._pending:
            self._pending = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._pending = False
        super().flush()

    def flush_on(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Flush once per iteration of `loop` (this thread's), or at once again (None)."""
        self._loop = loop
        self._thread = threading.get_ident()
        if loop is None:
            super().flush()


class _ReopeningFileHandler(_FlushPerIteration, logging.FileHandler):
    """A FileHandler that `reopen` knows how to point at a fresh file."""


def flush_access_per_iteration(loop: asyncio.AbstractEventLoop | None) -> None:
    """Let the access log's own handlers flush once per iteration of `loop` (the
    running one), or, with None, flush them now and at once from then on (at a stop).
    A handler a ``--log-config`` file put there flushes as it always does."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        if isinstance(handler, _FlushPerIteration):
            handler.flush_on(loop)


def configure(setup: LogSetup, *, main: bool) -> None:
    """Set up logging in this process (the main one, or the template for its workers).

    In the main process an ``--error-logfile`` becomes fd 2 first, so what is
    started later inherits it.  Raises LogConfigError for a bad --log-config.
    """
    if main and setup.error_logfile not in (None, "-"):
        _point_stderr_at(setup.error_logfile)
    level = setup.level.upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_wsgipool", False):
            root.removeHandler(handler)
    if not root.handlers:  # an embedder's own handlers are left alone
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_formatter(setup))
        handler.addFilter(OnceFilter())
        handler._wsgipool = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("wsgipool").setLevel(level)
    # aiohttp's own access logger is never used: wsgipool.access replaces it.
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.setLevel(logging.INFO)
    for handler in list(access.handlers):
        access.removeHandler(handler)
        handler.close()
    if main and setup.access_enabled:
        access.addHandler(_access_handler(setup))
    if setup.dict_config is not None:
        try:
            # A copy: dictConfig rewrites what it is given, and the template gets it next.
            logging.config.dictConfig(copy.deepcopy(setup.dict_config))
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise LogConfigError(
                f"{_LOG_CONFIG}: cannot apply it: {str(exc).splitlines()[0]}"
            ) from None
    if not main:
        signal.signal(signal.SIGUSR1, lambda *_: _reopen_here(setup))


def _reopen_here(setup: LogSetup) -> None:
    """SIGUSR1 in the template or a worker (the main process told it to)."""
    for problem in reopen(setup):
        logging.getLogger("wsgipool.logs").error(
            "SIGUSR1: %s; logging goes on to the old file", problem
        )


def _access_handler(setup: LogSetup) -> logging.Handler:
    target = setup.access_logfile
    handler: logging.Handler
    if target is None:
        handler = logging.StreamHandler(sys.stderr)  # line-buffered: no flush to spare
    elif target == "-":
        handler = _FlushPerIteration(sys.stdout)
    else:
        try:
            handler = _ReopeningFileHandler(target, mode="a", encoding="utf-8")
        except OSError as exc:
            raise LogConfigError(
                f"access_logfile (--access-logfile): cannot open {target}: {exc.strerror}"
            ) from None
    handler.setFormatter(_access_formatter(setup))
    return handler


def _point_stderr_at(path: str) -> None:
    """Open `path` for appending and make it this process's fd 2 (and sys.stderr's)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        raise LogConfigError(
            f"error_logfile (--error-logfile): cannot open {path}: {exc.strerror}"
        ) from None
    stream: TextIO | None = sys.stderr
    if stream is not None:
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        os.dup2(fd, 2)  # dup2 clears close-on-exec on fd 2: children inherit it
    finally:
        os.close(fd)


def reopen(setup: LogSetup) -> list[str]:
    """Reopen the log files after a rotation; returns the problems, one line each.

    Called from the main process's event loop on SIGUSR1, and from the signal
    handler in the template and workers.  A file that cannot be reopened keeps
    the old one: logging goes on, and the caller logs the problem.
    """
    problems: list[str] = []
    if setup.error_logfile not in (None, "-"):
        try:
            _point_stderr_at(setup.error_logfile)
        except LogConfigError as exc:
            problems.append(str(exc))
    loggers = [logging.getLogger(), *_known_loggers()]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and handler.stream is not None:
                problem = _reopen_file_handler(handler)
                if problem:
                    problems.append(problem)
    return problems


def _known_loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [
        logger for logger in list(manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    ]


def _reopen_file_handler(handler: logging.FileHandler) -> str | None:
    handler.acquire()
    try:
        try:
            stream = handler._open()
        except OSError as exc:
            return f"cannot reopen {handler.baseFilename}: {exc.strerror}"
        old = handler.setStream(stream)
        if old is not None:
            try:
                old.close()
            except OSError:
                pass
        return None
    finally:
        handler.release()
