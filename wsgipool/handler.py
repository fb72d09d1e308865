"""WSGIHandler: the aiohttp handler that runs a WSGI app, a drop-in for aiohttp-wsgi's.

    handler = WSGIHandler(app)                                         # threads
    handler = WSGIHandler(app, executor=ProcessExecutor(workers=4))    # processes
    aiohttp_app.router.add_route("*", "/{path_info:.*}", handler)

The handler reads the body, builds the environ, hands both to the executor and
writes what comes back.  Where the app runs is the executor's business alone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from aiohttp import web

from wsgipool import exchange as ev
from wsgipool.backends import check_keywords, place
from wsgipool.body import EMPTY as EMPTY_BODY
from wsgipool.body import Body, BodyTooLarge, read_body
from wsgipool.cgi import EnvironOptions
from wsgipool.config import parse_duration
from wsgipool.deadlines import BodyTimeout, Sending, SendWatch
from wsgipool.environ import collect
from wsgipool.exchange import Unavailable
from wsgipool.fastpath import adopt, client_socket
from wsgipool.logs.access import note_worker
from wsgipool.logs.escape import escape
from wsgipool.ratelog import RateLimitedLog
from wsgipool.response import error_response, sent_later, write_response
from wsgipool.retry import first_event
from wsgipool.threaded import ThreadBackend
from wsgipool.wire import refuse

if TYPE_CHECKING:
    from wsgipool.executor import ProcessExecutor

__all__ = ["WSGIHandler"]

logger = logging.getLogger("wsgipool.handler")

_WATCH_INTERVAL = 0.5


class WSGIHandler:
    """An aiohttp handler running a WSGI application; aiohttp-wsgi's keywords and defaults.

    `application` is a WSGI callable or an import string ("pkg.module:app").
    `executor` decides where the app runs: None (the event loop's default
    executor) or any thread-based `concurrent.futures.Executor` runs it in this
    process; a `wsgipool.ProcessExecutor` runs it in supervised worker processes.
    `script_name` mounts the app under a prefix when the handler is used without
    a router (aiohttp's low-level server); on a router, the route decides.
    `watch_disconnects` polls for clients that left while their app runs; a
    server run with aiohttp's ``handler_cancellation`` (as `serve()` is) does not
    need it: the handler is cancelled instead.
    `send_timeout` cuts a client that accepts no response bytes for that many
    seconds (the app's iterable is closed); `body_timeout` answers 408 to a
    request body that makes no progress for that long. None disables either.
    """

    def __init__(
        self,
        application: Callable[..., Any] | str,
        *,
        url_scheme: str | None = None,
        stderr: IO[str] | None = None,
        inbuf_overflow: int = 524288,
        max_request_body_size: int = 1073741824,
        executor: Executor | ProcessExecutor | None = None,
        forwarded_allow_ips: Iterable[str] = ("127.0.0.1", "::1"),
        script_name: str = "",
        watch_disconnects: bool = True,
        send_timeout: float | None = 60.0,
        body_timeout: float | None = 60.0,
    ) -> None:
        check_keywords(inbuf_overflow, max_request_body_size, url_scheme)
        send_timeout = _deadline("send_timeout", send_timeout)
        self._body_timeout = _deadline("body_timeout", body_timeout)
        if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+: what aiohttp checks there
            inspect.markcoroutinefunction(self)
        self._max_body = max_request_body_size
        options = EnvironOptions(url_scheme, tuple(forwarded_allow_ips), script_name)
        self._executor = executor
        self._watch = _DisconnectWatch() if watch_disconnects else None
        self._sends = SendWatch(send_timeout) if send_timeout is not None else None
        #: The send deadline in seconds (None: none), for the fast lane's own writes.
        self.send_timeout = send_timeout
        self._unavailable_log = RateLimitedLog(logger, logging.WARNING)
        placement = place(application, executor, options, inbuf_overflow, stderr)
        self._backend = placement.backend
        self._memory_limit = placement.memory_limit
        self._in_process = placement.in_process
        self._retry_methods = placement.retry_methods  # None: never

    @property
    def executor(self) -> Executor | ProcessExecutor | None:
        return self._executor

    @property
    def inline_body_limit(self) -> int:
        """The largest body sent to a worker in memory, not spooled (nor refused: 413)."""
        return min(self._memory_limit, self._max_body)

    @property
    def retry_methods(self) -> frozenset[str] | None:
        """Methods whose requests run again if their worker dies (None: never)."""
        return self._retry_methods

    def limit_queue(self, threads: int, queue_size: int, queue_timeout: float) -> None:
        """Thread mode: run at most `threads` requests at once (the executor's threads);
        at most `queue_size` wait, each at most `queue_timeout` seconds, others get 503.

        Process mode has its own queue (`ProcessExecutor`'s queue_size, queue_timeout).
        """
        if not isinstance(self._backend, ThreadBackend):
            raise TypeError("limit_queue() is for thread mode; ProcessExecutor has its own queue")
        self._backend.bound(threads, queue_size, queue_timeout)

    async def handle_request(self, request: web.BaseRequest) -> web.StreamResponse:
        handed = adopt(request.protocol, request._message)
        if handed is not None:  # the fast lane's, handed back: submitted, or refused
            if handed.exchange is None:
                return self._unavailable(request, handed.unavailable)
            return await self._respond(request, handed.exchange, handed.body, handed.retrying)
        refusal = refuse(request)  # no worker or app may see these
        if refusal is not None:
            return refusal
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            return error_response(413, close=True)
        # No router: aiohttp's low-level server. (A type check, not isinstance: requests
        # are MutableMappings, and isinstance() against those is ten times slower.)
        routed = type(request) is not web.BaseRequest
        if "Expect" in request.headers and not routed:
            # No router ran an expect handler (aiohttp's low-level server): answer it here.
            refusal = await _answer_expect(request)
            if refusal is not None:
                return refusal
        if request.body_exists:
            try:
                body = await read_body(
                    request, self._memory_limit, self._max_body, self._body_timeout
                )
            except BodyTooLarge:
                return error_response(413, close=True)
            except BodyTimeout as exc:
                logger.info("408 for %s: %s (--body-timeout)", request.remote, exc)
                return await _answer_and_close(request, error_response(408, close=True))
        else:
            body = EMPTY_BODY
        collected = collect(request, body.length)
        extras: dict[str, Any] | None = None
        if self._in_process:
            extras = {"aiohttp.request": request, "asyncio.executor": self._executor}
        # Without a router there are no on_response_prepare hooks to honour, so a
        # worker may send a whole response with its head already serialised.
        raw_ok = not routed
        backend = self._backend
        # A request that may run again if its worker dies keeps its body until then.
        retrying = self._retry_methods is not None and request.method in self._retry_methods
        try:
            if retrying:
                assert not isinstance(backend, ThreadBackend)
                exchange = backend.submit_now(collected, body, None, raw_ok, keep_body=True)
                if exchange is None:
                    exchange = await backend.submit(collected, body, None, raw_ok, keep_body=True)
            elif raw_ok and not self._in_process:
                # The worker may write a whole response to the client socket itself.
                assert not isinstance(backend, ThreadBackend)
                client = partial(client_socket, request.protocol, request.transport)
                exchange = backend.submit_now(collected, body, None, raw_ok, client_fd=client())
                if exchange is None:
                    exchange = await backend.submit(
                        collected, body, None, raw_ok, client_socket=client
                    )
            else:
                exchange = backend.submit_now(collected, body, extras, raw_ok)
                if exchange is None:  # no free worker thread: wait in the queue
                    exchange = await backend.submit(collected, body, extras, raw_ok)
        except Unavailable as exc:
            body.close()
            return self._unavailable(request, str(exc))
        return await self._respond(request, exchange, body, retrying)

    def _unavailable(self, request: web.BaseRequest, reason: str) -> web.StreamResponse:
        self._unavailable_log.record(
            f"{escape(request.method)} {escape(request.path)}: 503, {reason}"
        )
        return error_response(503, retry_after=1)

    async def _respond(
        self, request: web.BaseRequest, exchange: ev.Exchange, body: Body, retrying: bool
    ) -> web.StreamResponse:
        """The response to a request handed to `exchange`; `body` kept if `retrying`."""
        backend = self._backend
        raw_ok = type(request) is web.BaseRequest
        watch = self._watch
        if watch is not None:
            watch.add(exchange, request)
        sending: Sending | None = None
        released = False
        try:
            if retrying:
                assert not isinstance(backend, ThreadBackend)
                try:
                    switch = watch.switch if watch is not None else _unwatched
                    exchange = await first_event(backend, exchange, body, raw_ok, switch)
                finally:
                    body.close()
            sends = self._sends
            sending = sends.watch(request, exchange) if sends is not None else None
            response = await write_response(request, exchange, sending)
            if sending is not None:
                # A whole response is written by aiohttp after we return: the deadline
                # keeps watching until it is.
                released = sent_later(response, sending.release)
            return response
        finally:
            note_worker(request, exchange)
            if sending is not None and not released:
                sending.release()
            if watch is not None:
                watch.discard(exchange)
            exchange.close()

    __call__ = handle_request
    # aiohttp checks handlers with asyncio.iscoroutinefunction(), which does not
    # look through an instance's __call__; this marker says it is a coroutine.
    _is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)


async def _answer_and_close(
    request: web.BaseRequest, response: web.StreamResponse
) -> web.StreamResponse:
    """Send `response`, then close: aiohttp would otherwise wait (its lingering time,
    10 s) for the rest of a body the client has stopped sending."""
    await response.prepare(request)
    await response.write_eof()
    transport = request.transport
    if transport is not None:
        transport.close()
    return response


def _deadline(name: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if seconds <= 0:
        raise ValueError(f"{name} must be more than 0 seconds (None disables it), got {value!r}")
    return seconds


async def _answer_expect(request: web.BaseRequest) -> web.StreamResponse | None:
    """``Expect: 100-continue`` gets its interim response; any other expectation 417."""
    if request.version != (1, 1):
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, close=True)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the response proper has not started
    return None


def _unwatched(_old: ev.Exchange, _new: ev.Exchange) -> None:
    """A retry replaced the exchange of a request that no disconnect watch follows."""


class _DisconnectWatch:
    """Notices clients that went away while their app is still running.

    aiohttp does not cancel handlers on disconnect by default, and an app that
    is thinking writes nothing that could fail; so every half second the
    connections of running requests are looked at, and a gone client stops its
    app (the iterable's close() is called) within a second.
    """

    def __init__(self) -> None:
        self._active: dict[ev.Exchange, web.BaseRequest] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: ev.Exchange, request: web.BaseRequest) -> None:
        self._active[exchange] = request
        if self._timer is None:
            self._timer = exchange.loop.call_later(_WATCH_INTERVAL, self._check, exchange.loop)

    def discard(self, exchange: ev.Exchange) -> None:
        self._active.pop(exchange, None)

    def switch(self, old: ev.Exchange, new: ev.Exchange) -> None:
        """A retry replaced the request's exchange: watch the new one instead."""
        request = self._active.pop(old, None)
        if request is not None:
            self.add(new, request)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        for exchange, request in list(self._active.items()):
            transport = request.transport
            if transport is None or transport.is_closing():
                del self._active[exchange]
                exchange.abort(499, "client disconnected")
        if self._active:
            self._timer = loop.call_later(_WATCH_INTERVAL, self._check, loop)
