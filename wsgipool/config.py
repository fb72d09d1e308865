"""Every option of wsgipool, declared once.

`PoolConfig` holds what shapes the worker pool (used by `ProcessExecutor`),
`Config` what shapes the server (used by `serve()`).  The CLI builds its flags,
and docs/configuration.md its tables, from the field metadata below, so a new
option is one field here and nothing else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from wsgipool.cpus import available_cpus
from wsgipool.logs.atoms import DEFAULT_FORMAT as DEFAULT_ACCESS_FORMAT
from wsgipool.logs.atoms import FormatError, compile_format
from wsgipool.privileges import parse_group, parse_user, resolve_ids

__all__ = [
    "Config",
    "ConfigError",
    "PoolConfig",
    "env_name",
    "parse_duration",
    "parse_size",
]

#: Every option ``NAME`` can be set with the environment variable ``WSGIPOOL_NAME``.
ENV_PREFIX = "WSGIPOOL_"


class ConfigError(ValueError):
    """A bad option value; the message is one line that names the option."""


# -- value parsers -----------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like ``"512M"`` (K, M, G, T are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit = match.group(1), match.group(2).lower()
            if not unit and "." in number:
                raise ValueError(f"a size in bytes is a whole number, got {value!r}")
            return int(float(number) * _SIZE_UNITS[unit])
    raise ValueError(f"invalid size {value!r}; use bytes or a K/M/G suffix, like 512M")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"500ms"``, ``"30s"``, ``"2m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return _bounded(float(value), value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return _bounded(float(match.group(1)) * _DURATION_UNITS[match.group(2)], value)
    raise ValueError(f"invalid duration {value!r}; use seconds or a ms/s/m/h suffix, like 30s")


#: The longest duration taken (a year): event-loop timers overflow on far larger ones.
_DURATION_MAX = 365 * 24 * 3600.0


def _bounded(seconds: float, given: object) -> float:
    """`seconds`, unless it is not a number (TOML's nan) or longer than a year (inf)."""
    if not 0 <= seconds <= _DURATION_MAX:  # also false for nan
        raise ValueError(
            f"invalid duration {given!r}; at most a year (options that can be off take none)"
        )
    return seconds


def _parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValueError(f"expected a whole number, got {value!r}")


def _parse_octal(value: object) -> int:
    """File permissions: an int (0o660) or an octal string ("660", "0660", "0o660")."""
    if isinstance(value, bool):
        raise ValueError(f"expected octal permissions, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip()):
        text = value.strip()
        number = int(text[2:] if text.startswith("0o") else text, 8)
    else:
        raise ValueError(f"expected octal permissions like 660, got {value!r}")
    if not 0 <= number <= 0o7777:
        raise ValueError(f"permissions out of range: {oct(number)}")
    return number


def _parse_optional(parse: Callable[[object], Any]) -> Callable[[object], Any]:
    def parse_or_none(value: object) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parse(value)

    return parse_or_none


def _parse_off_at_zero(value: object) -> float | None:
    """A duration where 0 means off, as none does (gunicorn's ``--timeout 0``)."""
    seconds: float | None = _parse_optional(parse_duration)(value)
    return None if seconds == 0 else seconds


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_binds(value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(_iterable(value))
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected HOST:PORT, unix:PATH or fd://N, got {item!r}")
        parse_bind(item)
    return tuple(items)


def _parse_paths(value: object) -> tuple[str, ...]:
    """Directories, as gunicorn's --pythonpath takes them: comma-separated, or a list."""
    items = value.split(",") if isinstance(value, str) else list(_iterable(value))
    paths: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected directory names, got {item!r}")
        if item.strip():
            paths.append(item.strip())
    return tuple(paths)


def _parse_static(value: object) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in _iterable(value):
        if isinstance(item, str):
            url, sep, directory = item.partition("=")
            if not sep:
                raise ValueError(f"expected URL=DIR, got {item!r}")
        elif isinstance(item, tuple | list) and len(item) == 2:
            url, directory = str(item[0]), str(item[1])
        else:
            raise ValueError(f"expected (url, directory) or URL=DIR, got {item!r}")
        url = format_path(url)
        if not os.path.isdir(directory):
            raise ValueError(f"static directory {directory!r} does not exist")
        out.append((url, directory))
    return tuple(out)


def _parse_ips(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(_iterable(value))
    out: list[str] = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item not in ("*", "unix"):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address, a network, 'unix' or '*'"
                ) from None
        out.append(item)
    return tuple(out)


#: Methods a retry could run twice with a different effect: never retried.
_NEVER_RETRIED = frozenset({"POST", "PATCH", "CONNECT"})
_METHOD_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_methods(value: object) -> tuple[str, ...]:
    """HTTP methods, comma-separated or a list; '' is none.  Upper-cased, deduplicated."""
    items = value.split(",") if isinstance(value, str) else list(_iterable(value))
    out: list[str] = []
    for raw in items:
        item = str(raw).strip().upper()
        if not item:
            continue
        if not _METHOD_RE.fullmatch(item):
            raise ValueError(f"{str(raw).strip()!r} is not an HTTP method")
        if item in _NEVER_RETRIED:
            raise ValueError(f"{item} is not idempotent: a retry could apply it twice")
        if item not in out:
            out.append(item)
    return tuple(out)


def _parse_metrics_bind(value: object) -> str:
    text = _parse_str(value)
    if parse_bind(text).kind == "fd":
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {text!r}")
    return text


def _parse_health_path(value: object) -> str:
    path = format_path(_parse_str(value))
    if path == "/":
        raise ValueError("the health path cannot be '/': the app would lose its root")
    return path


def _parse_log_level(value: object) -> str:
    level = _parse_str(value).lower()
    if level not in ("critical", "error", "warning", "info", "debug"):
        raise ValueError(f"expected critical, error, warning, info or debug, got {value!r}")
    return level


def _parse_log_format(value: object) -> str:
    text = _parse_str(value).lower()
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {value!r}")
    return text


def _parse_access_format(value: object) -> str:
    text = _parse_str(value)
    try:
        compile_format(text)  # compiled once, here; the access logger gets it from the cache
    except FormatError as exc:
        raise ValueError(str(exc)) from None
    return text


def _parse_script_name(value: object) -> str:
    text = _parse_str(value)
    if text in ("", "/"):
        return ""
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    return text.rstrip("/")


def _parse_url_scheme(value: object) -> str:
    text = _parse_str(value).lower()
    if text not in ("http", "https"):
        raise ValueError(f"expected http or https, got {value!r}")
    return text


_TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def _parse_tls_version(value: object) -> str:
    text = _parse_str(value).strip()
    for version in _TLS_VERSIONS:
        if text.lower() in (version.lower(), version[4:]):
            return version
    raise ValueError(f"expected {' or '.join(_TLS_VERSIONS)}, got {value!r}")


#: A hook option: a dotted module, a colon, a dotted attribute path (wsgipool/hooks.py).
_HOOK_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _parse_hook(value: object) -> str:
    text = _parse_str(value).strip()
    if not _HOOK_RE.fullmatch(text):
        raise ValueError(f"expected MODULE:FUNCTION, like myproject.hooks:post_fork, got {value!r}")
    return text


def _iterable(value: object) -> Iterable[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def format_path(path: str) -> str:
    """A URL prefix as aiohttp routes want it: leading slash, no trailing slash."""
    path = path.strip()
    if not path.startswith("/"):
        raise ValueError(f"URL path must start with '/', got {path!r}")
    return path.rstrip("/") or "/"


@dataclass(frozen=True, slots=True)
class BindAddress:
    """One listening address: TCP, a unix socket path, or an inherited descriptor."""

    kind: str  # "tcp", "unix" or "fd"
    host: str | None = None
    port: int = 0
    path: str = ""
    fd: int = -1


def parse_bind(text: str) -> BindAddress:
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix: needs a path, like unix:/run/app.sock")
        return BindAddress("unix", path=path)
    if text.startswith("fd://"):
        number = text[5:]
        if not number.isdigit():
            raise ValueError(f"fd:// needs a descriptor number, got {text!r}")
        return BindAddress("fd", fd=int(number))
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)|(\d+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N, got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or match.group(5))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return BindAddress("tcp", host=host or None, port=port)


_NO_WORKER_CLASS = "wsgipool has one kind of worker, processes of --threads threads: drop it"
_ENV = "set the variable in the command's environment (or the unit's, the container's)"
_DAEMON = "wsgipool stays in the foreground: run it under systemd or in a container"
_NAME = "workers are titled 'wsgipool: worker N [app]' (the proctitle extra): drop it"
_STATSD = "wsgipool's metrics are Prometheus's: --metrics-bind HOST:PORT serves /metrics"
_PASTE = "name the app as MODULE:ATTR"
_PROXY = "the PROXY protocol is not read: use X-Forwarded-For with --forwarded-allow-ips"
#: gunicorn's flags that have no wsgipool twin, and what to do instead: said in the
#: error line of a command line (cli.py) or a config file key (sources.py) written
#: for gunicorn (flags with a twin are accepted: `option(gunicorn=...)`).
GUNICORN_ONLY = {
    "-k": _NO_WORKER_CLASS,
    "--worker-class": _NO_WORKER_CLASS,
    "--worker-connections": "it is for gunicorn's async workers; --threads sets how many "
    "requests a worker runs at once",
    "--capture-output": "the app's stdout and stderr are the server's own: drop it",
    "-e": _ENV,
    "--env": _ENV,
    "-D": _DAEMON,
    "--daemon": _DAEMON,
    "-n": _NAME,
    "--name": _NAME,
    "--statsd-host": _STATSD,
    "--statsd-prefix": _STATSD,
    "--worker-tmp-dir": "workers are watched over their channel, not through a file: drop it",
    "--paste": _PASTE,
    "--paster": _PASTE,
    "--log-syslog": "logs go to stderr (journald, the container runtime) or --log-config",
    "--proxy-protocol": _PROXY,
    "--proxy-allow-from": _PROXY,
    "--reload-extra-file": "--reload watches the .py files under the working directory",
    "--reuse-port": "--frontends N shares each listening socket between N processes",
}


#: listen(2) takes an int; the kernel caps it at net.core.somaxconn anyway.
_BACKLOG_MAX = 65535

# -- option declaration ------------------------------------------------------


#: Marks an option whose command-line default is its `serve()` default.
SAME = object()


def option(
    default: Any,
    parse: Callable[[object], Any],
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    switch: bool = False,
    default_text: str | None = None,
    cli_default: Any = SAME,
    cli_default_text: str | None = None,
    env_aliases: tuple[str, ...] = (),
    show: Callable[[Any], object] | None = None,
    gunicorn: tuple[str, ...] = (),
    octal: bool = False,
) -> Any:
    """A dataclass field carrying what the CLI, the other sources and the docs need to know.

    `cli_default` is the default of the ``wsgipool`` command where it differs from
    the keyword's (``serve()`` keeps aiohttp-wsgi's); `env_aliases` are variables
    that users already set for other servers (``WEB_CONCURRENCY``), read when
    ``WSGIPOOL_<NAME>`` is not set; `show` turns a value back into the form users write
    (permissions in octal) for ``--print-config``; `gunicorn` are gunicorn's flags for
    the same option where they differ (``-w``, ``--keep-alive``), for hands used to them;
    `octal`: the value is permissions, written in octal (a config file's bare number,
    decimal in TOML, is refused) and shown so.
    """
    meta = {
        "parse": parse,
        "help": help,
        "flag": flag,
        "metavar": metavar,
        "repeat": repeat,
        "switch": switch,
        "default_text": default_text,
        "cli_default": cli_default,
        "cli_default_text": cli_default_text,
        "env_aliases": env_aliases,
        "show": _octal_text if octal else show,
        "gunicorn": gunicorn,
        "octal": octal,
    }
    return field(default=default, metadata=meta)


def _octal_text(mode: int | None) -> str | None:
    return None if mode is None else f"{mode:o}"


def env_name(name: str) -> str:
    """The environment variable of an option: ``max_rss`` is ``WSGIPOOL_MAX_RSS``."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """The command-line flag of an option: ``max_rss`` is ``--max-rss``."""
    return "--" + name.replace("_", "-")


class _Validated:
    """Shared parsing for the option dataclasses: normalise, then check relations."""

    def _normalise(self) -> None:
        for spec in fields(self):  # type: ignore[arg-type]
            raw = getattr(self, spec.name)
            try:
                value = spec.metadata["parse"](raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{describe(spec.name)}: {exc}") from None
            object.__setattr__(self, spec.name, value)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        return frozenset(spec.name for spec in fields(cls))  # type: ignore[arg-type]


def describe(name: str) -> str:
    """How an option is named in messages: both the keyword and the CLI flag."""
    return f"{name} ({flag_name(name)})"


@dataclass(frozen=True, slots=True)
class PoolConfig(_Validated):
    """How many worker processes, how they are fed, and when they are recycled."""

    workers: int = option(
        available_cpus().count,
        _parse_int,
        "Worker processes. 0 runs the app in threads of the main process, like aiohttp-wsgi.",
        metavar="N",
        gunicorn=("-w",),
        default_text="CPUs available: the cgroup CPU quota, else the CPU affinity",
        env_aliases=("WEB_CONCURRENCY",),
    )
    threads: int = option(
        4,
        _parse_int,
        "Request threads per worker process (with --workers 0: threads of the main process).",
        metavar="T",
    )
    queue_size: int = option(
        1024,
        _parse_int,
        "Requests that may wait for a free worker thread; one more gets 503.",
        metavar="N",
    )
    queue_timeout: float = option(
        30.0,
        parse_duration,
        "How long a request may wait for a free worker thread before it gets 503.",
        metavar="DURATION",
    )
    max_rss: int | None = option(
        None,
        _parse_optional(parse_size),
        "Soft memory limit per worker: over it, a worker takes no new requests, "
        "finishes what it has and is replaced.",
        metavar="SIZE",
    )
    max_rss_hard: int | None = option(
        None,
        _parse_optional(parse_size),
        "Hard memory limit per worker: over it, a worker is killed at once.",
        metavar="SIZE",
    )
    retry_methods: tuple[str, ...] = option(
        ("GET", "HEAD", "OPTIONS"),
        _parse_methods,
        "Methods of the requests that run once more on another worker when theirs dies "
        "before a byte of the response reached the client (PUT and DELETE only if listed); "
        "comma-separated, '' turns retries off. A request that kills two workers gets 502.",
        metavar="METHODS",
        default_text="GET,HEAD,OPTIONS",
        show=",".join,
    )
    max_requests: int = option(
        0,
        _parse_int,
        "Recycle a worker after this many requests (0: never).",
        metavar="N",
    )
    max_requests_jitter: int = option(
        0,
        _parse_int,
        "Add 0..J to each worker's --max-requests so that workers do not recycle together.",
        metavar="J",
    )
    max_lifetime: float | None = option(
        None,
        _parse_optional(parse_duration),
        "Recycle a worker after it has run this long.",
        metavar="DURATION",
    )
    max_lifetime_jitter: float | None = option(
        None,
        _parse_optional(parse_duration),
        "Add 0..J to each worker's --max-lifetime.",
        metavar="DURATION",
        default_text="10% of --max-lifetime",
    )
    timeout: float | None = option(
        None,
        _parse_off_at_zero,
        "A request whose app produces nothing for this long gets 504; "
        "its stack is logged and its worker recycled. 0 or none: off (gunicorn's 0).",
        metavar="DURATION",
        gunicorn=("-t",),
    )
    graceful_timeout: float = option(
        30.0,
        parse_duration,
        "On SIGTERM or SIGINT, the total time from the signal to exit (stop accepting, "
        "let requests in flight finish, stop the workers, kill what is left); for a worker "
        "being recycled or reloaded, how long it may take to finish its requests.",
        metavar="DURATION",
    )
    user: str | None = option(
        None,
        parse_user,
        "Run the template and the workers as this user (name or uid); "
        "the main process binds its sockets first and stays as started. Needs root.",
        metavar="USER",
        default_text="the user that started wsgipool",
        gunicorn=("-u",),
    )
    group: str | None = option(
        None,
        parse_group,
        "Run the template and the workers with this group (name or gid). Needs root.",
        metavar="GROUP",
        default_text="the --user's group",
        gunicorn=("-g",),
    )

    preload: bool = option(
        False,
        _parse_bool,
        "Import the app once in the template process and fork the workers from it "
        "(fast starts, shared memory; connections and threads made at import are "
        "shared or lost: reopen them in --post-fork). --no-preload: each worker "
        "imports the app after the fork, as gunicorn does by default.",
        switch=True,
    )
    on_starting: str | None = option(
        None,
        _parse_optional(_parse_hook),
        "Hook MODULE:FUNCTION called as f(server) in the main process before the app is imported.",
        metavar="HOOK",
    )
    when_ready: str | None = option(
        None,
        _parse_optional(_parse_hook),
        "Hook called as f(server) in the main process once the workers are ready and "
        "the sockets listen.",
        metavar="HOOK",
    )
    post_fork: str | None = option(
        None,
        _parse_optional(_parse_hook),
        "Hook called as f(worker) in each worker after the fork and the app's import, "
        "before it serves; an exception fails the worker (retried with the crash backoff).",
        metavar="HOOK",
    )
    worker_exit: str | None = option(
        None,
        _parse_optional(_parse_hook),
        "Hook called as f(worker) in each worker as it exits on its own (not when killed).",
        metavar="HOOK",
    )

    def __post_init__(self) -> None:
        self._normalise()
        if self.workers < 0:
            raise ConfigError(f"{describe('workers')}: must be 0 or more, got {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"{describe('threads')}: must be 1 or more, got {self.threads}")
        if self.queue_size < 0:
            raise ConfigError(f"{describe('queue_size')}: must be 0 or more")
        for name in ("max_requests", "max_requests_jitter"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{describe(name)}: must be 0 or more")
        if self.max_rss is not None and self.max_rss_hard is not None:
            if self.max_rss_hard < self.max_rss:
                raise ConfigError(
                    f"{describe('max_rss_hard')}: must not be below max_rss "
                    f"({self.max_rss_hard} < {self.max_rss})"
                )
        for name in ("max_rss", "max_rss_hard"):
            value = getattr(self, name)
            if value is not None and value < (16 << 20):
                raise ConfigError(f"{describe(name)}: {value} bytes is too small; use at least 16M")
        if self.max_lifetime is not None and self.max_lifetime <= 0:
            raise ConfigError(f"{describe('max_lifetime')}: must be more than 0")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"{describe('timeout')}: must be more than 0")

    @property
    def lifetime_jitter(self) -> float:
        if self.max_lifetime_jitter is not None:
            return self.max_lifetime_jitter
        return (self.max_lifetime or 0.0) * 0.1

    def process_only_options(self) -> list[str]:
        """Options set away from their default that only a worker pool can honour."""
        names = (
            "max_rss",
            "max_rss_hard",
            "max_requests",
            "max_lifetime",
            "timeout",
            "post_fork",
            "worker_exit",
        )
        return [name for name in names if getattr(self, name) not in (None, 0)]


@dataclass(frozen=True, slots=True)
class Config(_Validated):
    """The server: where it listens, how it reads requests, how it logs and stops."""

    bind: tuple[str, ...] = option(
        (),
        _parse_binds,
        "Listen on HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (inherited socket); a bare "
        "PORT (or :PORT) is every interface. Repeat to listen on several. "
        "Overrides --host/--port/--unix-socket.",
        metavar="ADDRESS",
        repeat=True,
        gunicorn=("-b",),
    )
    host: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Host interface to listen on (aiohttp-wsgi style); none or empty: all interfaces.",
        metavar="HOST",
        default_text="all interfaces",
        cli_default="127.0.0.1",
        cli_default_text="`127.0.0.1`; all interfaces when PORT is set",
    )
    port: int = option(
        8080,
        _parse_int,
        "TCP port to listen on.",
        metavar="PORT",
        cli_default=8000,
        env_aliases=("PORT",),
    )
    unix_socket: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Path of a unix socket to listen on instead of TCP.",
        metavar="PATH",
    )
    unix_socket_perms: int = option(
        0o600,
        _parse_octal,
        "Permissions of the unix socket, in octal; it has them from the moment it exists.",
        metavar="MODE",
        default_text="600",
        octal=True,
    )
    unix_socket_group: str | None = option(
        None,
        parse_group,
        "Group (name or number) given to the unix socket, so that a proxy running "
        "as another user but in that group can connect (with --unix-socket-perms 660).",
        metavar="GROUP",
        default_text="the server's group",
    )
    umask: int | None = option(
        None,
        _parse_optional(_parse_octal),
        "Umask of the server and its workers (files they create), in octal, like 027.",
        metavar="MASK",
        default_text="inherited",
        octal=True,
    )
    backlog: int = option(1024, _parse_int, "Listen backlog of each socket.", metavar="N")
    frontends: int = option(
        1,
        _parse_int,
        "Frontend processes (event loops). Above 1, the process started becomes an arbiter "
        "that binds the sockets once and starts N frontends sharing them, each with its own "
        "share of --workers (at least one each) and its own supervisor; it restarts a "
        "frontend that dies. Not with --reload. See docs/architecture.md.",
        metavar="N",
    )
    static: tuple[tuple[str, str], ...] = option(
        (),
        _parse_static,
        "Serve the files of DIR under URL (repeatable), beside the app.",
        metavar="URL=DIR",
        repeat=True,
    )
    static_cors: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Access-Control-Allow-Origin value for static files ('*' for any origin).",
        metavar="ORIGIN",
    )
    static_dotfiles: bool = option(
        False,
        _parse_bool,
        "Serve files and directories whose name starts with a dot under --static "
        "(by default such a path is 404).",
        switch=True,
    )
    script_name: str = option(
        "",
        _parse_script_name,
        "URL prefix the app is mounted under; it serves PREFIX and PREFIX/... only.",
        metavar="PREFIX",
    )
    url_scheme: str | None = option(
        None,
        _parse_optional(_parse_url_scheme),
        "Force wsgi.url_scheme (http or https).",
        metavar="SCHEME",
        default_text="from the connection",
    )
    inbuf_overflow: int = option(
        524288,
        parse_size,
        "Request bodies larger than this are spooled to a temporary file.",
        metavar="SIZE",
    )
    max_request_body_size: int = option(
        1073741824,
        parse_size,
        "Largest request body accepted; a larger one gets 413.",
        metavar="SIZE",
    )
    shutdown_timeout: float | None = option(
        None,
        _parse_optional(parse_duration),
        "The part of --graceful-timeout that requests in flight get to finish after "
        "SIGTERM or SIGINT before they are cut; it never extends the total.",
        metavar="DURATION",
        default_text="all of --graceful-timeout",
    )
    forwarded_allow_ips: tuple[str, ...] = option(
        ("127.0.0.1", "::1"),
        _parse_ips,
        "Peers whose X-Forwarded-For and X-Forwarded-Proto are trusted: comma-separated "
        "addresses or networks (also the proxies skipped in X-Forwarded-For), 'unix' for "
        "peers on a unix socket, or '*' for any peer.",
        metavar="IPS",
        default_text="127.0.0.1,::1",
        env_aliases=("FORWARDED_ALLOW_IPS",),
    )
    header_timeout: float = option(
        10.0,
        parse_duration,
        "Deadline for a client to send a complete request head; then 408.",
        metavar="DURATION",
    )
    body_timeout: float | None = option(
        60.0,
        _parse_optional(parse_duration),
        "A request body that makes no progress for this long gets 408 and the connection "
        "is closed; its temporary file is released at once. 'none' disables it.",
        metavar="DURATION",
    )
    send_timeout: float | None = option(
        60.0,
        _parse_optional(parse_duration),
        "A client that accepts no response bytes for this long is disconnected, and the "
        "app's iterable is closed. 'none' disables it.",
        metavar="DURATION",
    )
    keepalive_timeout: float = option(
        75.0,
        parse_duration,
        "How long an idle keep-alive connection stays open.",
        metavar="DURATION",
        gunicorn=("--keep-alive",),
    )
    limit_request_line: int = option(
        8190,
        _parse_int,
        "Longest request line in bytes; a longer one gets 414.",
        metavar="BYTES",
    )
    limit_request_fields: int = option(
        100,
        _parse_int,
        "Most header fields in a request; more gets 431.",
        metavar="N",
    )
    limit_request_field_size: int = option(
        8190,
        _parse_int,
        "Longest header field in bytes; a longer one gets 431.",
        metavar="BYTES",
        gunicorn=("--limit-request-field_size",),
    )
    log_level: str = option(
        "info", _parse_log_level, "Log level: debug, info, warning, error.", metavar="LEVEL"
    )
    access_log: bool = option(
        False,
        _parse_bool,
        "Write the access log, one line per request (to stderr unless --access-logfile "
        "says where); --log-level does not hide it.",
        switch=True,
    )
    access_logfile: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Write the access log to PATH ('-' for stdout); turns the access log on. "
        "Reopened on SIGUSR1.",
        metavar="PATH",
    )
    access_log_format: str = option(
        DEFAULT_ACCESS_FORMAT,
        _parse_access_format,
        "Access line format with gunicorn's atoms: %(h)s %(t)s %(r)s %(s)s %(b)s %(D)s "
        "%(p)s %(M)s %({Header}i)s ... (docs/operations.md lists them all).",
        metavar="FORMAT",
        gunicorn=("--access-logformat",),
    )
    error_logfile: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Write the error log (every process's stderr, workers' included) to PATH "
        "('-' for stderr). Reopened on SIGUSR1.",
        metavar="PATH",
        default_text="stderr",
        gunicorn=("--log-file",),
    )
    log_format: str = option(
        "text",
        _parse_log_format,
        "Format of log lines: text, or json (one JSON object per line, access lines too).",
        metavar="FORMAT",
    )
    log_config: str | None = option(
        None,
        _parse_optional(_parse_str),
        "A logging dictConfig file (JSON, or TOML if it ends in .toml), applied after "
        "wsgipool's own setup, in the main process and the workers.",
        metavar="FILE",
    )
    certfile: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Serve HTTPS: the PEM certificate (chain) file.",
        metavar="FILE",
    )
    keyfile: str | None = option(
        None,
        _parse_optional(_parse_str),
        "The PEM private key of --certfile.",
        metavar="FILE",
        default_text="in --certfile",
    )
    ca_certs: str | None = option(
        None,
        _parse_optional(_parse_str),
        "PEM file of the CAs that sign client certificates; when given, every "
        "client must present one (mutual TLS).",
        metavar="FILE",
    )
    ssl_ciphers: str | None = option(
        None,
        _parse_optional(_parse_str),
        "OpenSSL cipher list for TLS 1.2 connections.",
        metavar="CIPHERS",
        default_text="Python's defaults",
        gunicorn=("--ciphers",),
    )
    ssl_min_version: str = option(
        "TLSv1.2",
        _parse_tls_version,
        "Oldest TLS version accepted: TLSv1.2 or TLSv1.3.",
        metavar="VERSION",
    )
    pid: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Write the main process's PID to this file once its sockets are bound; "
        "the file is removed when it stops.",
        metavar="FILE",
        gunicorn=("-p",),
    )
    chdir: str | None = option(
        None,
        _parse_optional(_parse_str),
        "Change to this directory before importing the app; it is put first on sys.path.",
        metavar="DIR",
    )
    pythonpath: tuple[str, ...] = option(
        (),
        _parse_paths,
        "Directories to put first on sys.path before importing the app, comma-separated "
        "(relative to --chdir), as gunicorn's --pythonpath; the workers inherit them.",
        metavar="DIRS",
    )
    reload: bool = option(
        False,
        _parse_bool,
        "Development: reload the workers (as SIGHUP does) when a .py file under the "
        "current directory (or --chdir) changes. Needs the 'reload' extra; not with --workers 0.",
        switch=True,
    )
    metrics_bind: str | None = option(
        None,
        _parse_optional(_parse_metrics_bind),
        "Serve /metrics (Prometheus), /healthz, /readyz, /stats and a status page on this "
        "separate HOST:PORT or unix:PATH, from the main process (needs the 'metrics' extra). "
        "See docs/metrics.md.",
        metavar="ADDRESS",
        default_text="off",
    )
    health_path: str | None = option(
        None,
        _parse_optional(_parse_health_path),
        "Also answer PATH (alive) and PATH/ready (a worker is ready) on the main listener, "
        "from the main process, without reaching the app.",
        metavar="PATH",
        default_text="off",
    )

    def __post_init__(self) -> None:
        self._normalise()
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{describe('port')}: out of range: {self.port}")
        if not 1 <= self.backlog <= _BACKLOG_MAX:
            raise ConfigError(f"{describe('backlog')}: must be from 1 to {_BACKLOG_MAX}")
        if self.frontends < 1:
            raise ConfigError(f"{describe('frontends')}: must be 1 or more")
        for name in ("limit_request_line", "limit_request_fields", "limit_request_field_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{describe(name)}: must be 1 or more")
        if self.header_timeout <= 0:
            raise ConfigError(f"{describe('header_timeout')}: must be more than 0")
        if self.certfile is None:
            for name in ("keyfile", "ca_certs", "ssl_ciphers"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{describe(name)}: needs --certfile")
        for name in ("body_timeout", "send_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{describe(name)}: must be more than 0 (none disables it)")
        if self.metrics_bind is not None:
            metrics = parse_bind(self.metrics_bind)
            if any(_same_address(metrics, address) for address in self.binds()):
                raise ConfigError(
                    f"{describe('metrics_bind')}: {self.metrics_bind} is also a main listener "
                    "address; give the metrics their own port or socket"
                )

    def binds(self) -> tuple[BindAddress, ...]:
        """The addresses to listen on, from --bind or the aiohttp-wsgi style options."""
        if self.bind:
            return tuple(parse_bind(text) for text in self.bind)
        if self.unix_socket is not None:
            return (BindAddress("unix", path=self.unix_socket),)
        return (BindAddress("tcp", host=self.host, port=self.port),)


def _same_address(a: BindAddress, b: BindAddress) -> bool:
    """Whether two listeners would collide: the same unix path, or the same TCP port on
    the same host (or on all interfaces)."""
    if a.kind != b.kind:
        return False
    if a.kind == "unix":
        return os.path.abspath(a.path) == os.path.abspath(b.path)
    if a.kind == "tcp":
        wildcard = (None, "0.0.0.0", "::")
        return a.port == b.port != 0 and (
            a.host == b.host or a.host in wildcard or b.host in wildcard
        )
    return False


def split_options(
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Sort flat keyword arguments into server, pool and other (handler) options."""
    server: dict[str, Any] = {}
    pool: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    server_names = Config.option_names()
    pool_names = PoolConfig.option_names()
    for key, value in kwargs.items():
        if key in server_names:
            server[key] = value
        elif key in pool_names:
            pool[key] = value
        else:
            rest[key] = value
    return server, pool, rest


def option_fields() -> list[tuple[type, dataclasses.Field[Any]]]:
    """Every option with the class that declares it, in the order of the docs and --help."""
    return [(cls, spec) for cls in (Config, PoolConfig) for spec in fields(cls)]


def reference_markdown() -> str:
    """The option tables of docs/configuration.md, generated from the declarations."""
    lines: list[str] = []
    for cls, title in ((Config, "Server options (`serve()`)"), (PoolConfig, "Pool options")):
        lines += [
            f"### {title}",
            "",
            "| CLI flag | environment | file key, keyword | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for spec in fields(cls):
            meta = spec.metadata
            flag = flag_name(spec.name)
            if meta["metavar"]:
                flag += " " + meta["metavar"]
            if meta["switch"]:
                flag += "` / `--no-" + spec.name.replace("_", "-")
            for other in meta["gunicorn"]:
                flag += f"` / `{other}" + (f" {meta['metavar']}" if meta["metavar"] else "")
            env = "<br>".join(f"`{v}`" for v in (env_name(spec.name), *meta["env_aliases"]))
            default = meta["default_text"] or _default_text(spec.default)
            if meta["cli_default"] is not SAME:
                cli = meta["cli_default_text"] or _default_text(meta["cli_default"])
                default = f"{cli} (CLI), {default} (`serve()`)"
            help_text = meta["help"] + (" Repeatable." if meta["repeat"] else "")
            lines.append(f"| `{flag}` | {env} | `{spec.name}` | {default} | {help_text} |")
        lines.append("")
    return "\n".join(lines)


def _default_text(value: object) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "off" if not value else "on"
    return f"`{value}`"


def cross_check(config: Config, pool: PoolConfig) -> None:
    """Checks that need both the server's and the pool's options."""
    if pool.workers == 0:
        for name in ("reload", "user", "group"):
            if getattr(config if name == "reload" else pool, name) not in (None, False):
                raise ConfigError(
                    f"{describe(name)}: needs worker processes; use --workers 1 or more"
                )
        extra = pool.process_only_options()
        if extra:
            rest = [flag_name(name) for name in extra[1:]]
            also = f", as {', '.join(rest)} {'do' if len(rest) > 1 else 'does'}" if rest else ""
            raise ConfigError(
                f"{describe(extra[0])}: needs worker processes{also}; use --workers 1 or more"
            )
    if config.frontends > 1:
        _check_frontends(config, pool)
    try:
        resolve_ids(pool.user, pool.group)
    except ValueError as exc:
        raise ConfigError(f"{describe('user')}: {exc}") from None


def _check_frontends(config: Config, pool: PoolConfig) -> None:
    """What more than one frontend cannot do (yet): one line each, before anything starts."""
    count = config.frontends
    if pool.workers != 0 and pool.workers < count:
        raise ConfigError(
            f"{describe('frontends')}: {count} frontends need at least {count} workers, one "
            f"each (--workers is {pool.workers}); or --workers 0 for threads in each frontend"
        )
    if config.reload:
        raise ConfigError(
            f"{describe('frontends')}: {count} frontends do not work with --reload "
            "(a development option); use --frontends 1"
        )
