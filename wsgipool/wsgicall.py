"""One WSGI call, by the rules of PEP 3333, shared by both executors.

`run_wsgi` calls the app, enforces the start_response contract, iterates the
result, honours cancellation and always calls ``close()``.  Where the output
goes is the business of a `ResponseOutput`: frames on a worker's socket, or
events handed to the event loop in the in-process executor.  Keeping the rules
in one place is what makes both executors answer the same way.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from operator import length_hint
from types import TracebackType
from typing import IO, Any

from wsgipool.logs.escape import escape
from wsgipool.protocol import validate_header, validate_status

__all__ = [
    "HOP_BY_HOP",
    "SERVER_HEADER",
    "ClientDisconnected",
    "FileWrapper",
    "ResponseOutput",
    "complete_environ",
    "not_found",
    "run_wsgi",
]

logger = logging.getLogger("wsgipool.app")

#: Headers an app may not send (PEP 3333): dropped on the way to the client.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
#: The Server header of responses whose app did not set one.
SERVER_HEADER = "wsgipool"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ClientDisconnected(OSError):
    """Raised by write() once the client has gone away."""


class FileWrapper:
    """``wsgi.file_wrapper``: lets the server send a real file with sendfile."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block


class ResponseOutput:
    """Where a response goes, with the credit and cancellation every output shares.

    Credit is the number of bytes the frontend is ready to take for this
    request; `take_credit` blocks the app thread when it is spent, which is
    what keeps a slow client from making the frontend buffer a whole response.
    """

    __slots__ = ("_cond", "_credit", "cancelled")

    #: Whether `send_file` may be used for wsgi.file_wrapper with a real file.
    files_supported = True

    def __init__(self, credit: int) -> None:
        self._credit = credit
        self._cond = threading.Condition(threading.Lock())
        self.cancelled = False

    def grant(self, amount: int) -> None:
        with self._cond:
            self._credit += amount
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    def take_credit(self, amount: int) -> bool:
        """Wait until there is credit, then spend `amount`; False once cancelled."""
        with self._cond:
            if self._credit > 0 or self.cancelled:
                self._credit -= amount
                return not self.cancelled
        self.wait_until(self._has_credit)
        with self._cond:
            self._credit -= amount
            return not self.cancelled

    def _has_credit(self) -> bool:
        return self._credit > 0 or self.cancelled

    def wait_until(self, ready: Callable[[], bool]) -> None:
        """Block until `ready()` (checked under the condition's lock) is true."""
        with self._cond:
            while not ready():
                self._cond.wait()

    # What the outputs implement.
    def start(self, status: str, headers: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    def body(self, data: bytes, more: bool) -> None:
        """A body chunk; `more` is False when the caller knows it is the last."""
        raise NotImplementedError

    def send_file(self, fd: int, offset: int, count: int | None) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def fail(self, message: str) -> None:
        """The app failed: 500 if nothing was sent, else the connection is cut."""
        raise NotImplementedError


class _Call:
    """The state of one call: what start_response was given and what went out."""

    __slots__ = ("environ", "headers", "headers_sent", "out", "status")

    def __init__(self, environ: dict[str, Any], out: ResponseOutput) -> None:
        self.environ = environ
        self.out = out
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None
        self.headers_sent = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        validate_status(status)
        if not isinstance(headers, list):
            raise TypeError(f"headers must be a list, got {type(headers).__name__}")
        length: str | None = None
        padded = False
        for item in headers:
            # PEP 3333 says tuples; [name, value] lists work in gunicorn, waitress and
            # asgiref, and apps written against them send them.
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise TypeError(f"each header must be a (name, value) pair, got {item!r}")
            name, value = item
            validate_header(name, value)
            if not padded and value.strip(" \t") is not value:
                padded = True
            if len(name) == 14 and name.lower() == "content-length":
                if length is not None and value.strip() != length:
                    raise ValueError(f"conflicting Content-Length headers: {length} and {value}")
                length = value.strip()
        if padded:
            # Whitespace around a value is not part of it (RFC 9110 section 5.5): Django
            # sends each Set-Cookie as " name=value"; it goes out as gunicorn's does.
            headers = [(name, value.strip(" \t")) for name, value in headers]
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"write() takes bytes, got {type(data).__name__}")
        if self.out.cancelled:
            raise ClientDisconnected("the client closed the connection")
        if data:
            self._send_headers()
            self.out.body(bytes(data), True)

    def _send_headers(self) -> None:
        if not self.headers_sent:
            assert self.status is not None and self.headers is not None
            self.out.start(self.status, self.headers)
            self.headers_sent = True


def run_wsgi(app: WSGIApp, environ: dict[str, Any], out: ResponseOutput) -> None:
    """Call `app`, send its response to `out`, and end the request either way."""
    call = _Call(environ, out)
    result: Iterable[bytes] | None = None
    try:
        result = app(environ, call.start_response)
        _send_result(call, result)
    except BaseException:  # the app's exceptions, SystemExit too, must never reach the server
        if out.cancelled:
            _close(result, environ)
            out.end()
            return
        logger.error(
            "Error handling %s %s",
            escape(environ.get("REQUEST_METHOD", "?")),
            escape(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")),
            exc_info=True,
        )
        _close(result, environ)
        out.fail("the application raised an exception")
        return
    if not _close(result, environ) and not call.headers_sent:
        out.fail("the iterable's close() raised")
        return
    out.end()


def _send_result(call: _Call, result: Iterable[bytes]) -> None:
    out = call.out
    if isinstance(result, FileWrapper) and out.files_supported and call.status is not None:
        sent = _try_send_file(call, result)
        if sent:
            return
    if isinstance(result, list | tuple):
        # A sequence is known in full: hold small chunks so they leave with the end.
        last = len(result) - 1
        for index, chunk in enumerate(result):
            if out.cancelled:
                return
            _check_chunk(chunk)
            if chunk:
                call._send_headers()
                out.body(bytes(chunk), index != last)
    else:
        iterator = iter(result)
        # Iterating a list or tuple (Django's HttpResponse does) tells what is left
        # without asking for more: its last chunk can leave with the end.
        known = type(iterator) in _SEQUENCE_ITERATORS
        for chunk in iterator:
            if out.cancelled:
                return
            _check_chunk(chunk)
            if chunk:
                call._send_headers()
                out.body(bytes(chunk), not known or length_hint(iterator) > 0)
            elif out.cancelled:
                return
    if call.status is None:
        raise AssertionError("the application returned without calling start_response()")
    call._send_headers()


_SEQUENCE_ITERATORS: tuple[type, ...] = (type(iter([])), type(iter(())))


def _check_chunk(chunk: object) -> None:
    if not isinstance(chunk, bytes | bytearray):
        raise TypeError(f"the application yielded {type(chunk).__name__}, not bytes")


def _try_send_file(call: _Call, wrapper: FileWrapper) -> bool:
    """Hand a real, regular file over whole; False means iterate it instead."""
    filelike = wrapper.filelike
    try:
        fd = filelike.fileno()
        info = os.fstat(fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except (AttributeError, OSError, ValueError):
        return False
    if not stat.S_ISREG(info.st_mode) or mode == os.O_WRONLY:  # what a FILE frame may carry
        return False
    try:
        offset = filelike.tell() if hasattr(filelike, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
    except (OSError, ValueError):
        return False
    count: int | None = max(info.st_size - offset, 0)
    assert call.headers is not None
    for name, value in call.headers:
        if name.lower() == "content-length":
            count = min(count or 0, int(value.strip()))
    call._send_headers()
    call.out.send_file(fd, offset, count)
    return True


def _close(result: object, environ: dict[str, Any]) -> bool:
    """Call the iterable's close(); log and report False if it raises."""
    close = getattr(result, "close", None)
    if close is None:
        return True
    try:
        close()
    except Exception:
        logger.error(
            "Error closing the response of %s",
            escape(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")),
            exc_info=True,
        )
        return False
    return True


def complete_environ(
    environ: dict[str, Any],
    body: Any,
    errors: Any,
    *,
    multiprocess: bool,
) -> dict[str, Any]:
    """Add the ``wsgi.*`` objects of PEP 3333 to a CGI environ, in place."""
    environ["wsgi.version"] = (1, 0)
    environ["wsgi.input"] = body
    environ["wsgi.errors"] = errors
    environ["wsgi.multithread"] = True
    environ["wsgi.multiprocess"] = multiprocess
    environ["wsgi.run_once"] = False
    environ["wsgi.input_terminated"] = True
    environ["wsgi.file_wrapper"] = FileWrapper
    return environ


def not_found(out: ResponseOutput) -> None:
    """The answer for a path outside the prefix the app is mounted under."""
    body = b"404 Not Found\n"
    out.start("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    out.body(body, False)
    out.end()
