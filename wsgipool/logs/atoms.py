"""The access log's format: gunicorn's atoms, compiled once, one line per request.

`compile_format` turns a format such as ``%(h)s "%(r)s" %(s)s %(b)s`` into a
list of literal strings and small getter functions; it runs when the config is
built (a bad format is a `ConfigError` at start) and is cached, so per request
only the getters run.  Every value that comes from the client is escaped.

This module is pure (no aiohttp import at run time): the config compiles
formats with it, and the template process imports the JSON formatter that
uses `RequestRecord.fields`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsgipool.logs.escape import escape

if TYPE_CHECKING:
    from aiohttp.web import BaseRequest, StreamResponse

__all__ = [
    "DEFAULT_FORMAT",
    "FormatError",
    "RequestRecord",
    "compile_format",
]

#: gunicorn's default access line: Apache's "combined" format.
DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

_ATOM = re.compile(r"%\((\{[^{}()]+\}[io]|[A-Za-z]+)\)s|%%|%")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class FormatError(ValueError):
    """An access log format that cannot be compiled; the message says where."""


@dataclass(slots=True)
class RequestRecord:
    """What one access line is made of; also the JSON fields of an access line."""

    request: BaseRequest
    response: StreamResponse
    duration: float  # seconds from the first byte of the request to the end of the response
    worker_pid: int | None = None  # the worker that served it, if one did
    rss_change: int | None = None  # that worker's RSS change over the request, KiB

    @property
    def start(self) -> float:
        return time.time() - self.duration

    def fields(self) -> dict[str, Any]:
        return fields(self)


Getter = Callable[[RequestRecord], str]


def _remote(r: RequestRecord) -> str:
    return escape(r.request.remote or "-")


def _user(r: RequestRecord) -> str:
    """The user name of HTTP Basic authentication, as gunicorn's %(u)s."""
    auth = r.request.headers.get("Authorization", "")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return "-"
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return "-"
    user = decoded.partition(":")[0]
    return escape(user) if user else "-"


def _clf_time(r: RequestRecord) -> str:
    """[10/Oct/2000:13:55:36 +0000]: when the request started, in local time."""
    return _clf_text(int(r.start))


@functools.lru_cache(maxsize=4)  # formatted once a second, not once a request
def _clf_text(second: int) -> str:
    local = time.localtime(second)
    offset = local.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (
        f"[{local.tm_mday:02d}/{_MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
        f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {sign}{hours:02d}{minutes:02d}]"
    )


def _protocol(r: RequestRecord) -> str:
    version = r.request.version
    return f"HTTP/{version.major}.{version.minor}"


def _request_line(r: RequestRecord) -> str:
    request = r.request
    return f"{escape(request.method)} {escape(request.raw_path)} {_protocol(r)}"


def _status(r: RequestRecord) -> str:
    return str(r.response.status)


def body_bytes(request: BaseRequest, response: StreamResponse) -> int | None:
    """Bytes of the response body sent (not the head); None when unknown."""
    sent = getattr(response, "body_sent", None)
    if isinstance(sent, int):
        return sent
    if request.method == "HEAD" or response.status in (204, 304) or response.status < 200:
        return 0
    length = response.content_length
    if length is not None and response.prepared:
        return length
    return None


def _body_or_dash(r: RequestRecord) -> str:
    sent = body_bytes(r.request, r.response)
    return "-" if not sent else str(sent)


def _body_or_zero(r: RequestRecord) -> str:
    sent = body_bytes(r.request, r.response)
    return str(sent or 0)


def _header_getter(name: str) -> Getter:
    def get(r: RequestRecord) -> str:
        value = r.request.headers.get(name)
        return "-" if value is None else escape(value)

    return get


def _response_header_getter(name: str) -> Getter:
    def get(r: RequestRecord) -> str:
        value = response_header(r.response, name)
        return "-" if value is None else escape(value)

    return get


def response_header(response: StreamResponse, name: str) -> str | None:
    """A response header's first value, also of a response whose head a worker
    serialised (its `raw_head`: the RAW frames of small whole responses, which
    aiohttp's header machinery never sees)."""
    head = getattr(response, "raw_head", None)
    if head is None:
        return response.headers.get(name)
    want = name.lower().encode("latin-1", "replace")
    for line in bytes(head).split(b"\r\n")[1:]:  # after the status line
        field, colon, value = line.partition(b":")
        if colon and field.lower() == want:
            return value.strip(b" \t").decode("latin-1")
    return None


def _worker_pid(r: RequestRecord) -> str:
    return "-" if r.worker_pid is None else str(r.worker_pid)


def _rss_change(r: RequestRecord) -> str:
    return "-" if r.rss_change is None else str(r.rss_change)


_ATOMS: dict[str, Getter] = {
    "h": _remote,
    "l": lambda r: "-",
    "u": _user,
    "t": _clf_time,
    "r": _request_line,
    "s": _status,
    "b": _body_or_dash,
    "B": _body_or_zero,
    "f": _header_getter("Referer"),
    "a": _header_getter("User-Agent"),
    "T": lambda r: str(int(r.duration)),
    "D": lambda r: str(int(r.duration * 1_000_000)),
    "L": lambda r: f"{r.duration:.6f}",
    "m": lambda r: escape(r.request.method),
    "U": lambda r: escape(r.request.raw_path.partition("?")[0]),
    "q": lambda r: escape(r.request.raw_path.partition("?")[2]),
    "H": _protocol,
    "p": _worker_pid,
    "M": _rss_change,
}

#: The atoms and what they mean, for the docs and error messages.
ATOM_HELP = {
    "h": "remote address",
    "l": "'-' (identd, never used)",
    "u": "user name from HTTP Basic authentication, or '-'",
    "t": "when the request started, [10/Oct/2000:13:55:36 +0000]",
    "r": 'the request line, "GET /path?query HTTP/1.1"',
    "s": "status code",
    "b": "response body bytes sent, '-' for none",
    "B": "response body bytes sent, 0 for none",
    "f": "Referer header",
    "a": "User-Agent header",
    "T": "request time in whole seconds",
    "D": "request time in microseconds",
    "L": "request time in seconds, with decimals",
    "m": "request method",
    "U": "URL path, without the query",
    "q": "query string, without the '?'",
    "H": "protocol, HTTP/1.1",
    "p": "pid of the worker that served the request ('-' in thread mode or when none did)",
    "M": "RSS change of that worker over the request, in KiB ('-' when not known)",
    "{Name}i": "request header Name",
    "{Name}o": "response header Name",
}


@functools.lru_cache(maxsize=16)
def compile_format(text: str) -> tuple[str | Getter, ...]:
    """Literal strings and getters for `text`; FormatError names what is wrong."""
    parts: list[str | Getter] = []
    position = 0
    for match in _ATOM.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        position = match.end()
        token = match.group()
        if token == "%%":
            parts.append("%")
            continue
        if token == "%":
            raise FormatError(
                f"a '%' at position {match.start()} starts no atom; "
                "write %(h)s, %({Header}i)s or %% for a percent sign"
            )
        name = match.group(1)
        if name.startswith("{"):
            header = name[1:-2]
            if not header.strip():
                raise FormatError(f"empty header name in %({name})s")
            getter = _header_getter(header) if name[-1] == "i" else _response_header_getter(header)
            parts.append(getter)
        elif name in _ATOMS:
            parts.append(_ATOMS[name])
        else:
            raise FormatError(
                f"unknown atom %({name})s; known: {', '.join(sorted(ATOM_HELP, key=str.lower))}"
            )
    if position < len(text):
        parts.append(text[position:])
    return tuple(_merge(parts))


def _merge(parts: list[str | Getter]) -> list[str | Getter]:
    out: list[str | Getter] = []
    for part in parts:
        if isinstance(part, str) and out and isinstance(out[-1], str):
            out[-1] += part
        else:
            out.append(part)
    return out


def render(parts: tuple[str | Getter, ...], record: RequestRecord) -> str:
    return "".join(part if isinstance(part, str) else part(record) for part in parts)


def fields(record: RequestRecord) -> dict[str, Any]:
    """The JSON fields of an access line (documented in docs/operations.md)."""
    request = record.request
    path, _, query = request.raw_path.partition("?")
    return {
        "remote": request.remote or None,
        "method": request.method,
        "path": path,
        "query": query,
        "protocol": _protocol(record),
        "status": record.response.status,
        "body_bytes": body_bytes(request, record.response),
        "duration_us": int(record.duration * 1_000_000),
        "referer": request.headers.get("Referer"),
        "user_agent": request.headers.get("User-Agent"),
        "worker_pid": record.worker_pid,
        "rss_change_kib": record.rss_change,
    }
