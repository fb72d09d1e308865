"""WSGIMiddleware: a WSGI app as an ASGI 3 application, served by any ASGI server.

    from wsgipool.asgi import WSGIMiddleware
    from wsgipool import ProcessExecutor

    app = WSGIMiddleware(wsgi_app)                                   # threads, like a2wsgi
    app = WSGIMiddleware(wsgi_app, executor=ProcessExecutor(workers=4, threads=4))

This module is the ASGI edge and nothing more: the request's facts are read from
the scope, the body from ``receive``; spooling (`body.read_stream`), the
environ (`cgi`, where the app runs), the executors and the `Exchange` they feed
are the ones the aiohttp handler uses, and so are the response rules
(`relay.relay`): this module's `_Sink` only turns its steps into
``http.response.*`` messages.  Credit is granted back only once the ASGI
server's ``send`` has returned: a slow client makes the app wait, not memory grow.

``lifespan`` starts and stops a process pool when this is the top-level app;
mounted inside another ASGI app, use `WSGIMiddleware.lifespan` as (or inside)
that app's lifespan context manager.  WebSocket connections are refused (a WSGI
app cannot take one), and any other scope type is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes

from wsgipool import exchange as ev
from wsgipool.backends import check_keywords, place
from wsgipool.body import EMPTY as EMPTY_BODY
from wsgipool.body import Body, BodyTooLarge, read_stream
from wsgipool.cgi import EnvironOptions
from wsgipool.environ import Collected
from wsgipool.ratelog import RateLimitedLog
from wsgipool.relay import GONE, Head, file_pieces, relay
from wsgipool.retry import first_event
from wsgipool.threaded import ThreadBackend

if TYPE_CHECKING:
    from wsgipool.executor import ProcessExecutor

__all__ = ["ResponseCut", "WSGIMiddleware", "WsgiToAsgi"]

logger = logging.getLogger("wsgipool.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds between looks at the requests in flight (see `_DisconnectWatch`).
_WATCH_INTERVAL = 0.5
_REASONS = {
    400: "Bad Request",
    413: "Payload Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Characters a path may carry unquoted (RFC 3986 pchar and "/").
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class ResponseCut(Exception):
    """The response cannot be completed after its head went out (app failed, short body).

    Raised to the ASGI server, which then closes the connection: the client
    sees a broken response, never a wrong one.
    """


class _ClientGone(Exception):
    pass


class WSGIMiddleware:
    """An ASGI 3 application that runs `application`, a WSGI app, a PEP 3333 environ per request.

    `application` is a WSGI callable or an import string ("pkg.module:app").
    `executor` decides where it runs: None runs it in the event loop's default
    executor (threads of the ASGI server's process); `workers=N` gives it a
    pool of N threads of its own instead; a `wsgipool.ProcessExecutor` runs it
    in supervised worker processes.  `max_request_body_size` bytes at most are
    accepted (413 beyond); bodies over `inbuf_overflow` bytes are spooled to a
    temporary file.  `url_scheme` overrides the scope's scheme;
    `forwarded_allow_ips` are the peers whose X-Forwarded-For/-Proto count.
    """

    def __init__(
        self,
        application: Callable[..., Any] | str,
        *,
        executor: Executor | ProcessExecutor | None = None,
        workers: int | None = None,
        max_request_body_size: int = 1073741824,
        inbuf_overflow: int = 524288,
        url_scheme: str | None = None,
        forwarded_allow_ips: Iterable[str] = ("127.0.0.1", "::1"),
        stderr: IO[str] | None = None,
        duplicate_header_limit: int | None = 100,
    ) -> None:
        check_keywords(inbuf_overflow, max_request_body_size, url_scheme)
        if duplicate_header_limit is not None and (
            isinstance(duplicate_header_limit, bool)
            or not isinstance(duplicate_header_limit, int)
            or duplicate_header_limit < 0
        ):
            got = repr(duplicate_header_limit)
            raise ValueError(f"duplicate_header_limit must be an int >= 0 or None, got {got}")
        # asgiref's keyword and default: more values of one header than this is a 400
        # (asgiref raises, a 500); 0 or None: no limit.
        self._duplicate_limit = duplicate_header_limit or 0
        if workers is not None:
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                raise ValueError(f"workers must be an int >= 1, got {workers!r}")
            if executor is not None:
                raise ValueError("pass either executor or workers (threads), not both")

        self._max_body = max_request_body_size
        options = EnvironOptions(url_scheme, tuple(forwarded_allow_ips), "")
        self._own_threads: ThreadPoolExecutor | None = None
        self._threads_stopped = False  # shut down by a lifespan's end; startup makes anew
        self._workers = workers or 0  # own threads' count, for a pool made anew
        if workers is not None:
            executor = self._own_threads = _own_pool(workers)
        self._executor = executor
        self._unavailable_log = RateLimitedLog(logger, logging.WARNING)
        placement = place(application, executor, options, inbuf_overflow, stderr)
        self._backend = placement.backend
        self._memory_limit = placement.memory_limit
        self._in_process = placement.in_process
        self._retry_methods = placement.retry_methods  # None: never
        self._watch = _DisconnectWatch()

    @property
    def executor(self) -> Executor | ProcessExecutor | None:
        return self._executor

    # -- lifecycle --------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the process pool, if there is one (its app is imported now); after a
        shutdown (a second lifespan: a test client per test), start it again."""
        if self._own_threads is not None and self._threads_stopped:
            threads = self._own_threads = _own_pool(self._workers)
            self._executor = threads
            self._backend.executor = threads  # type: ignore[union-attr]
            self._threads_stopped = False
        start = getattr(self._backend, "start", None)
        if start is not None:
            await start()

    async def shutdown(self) -> None:
        """Let the workers finish their requests and stop them; release own threads."""
        stop = getattr(self._backend, "shutdown", None)
        if stop is not None:
            await stop()
        if self._own_threads is not None:
            self._own_threads.shutdown(wait=False)
            self._threads_stopped = True

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """The pool's lifetime when mounted: ``Starlette(lifespan=wsgi.lifespan)``,
        or ``async with wsgi.lifespan():`` inside the outer app's own lifespan."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # Refused before accept(): the server answers the handshake with 403.
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
        else:
            raise ValueError(f"wsgipool.asgi: a WSGI app cannot serve a {kind!r} scope")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", ())
        if type(headers) is not list:  # uvicorn and Hypercorn give a list of bytes pairs
            headers = [(bytes(name), bytes(value)) for name, value in headers]
        limit = self._duplicate_limit
        if limit and len(headers) > limit and _most_repeated(headers) > limit:
            await _send_error(send, 400, close=True)
            return
        declared, chunked = _framing(headers)
        if declared is not None and declared > self._max_body:
            await _send_error(send, 413, close=True)
            return
        try:
            body = await self._read_body(receive)
        except BodyTooLarge:
            await _send_error(send, 413, close=True)
            return
        except _ClientGone:
            return
        # No body and none announced: no CONTENT_LENGTH, as under the aiohttp frontend.
        length = body.length if body.length or declared is not None or chunked else None
        collected = collect_scope(scope, headers, length)
        extras: dict[str, Any] | None = None
        if self._in_process:
            extras = {"asgi.scope": scope}  # a live object: thread mode only
        backend = self._backend
        # A request that may run again if its worker dies keeps its body until then.
        retry_methods = self._retry_methods
        retrying = retry_methods is not None and collected.method.decode("latin-1") in retry_methods
        try:
            if retrying and not isinstance(backend, ThreadBackend):
                exchange = backend.submit_now(collected, body, None, False, keep_body=True)
                if exchange is None:
                    exchange = await backend.submit(collected, body, None, False, keep_body=True)
            else:
                exchange = backend.submit_now(collected, body, extras, False)
                if exchange is None:  # no free worker thread: wait in the queue
                    exchange = await backend.submit(collected, body, extras, False)
        except ev.Unavailable as exc:
            body.close()
            self._unavailable_log.record(f"{_request_line(collected)}: 503, {exc}")
            await _send_error(send, 503, retry_after=1)
            return
        finally:
            if not retrying:
                body.close()  # the executor has what it needs of it by now (or never will)
        flight = _InFlight(exchange, receive)
        watch = self._watch
        watch.add(flight)
        try:
            if retrying and not isinstance(backend, ThreadBackend):
                try:
                    exchange = await first_event(backend, exchange, body, False, flight.switch)
                finally:
                    body.close()
            await _write_response(send, exchange, collected, scope.get("method") == "HEAD")
        except ResponseCut:
            if flight.gone:
                return  # the client left: there is nobody to tell
            raise
        finally:
            watch.discard(flight)
            exchange.close()

    async def _read_body(self, receive: Receive) -> Body:
        """The request body from ``receive``; one message (most requests) without a loop."""
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            chunk = message.get("body") or b""
            size = len(chunk)
            if not size:
                return EMPTY_BODY
            if size > self._max_body:
                raise BodyTooLarge(self._max_body)
            if size <= self._memory_limit:
                return Body([bytes(chunk)], length=size)
        reader = _BodyReader(receive, message)
        return await read_stream(reader.readany, self._memory_limit, self._max_body)


WsgiToAsgi = WSGIMiddleware  # asgiref's name


class _BodyReader:
    """``receive`` as the `read_stream` readany: the body's pieces, b"" at its end.

    `first` is a message already received.
    """

    __slots__ = ("done", "first", "receive")

    def __init__(self, receive: Receive, first: Message | None = None) -> None:
        self.receive = receive
        self.first = first
        self.done = False

    async def readany(self) -> bytes:
        while not self.done:
            message = self.first
            if message is None:
                message = await self.receive()
            else:
                self.first = None
            kind = message["type"]
            if kind == "http.disconnect":
                raise _ClientGone
            if kind != "http.request":
                continue
            if not message.get("more_body", False):
                self.done = True
            chunk = message.get("body", b"")
            if chunk:
                return bytes(chunk)
        return b""


class _InFlight:
    """A request whose response is being written, as the disconnect watch sees it."""

    __slots__ = ("exchange", "gone", "receive", "task")

    def __init__(self, exchange: ev.Exchange, receive: Receive) -> None:
        self.exchange = exchange  # a retry replaces it
        self.receive = receive
        self.task: asyncio.Task[None] | None = None
        #: ``http.disconnect`` arrived: the client left.
        self.gone = False

    def switch(self, _old: ev.Exchange, new: ev.Exchange) -> None:
        self.exchange = new

    async def wait_for_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        self.exchange.abort(GONE, "client disconnected")


class _DisconnectWatch:
    """Stops the app (its close() is called) when its client leaves mid-request.

    ASGI servers return from ``send`` quietly once the client is gone, so the
    only sign of it is ``http.disconnect`` from ``receive``, which only a task
    waiting in ``receive`` sees.  A task per request would cost every request
    a task, its cancellation and the server's wake-up; so a sweep every
    `_WATCH_INTERVAL` seconds starts one only for the requests still running
    (as the aiohttp frontend's watch looks at its connections every half
    second): a client that leaves is noticed within about a second.
    """

    __slots__ = ("_loop", "_new", "_timer")

    def __init__(self) -> None:
        self._new: set[_InFlight] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, flight: _InFlight) -> None:
        self._new.add(flight)
        loop = flight.exchange.loop
        if self._timer is None or self._loop is not loop:  # (a new loop: tests, reloads)
            self._loop = loop
            self._timer = loop.call_later(_WATCH_INTERVAL, self._sweep)

    def discard(self, flight: _InFlight) -> None:
        self._new.discard(flight)
        task = flight.task
        if task is not None:
            task.cancel()

    def _sweep(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or not self._new:
            return
        for flight in self._new:
            flight.task = loop.create_task(flight.wait_for_disconnect())
        self._new.clear()


def collect_scope(
    scope: Scope, headers: list[tuple[bytes, bytes]], content_length: int | None
) -> Collected:
    """The request facts (protocol.REQUEST_FIELDS) of an ASGI HTTP scope.

    The target is ``raw_path`` as received (its bytes read as latin-1 by
    `cgi.build_environ`), with the query string, unless an ASGI middleware
    rewrote ``path`` (then ``path``, as a2wsgi and asgiref take it); ``root_path``
    becomes the prefix that SCRIPT_NAME takes, whether the server left it in the
    path (the ASGI spec, Starlette's Mount) or took it out (then it is put back).
    """
    root = str(scope.get("root_path") or "").rstrip("/")
    prefix = root.encode("utf-8")
    raw = scope.get("raw_path")
    text = scope.get("path")
    if isinstance(raw, bytes | bytearray) and isinstance(text, str):
        if not _agrees(bytes(raw).partition(b"?")[0], text, prefix):
            raw = None  # a middleware rewrote the path (raw_path stays as received): its path
    if not isinstance(raw, bytes | bytearray):
        raw = quote(text or "/", safe=_PATH_SAFE).encode("ascii")
    path = bytes(raw).partition(b"?")[0] or b"/"
    if prefix:
        decoded = unquote_to_bytes(path) if b"%" in path else path
        size = len(prefix)
        if not (decoded.startswith(prefix) and (len(decoded) == size or decoded[size] == 0x2F)):
            path = quote(root, safe=_PATH_SAFE).encode("ascii") + path
    query = scope.get("query_string") or b""
    target = path + b"?" + bytes(query) if query else path
    scheme = b"https" if scope.get("scheme") in ("https", "wss") else b"http"
    server = scope.get("server")
    client = scope.get("client")
    if server is None:  # PEP 3333 requires both; Hypercorn on a unix socket gives none
        server_name, server_port = b"localhost", b"443" if scheme == b"https" else b"80"
    else:
        server_name, server_port = _address(server)
    remote_addr, remote_port = _address(client)
    if client is None and (server is None or server_name == b"unix"):
        # The peer of a unix socket has no address (uvicorn --uds, Hypercorn unix:):
        # "unix", as wsgipool's own frontend says, which --forwarded-allow-ips can name.
        remote_addr = b"unix"
    fields = [
        str(scope.get("method", "GET")).encode("latin-1"),
        target,
        str(scope.get("http_version", "1.1")).encode("latin-1"),
        scheme,
        server_name,
        server_port,
        remote_addr,
        remote_port,
        prefix,
        b"" if content_length is None else b"%d" % content_length,  # None: no body at all
    ]
    return Collected(fields, headers, True)


def _own_pool(workers: int) -> ThreadPoolExecutor:
    """`workers=N`: the adapter's own threads."""
    return ThreadPoolExecutor(workers, thread_name_prefix="wsgipool-asgi")


def _agrees(raw_path: bytes, path: str, prefix: bytes) -> bool:
    """Whether the scope's ``raw_path`` is its ``path`` as received, with or without the
    root path (servers differ on whether ``path`` holds it)."""
    decoded = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
    wanted = path.encode("utf-8", "surrogateescape")
    if decoded == wanted:
        return True
    return bool(prefix) and (prefix + decoded == wanted or decoded == prefix + wanted)


def _address(address: object) -> tuple[bytes, bytes]:
    """(host, port) of a scope's server or client; a unix socket reads as ("unix", path)."""
    if isinstance(address, list | tuple) and len(address) == 2:
        host, port = address
        if port is None:
            return b"unix", str(host).encode("latin-1", "replace")
        text = str(host)
        if text.startswith("::ffff:") and "." in text:  # an IPv4 client on a dual-stack socket
            text = text[7:]
        return text.encode("latin-1", "replace"), str(port).encode("latin-1")
    return b"", b""


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The Content-Length a request declares, and whether it has a Transfer-Encoding."""
    declared: int | None = None
    chunked = False
    for name, value in headers:
        size = len(name)
        if size == 14 and name.lower() == b"content-length" and value.strip().isdigit():
            declared = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            chunked = True
    return declared, chunked


def _most_repeated(headers: list[tuple[bytes, bytes]]) -> int:
    """How many times the most repeated header name (in any case) appears."""
    counts: dict[bytes, int] = {}
    for name, _value in headers:
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values(), default=0)


async def _send_error(
    send: Send, status: int, *, close: bool = False, retry_after: int | None = None
) -> None:
    body = f"{status} {_REASONS.get(status, 'Error')}\n".encode("ascii")
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_after))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _asgi_headers(headers: list[tuple[str, str]], length: int | None) -> list[tuple[bytes, bytes]]:
    out = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    return out


async def _write_response(
    send: Send, exchange: ev.Exchange, collected: Collected, head_only: bool
) -> None:
    event = await exchange.next()
    if event[0] == ev.TAKEOVER:  # only asked for when offered (raw heads): never here
        exchange.backend.decline(exchange)  # type: ignore[attr-defined]
        event = await exchange.next()
    await relay(exchange, _Sink(send, collected), event, head_only)


class _Sink:
    """relay.py's steps as ``http.response.*`` messages.

    ``send`` returns once the server has taken the message (uvicorn and
    Hypercorn wait while the client's socket is full): that is the backpressure
    `relay` grants credit by.  A cut is `ResponseCut` raised to the server.
    """

    __slots__ = ("collected", "send")

    names_server = False  # the ASGI server names itself

    def __init__(self, send: Send, collected: Collected) -> None:
        self.send = send
        self.collected = collected

    def label(self) -> str:
        return _request_line(self.collected)

    async def error(self, status: int) -> None:
        if status != GONE:  # a client that left has nobody to tell
            await _send_error(self.send, status, retry_after=1 if status == 503 else None)

    async def whole(self, head: Head, body: bytes) -> None:
        send = self.send
        headers = _asgi_headers(head.headers, head.length)
        await send({"type": "http.response.start", "status": head.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def start(self, head: Head) -> None:
        headers = _asgi_headers(head.headers, head.length)
        await self.send({"type": "http.response.start", "status": head.status, "headers": headers})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        """The descriptor's bytes as body messages, read off the loop one chunk at a time."""
        sent = 0
        async for chunk in file_pieces(fd, offset, count):
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        return sent

    async def finish(self) -> None:
        await self.send({"type": "http.response.body", "body": b""})

    async def cut(self, reason: str) -> None:
        raise ResponseCut(f"{self.label()}: {reason}")


_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def _request_line(collected: Collected) -> str:
    """ "METHOD /target" for a log line, control characters escaped."""
    return collected.request_line().translate(_ESCAPES)
