"""The common request without aiohttp's per-request machinery: a lane beside it.

Most requests a WSGI server sees are a GET or HEAD without a body, on an idle
keep-alive connection, answered with a small whole response (a RAW frame: the
worker serialised its head).  For those, aiohttp's request path (a task per
request, request, writer and response objects, the handler's coroutines and
their futures) is most of what the main process spends.  `serve()` without
static routes gives its connections (limits.py's request handler) a
`FastLane`; then such a request is:

1. parsed by aiohttp's own parser, as every request (data_received);
2. checked here (`eligible`): HTTP/1.1 or 1.0, no Expect, no Upgrade, no
   Transfer-Encoding, the connection idle (nothing else in progress or queued
   on it), and either a GET or HEAD without a body, or a POST, PUT, PATCH,
   DELETE or OPTIONS whose body (by Content-Length, at most `BODY_MAX` and
   the handler's in-memory limit) arrived whole with its head: its chunks are
   taken from aiohttp's reader without consuming them;
3. handed to a worker only if a worker thread is free right now
   (`ProcessExecutor.submit_now`), with the same facts `WSGIHandler` sends;
4. answered from the exchange's listener when its first event arrives: a RAW
   response of at most `MAX_BYTES`, to a client that has nothing unsent
   waiting, is written to the transport as is.

Anything else leaves the lane, and nothing is lost or done twice: before step 3
the message is simply left to aiohttp (the connection's task is woken as
usual); after it (any other first event: a streamed or large response, an
error, a worker that died, a timeout, TAKEOVER) the message is put back at the
head of the connection's queue with its exchange, and `WSGIHandler` adopts the
exchange instead of submitting again (`adopt`), so retries, 502/504, streaming
and the send deadline are the handler's as always.  Requests pipelined behind
a fast one wait in the connection's queue until it is answered and are then
served by aiohttp in order.  The connection stays aiohttp's: keep-alive
timeout, head deadline, graceful shutdown (a fast request counts as a request
in progress) and client disconnects (the exchange is closed, the worker told
to stop) behave as on the aiohttp path.

With the access log on, the lane writes the access line of each request it
answers through the connection's `AccessLogger` (`AccessLogger.write`), from
stand-ins for aiohttp's request and response that carry what the atoms read:
the line is the one the handler's path writes.

With ``--metrics-bind`` the lane counts its requests in the same `RequestStats`
as the handler's wrapper (metrics/requests.py): in flight while on the lane,
then answered (by status class) or aborted; a request handed back is counted by
the wrapper, from the moment the lane took it (`HandedBack.started`).  Requests
for ``--health-path`` never take the lane: the main process answers them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD

from wsgipool import exchange as ev
from wsgipool.body import EMPTY as EMPTY_BODY
from wsgipool.body import Body
from wsgipool.clientsock import AGAIN, ANSWERED, queued, reset_on_close, whole_write_outcome
from wsgipool.deadlines import shut_down, sweep_interval
from wsgipool.environ import Collected, collect_message, connection_of
from wsgipool.logs.access import GONE_RESPONSE, AccessLogger, StandInResponse
from wsgipool.logs.atoms import RequestRecord
from wsgipool.logs.escape import escape
from wsgipool.worker.head import connection_line

if TYPE_CHECKING:
    from wsgipool.executor import ProcessExecutor
    from wsgipool.handler import WSGIHandler
    from wsgipool.metrics.requests import RequestStats

__all__ = ["MAX_BYTES", "UNKNOWN", "FastLane", "client_socket"]

logger = logging.getLogger("wsgipool.handler")

#: The largest whole response written from the lane: well under the transport's
#: high-water mark, so the write never pauses and no send deadline is needed.
MAX_BYTES: Final = 16 * 1024

_METHODS: Final = frozenset(("GET", "HEAD"))
#: Methods whose requests take the lane with a body that arrived whole with the head.
_BODY_METHODS: Final = frozenset(("POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
#: The largest body the lane takes: aiohttp's body reader pauses the transport past twice
#: its read buffer (64 KiB), and only reading the body resumes it; the lane leaves its
#: reader as it is (the request may yet be aiohttp's), so it stays under that.
BODY_MAX: Final = 64 * 1024
_VERSIONS: Final = (HttpVersion11, HttpVersion10)
_RAW: Final = ev.RAW
_DONE: Final = ev.DONE
#: A connection's `client_fd` before the lane first looks at its transport.
UNKNOWN: Final = -2
#: Seconds a worker holding the client socket has to read the CANCEL of a request
#: the main process answers itself (a timeout) before that answer is written.
SETTLE_GRACE: Final = 1.0
_clock = time.perf_counter


class FastLane:
    """What a server's connections need to serve requests on the lane."""

    __slots__ = ("body_limit", "executor", "health", "retry_methods", "send_timeout", "stats")

    def __init__(
        self,
        executor: ProcessExecutor,
        retry_methods: frozenset[str] | None,
        stats: RequestStats | None = None,
        health: str | None = None,
        send_timeout: float | None = None,
        body_limit: int = 0,
    ) -> None:
        self.executor = executor
        self.retry_methods = retry_methods
        self.stats = stats  # --metrics-bind's request counters
        self.health = health  # --health-path: its requests stay the main process's
        self.send_timeout = send_timeout  # for the rest of a whole write (`_write_rest`)
        # The largest body the lane takes (one that arrived whole with its head).
        self.body_limit = min(body_limit, BODY_MAX)

    @classmethod
    def of(
        cls, handler: WSGIHandler, stats: RequestStats | None = None, health: str | None = None
    ) -> FastLane | None:
        """The lane for `handler`'s requests, or None if they run in threads of this process."""
        from wsgipool.executor import ProcessExecutor

        executor = handler.executor
        if not isinstance(executor, ProcessExecutor):
            return None
        return cls(
            executor,
            handler.retry_methods,
            stats,
            health,
            handler.send_timeout,
            handler.inline_body_limit,
        )


def eligible(message: Any, payload: Any, body_limit: int) -> Body | None:
    """The body of a request the lane may take (see the module's docstring), or None."""
    if type(message) is not RawRequestMessage or message.upgrade:
        return None
    version = message.version
    if version not in _VERSIONS:
        return None
    headers = message.headers
    if "Expect" in headers or "Transfer-Encoding" in headers:
        return None
    method = message.method
    if payload is EMPTY_PAYLOAD:
        return EMPTY_BODY if method in _METHODS or method in _BODY_METHODS else None
    if method not in _BODY_METHODS or not payload.is_eof() or payload.exception() is not None:
        return None  # a body still arriving (its deadline is the handler's), or a bad one
    # The body arrived with its head (aiohttp's reader holds it): the chunks are read
    # without consuming them, so a request the lane then leaves is aiohttp's intact.
    chunks = getattr(payload, "_buffer", None)
    length = payload.total_bytes
    if chunks is None or length > body_limit or sum(map(len, chunks)) != length:
        return None
    return Body(list(chunks), None, length)


class OnLane:
    """A request on the lane: queued for a worker thread, then in flight."""

    __slots__ = (
        "body",
        "collected",
        "direct",
        "exchange",
        "granted",
        "message",
        "queued_at",
        "retrying",
        "started",
    )

    def __init__(self, message: Any, collected: Collected, body: Body, retrying: bool) -> None:
        self.message = message
        self.collected = collected
        self.body = body  # in memory: kept until the request is done, to run it again
        self.retrying = retrying
        self.exchange: ev.Exchange | None = None
        self.granted: asyncio.Future[Any] | None = None  # its place in the queue
        self.queued_at = 0.0
        self.started = 0.0  # perf_counter() when the lane took it (metrics, access log)
        self.direct = False  # its worker was sent the client socket (worker/whole.py)


class HandedBack:
    """A lane's request left to `WSGIHandler`: its exchange, or why it has none (503)."""

    __slots__ = ("body", "exchange", "message", "retrying", "started", "unavailable")

    def __init__(
        self,
        message: Any,
        exchange: ev.Exchange | None,
        retrying: bool,
        unavailable: str = "",
        started: float = 0.0,
        body: Body = EMPTY_BODY,
    ) -> None:
        self.message = message
        self.body = body  # what a retry sends again
        self.exchange = exchange
        self.retrying = retrying
        self.unavailable = unavailable
        self.started = started  # when the lane took it: the metrics' duration starts there


def try_start(protocol: Any, lane: FastLane) -> bool:
    """Take the first queued message of `protocol` onto the lane; False: leave it to aiohttp."""
    message, payload = protocol._messages[0]
    body = eligible(message, payload, lane.body_limit)
    if body is None or (body.length and protocol._reading_paused):
        return False  # (paused by the body's reader: only aiohttp's reading resumes it)
    health = lane.health
    if health is not None and message.path.startswith(health):
        return False  # --health-path: answered by the main process, on aiohttp's path
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return False
    method = message.method
    retry_methods = lane.retry_methods
    retrying = retry_methods is not None and method in retry_methods
    collected = collect_message(message, connection_of(protocol, transport), body.length)
    executor = lane.executor
    client_fd = client_socket(protocol, transport)
    # keep_body: a body in memory has nothing to close, and a retry may send it again.
    exchange = executor.submit_now(collected, body, None, True, keep_body=True, client_fd=client_fd)
    request = OnLane(message, collected, body, retrying)
    if exchange is None:  # no free worker thread: wait in the queue, as the handler would
        loop = protocol._loop
        granted = executor.enqueue(loop)
        if granted is None:  # queue full (503) or no pool: the handler's business
            return False
        request.granted = granted
        request.queued_at = loop.time()
        granted.add_done_callback(protocol.fast_granted)
    else:
        request.exchange = exchange
        request.direct = client_fd >= 0
        exchange.listen(protocol.fast_event)
    stats = lane.stats
    if stats is not None:
        stats.in_flight += 1
    if stats is not None or protocol.access_logger is not None:
        request.started = _clock()  # the metrics' and the access line's duration
    protocol._messages.popleft()
    protocol.fast = request
    protocol._request_in_progress = True  # a graceful shutdown waits for it
    manager = protocol._manager
    if manager is not None:
        manager.requests_count += 1
    return True


def on_granted(protocol: Any, lane: FastLane, granted: asyncio.Future[Any]) -> None:
    """The queue gave the lane's request a worker thread (or gave up on it: 503)."""
    request = protocol.fast
    if request is None or request.granted is not granted or granted.cancelled():
        return  # withdrawn (the client left)
    request.granted = None
    executor = lane.executor
    transport = protocol.transport
    client_fd = client_socket(protocol, transport)
    try:
        exchange = executor.submit_granted(
            granted,
            request.collected,
            request.body,
            True,
            request.queued_at,
            keep_body=True,
            client_fd=client_fd,
        )
    except ev.Unavailable as exc:
        _hand_back(protocol, lane, request, None, str(exc))
        return
    if exchange is None:  # that worker is stopping: queue again
        again = executor.enqueue(protocol._loop)
        if again is None:
            full = "the queue for a worker thread is full"
            _hand_back(protocol, lane, request, None, full)
            return
        request.granted = again
        again.add_done_callback(protocol.fast_granted)
        return
    request.exchange = exchange
    request.direct = client_fd >= 0
    exchange.listen(protocol.fast_event)


def client_socket(protocol: Any, transport: Any) -> int:
    """The client socket for the worker to write a whole response to, or -1; asked
    when the request is sent (a lane request's, or the handler's: handler.py).

    Only an open plain socket (not TLS) with nothing of ours unsent, so that the
    worker's bytes are the next the client gets; not with an access log, whose
    line wants the response head that then never passes here. A closing
    transport's descriptor may already be closed, its number another socket's.
    """
    if transport is None or transport.is_closing():
        return -1
    try:
        fd: int = protocol.client_fd  # kept by limits.py's connections
    except AttributeError:  # aiohttp's own request handler (embedded use)
        fd = UNKNOWN
    if fd == UNKNOWN:
        sock = transport.get_extra_info("socket")
        tls = transport.get_extra_info("sslcontext") is not None
        fd = -1 if sock is None or tls else sock.fileno()
        if hasattr(protocol, "client_fd"):
            protocol.client_fd = fd
    if (
        fd < 0
        or transport.get_write_buffer_size()
        or getattr(protocol, "access_logger", None) is not None
    ):
        return -1
    return fd


def on_event(protocol: Any, lane: FastLane, exchange: ev.Exchange) -> None:
    """The first event of the lane's request arrived: answer, or hand it to aiohttp."""
    request = protocol.fast
    if request is None or request.exchange is not exchange:
        return
    exchange.listen(None)
    event = exchange.peek()
    assert event is not None  # one was just fed
    kind, value = event
    transport = protocol.transport
    access = protocol.access_logger
    if (
        kind == _RAW
        and transport is not None
        and len(value[2]) <= MAX_BYTES
        and not transport.is_closing()
        and not transport.get_write_buffer_size()
        and (access is None or type(access) is AccessLogger)
    ):
        exchange.take()
        message = request.message
        keep_alive = not message.should_close
        _code, head_size, data = value
        # aiohttp's rule for the Connection header, which the worker leaves to us.
        line = connection_line("1.1" if message.version == HttpVersion11 else "1.0", keep_alive)
        if line:
            cut = head_size - 2  # before the blank line that ends the head
            data = b"".join((data[:cut], line, data[cut:]))
        transport.write(data)
        if access is not None:
            whole = value[2]
            answer = StandInResponse(_code, len(whole) - head_size, whole[:head_size])
            _log_access(access, protocol, message, exchange, answer, request.started)
        exchange.close()
        stats = lane.stats
        if stats is not None:
            stats.in_flight -= 1
            stats.answered(message.method, _code, _clock() - request.started)
        _finished(protocol, lane, keep_alive)
        return
    if request.direct and exchange.client_written and exchange.lost_to:
        # Its worker died in a whole write, after PROGRESS and before DONE (killed while
        # it waited for the GIL, say): the socket's byte count says how far it got.
        intent = exchange.intent
        outcome = whole_write_outcome(protocol.client_fd, intent)
        if outcome == AGAIN:  # none of it: the handler may run it again, as if no PROGRESS
            exchange.client_written = False
            exchange.client_released = True
        elif outcome == ANSWERED and intent is not None:
            exchange.take()
            exchange.close()
            stats = lane.stats
            if stats is not None:
                stats.in_flight -= 1
                stats.answered(request.message.method, intent[2], _clock() - request.started)
            # Its head said the keep-alive the request asked for (FLAG_KEEP_ALIVE), and
            # the dead worker's copy of the socket is closed: the connection may stay.
            _finished(protocol, lane, not request.message.should_close)
            return
        else:
            _cut(protocol, lane, request, exchange, value[1])
            return
    if request.direct and not (exchange.client_released or exchange.lost_to):
        # The worker holds the client socket, or held it to write this response.
        if kind == _DONE:  # written (worker/whole.py)
            exchange.take()
            _written, code, complete, _body, rest = value
            exchange.close()
            if rest:  # what the client's socket did not take at once (worker/whole.py)
                _write_rest(protocol, lane, rest)
            stats = lane.stats
            if stats is not None:
                stats.in_flight -= 1
                stats.answered(request.message.method, code, _clock() - request.started)
            _finished(protocol, lane, complete)
            return
        if exchange.client_written:  # it began: an answer of ours would follow its bytes
            _cut(protocol, lane, request, exchange, value[1] if kind == ev.ERROR else "")
            return
        # Our own answer (a timeout, a worker killed for breaking the protocol) while
        # the worker holds the socket. It was told to stop (CANCEL), and once it has
        # read that it writes nothing; give it the time to, then answer (or cut, if
        # it began writing after all).
        exchange.listen(None)
        protocol._loop.call_later(SETTLE_GRACE, _settle, protocol, lane, request, exchange)
        return
    # Anything else is the handler's, which adopts this exchange (WSGIHandler).
    _hand_back(protocol, lane, request, exchange)


def _write_rest(protocol: Any, lane: FastLane, rest: bytes) -> None:
    """Write the tail of a whole response the worker could not write at once.

    Up to `MAX_BYTES` it is written as a RAW answer is (the connection had nothing
    unsent); a larger tail is watched: a client that takes no bytes of it for the
    send deadline is cut, as the handler's `SendWatch` would cut it.
    """
    transport = protocol.transport
    if transport is None:
        return
    transport.write(rest)
    timeout = lane.send_timeout
    if len(rest) > MAX_BYTES and timeout is not None and transport.get_write_buffer_size():
        _RestWatch(protocol._loop, transport, timeout)


class _RestWatch:
    """The send deadline of one rest (`_write_rest`), until the transport has sent it.

    Progress is what `SendWatch` counts: bytes leaving the transport's buffer, or the
    kernel's queue shrinking as the client reads (the socket may not be writable
    again yet while a slow reader drains a large send buffer).
    """

    __slots__ = ("interval", "loop", "mark", "since", "timeout", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: Any, timeout: float) -> None:
        self.loop = loop
        self.transport = transport
        self.timeout = timeout
        self.interval = sweep_interval(timeout)
        self.mark = (-1, -1)
        self.since = loop.time()
        loop.call_later(self.interval, self.look)

    def look(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        pending = transport.get_write_buffer_size()
        if not pending:
            return  # all of it is in the kernel's hands: the connection is idle now
        sock = transport.get_extra_info("socket")
        mark = (pending, queued(sock))
        now = self.loop.time()
        if mark != self.mark:
            self.mark = mark
            self.since = now
        elif now - self.since >= self.timeout:
            peer = transport.get_extra_info("peername")
            logger.warning(
                "client %s accepted no response bytes for %gs (--send-timeout); connection reset",
                escape(str(peer[0] if peer else "")),
                self.timeout,
            )
            reset_on_close(sock)
            transport.abort()
            return
        self.loop.call_later(self.interval, self.look)


def _settle(protocol: Any, lane: FastLane, request: OnLane, exchange: ev.Exchange) -> None:
    """After the grace: the handler answers the ERROR, unless the worker began writing."""
    if protocol.fast is not request:
        return  # the client left meanwhile (lost)
    if exchange.client_written and not exchange.client_released:
        _cut(protocol, lane, request, exchange, "the worker was writing it")
    else:
        _hand_back(protocol, lane, request, exchange)


def _cut(
    protocol: Any, lane: FastLane, request: OnLane, exchange: ev.Exchange, reason: str
) -> None:
    """End a request whose worker may have written part of its response: shut the
    socket down (the worker's copy too), so the client sees a cut, never a mix."""
    message = request.message
    logger.warning(
        "response to %s %s cut: %s",
        escape(message.method),
        escape(message.path.partition("?")[0]),  # as the handler's lines: no query
        escape(reason or "the worker was writing it"),
    )
    exchange.listen(None)
    exchange.close()
    stats = lane.stats
    if stats is not None:
        stats.in_flight -= 1
        stats.record(message.method, "aborted", _clock() - request.started)
    protocol.fast = None
    protocol._request_in_progress = False
    waiter = protocol._handler_waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
    transport = protocol.transport
    if transport is not None:
        # The socket itself, not only this process's descriptor of it: the worker's
        # copy writes nothing more either.
        shut_down(transport.get_extra_info("socket"))
        transport.abort()


class _LaneRequest:
    """What the access log's atoms read of aiohttp's request, from the parsed message."""

    __slots__ = ("headers", "method", "raw_path", "remote", "version")

    def __init__(self, message: Any, peername: Any) -> None:
        self.method = message.method
        self.raw_path = message.path
        self.version = message.version
        self.headers = message.headers
        # aiohttp's BaseRequest.remote, from the same peername.
        if peername is None:
            self.remote: str | None = None
        elif isinstance(peername, (list, tuple)):
            self.remote = str(peername[0])
        else:
            self.remote = str(peername)


def _log_access(
    access: AccessLogger,
    protocol: Any,
    message: Any,
    exchange: ev.Exchange | None,
    response: StandInResponse,
    started: float,
) -> None:
    """The access line of a lane request, as the handler's path writes it."""
    pid = getattr(getattr(exchange, "owner", None), "pid", None)
    change = getattr(exchange, "rss_change", None)
    record = RequestRecord(
        _LaneRequest(message, protocol.peername),  # type: ignore[arg-type]
        response,  # type: ignore[arg-type]
        _clock() - started,
        pid if isinstance(pid, int) else None,
        change if isinstance(change, int) else None,
    )
    access.write(record)


def _hand_back(
    protocol: Any,
    lane: FastLane,
    request: OnLane,
    exchange: ev.Exchange | None,
    unavailable: str = "",
) -> None:
    """aiohttp's task serves the request next, with what the lane did so far."""
    if lane.stats is not None:
        lane.stats.in_flight -= 1  # the handler's wrapper counts it from here on
    handed = HandedBack(
        request.message, exchange, request.retrying, unavailable, request.started, request.body
    )
    protocol.fast = None
    protocol.fast_adopted = handed
    protocol._messages.appendleft((handed.message, EMPTY_PAYLOAD))
    _wake(protocol)


def _finished(protocol: Any, lane: FastLane, keep_alive: bool) -> None:
    """The lane's response is written: the connection is idle again, or closes."""
    protocol.fast = None
    protocol._parser.message_consumed()
    protocol._request_in_progress = False
    waiter = protocol._handler_waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
    if not keep_alive or protocol._force_close or protocol._close:
        protocol.force_close()
        return
    timeout = protocol._keepalive_timeout
    if timeout > 0:
        loop = protocol._loop
        close_time = loop.time() + timeout
        protocol._next_keepalive_close_time = close_time
        if protocol._keepalive_handle is None:
            protocol._keepalive_handle = loop.call_at(close_time, protocol._process_keepalive)
    messages = protocol._messages
    if messages and not (  # it arrived before this answer: the lane's again, or aiohttp's
        len(messages) == 1
        and not protocol._upgraded
        and protocol._payload_parser is None
        and try_start(protocol, lane)
    ):
        _wake(protocol)


def _wake(protocol: Any) -> None:
    waiter = protocol._waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def lost(protocol: Any, lane: FastLane) -> None:
    """The connection is gone with a request on the lane (or handed back and not yet
    adopted, which now never will be): stop its app, or leave the queue; its access
    line says 499 (logs/access.py's `GONE_RESPONSE`)."""
    stats = lane.stats
    access = protocol.access_logger
    handed = protocol.fast_adopted
    if handed is not None:
        protocol.fast_adopted = None
        if handed.exchange is not None:
            handed.exchange.close()
        if stats is not None:  # the wrapper will never see it
            stats.record(handed.message.method, "aborted", _clock() - handed.started)
        if type(access) is AccessLogger:
            _log_access(
                access, protocol, handed.message, handed.exchange, GONE_RESPONSE, handed.started
            )
    request = protocol.fast
    if request is None:
        if handed is not None:
            _no_request_in_progress(protocol)
        return
    protocol.fast = None
    exchange = request.exchange
    if stats is not None:
        stats.in_flight -= 1
    if (
        request.direct
        and exchange is not None
        and not (exchange.finished or exchange.client_released or exchange.lost_to)
    ):
        # Its worker holds the client socket and may have written the whole answer
        # already (the client read it and left before its DONE was read here): the
        # worker's report says which. It is told to stop if it has not begun.
        exchange.backend.cancel(exchange)
        gone = _clock() - request.started  # an aborted request's duration, as the handler's
        exchange.listen(lambda done: _gone_outcome(lane, request, done, gone))
    else:
        if stats is not None:
            stats.record(request.message.method, "aborted", _clock() - request.started)
        if request.granted is not None:
            lane.executor.withdraw(request.granted)
        if exchange is not None:
            exchange.listen(None)
            exchange.close()
    if type(access) is AccessLogger:
        _log_access(access, protocol, request.message, exchange, GONE_RESPONSE, request.started)
    _no_request_in_progress(protocol)


def _no_request_in_progress(protocol: Any) -> None:
    """Tell aiohttp the connection's request is over: a shutdown waits for that
    (`RequestHandler.shutdown`, up to the drain's end) before it closes it."""
    protocol._request_in_progress = False
    waiter = protocol._handler_waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _gone_outcome(lane: FastLane, request: OnLane, exchange: ev.Exchange, gone: float) -> None:
    """The worker's last word on a direct request whose client left: answered or not."""
    last = exchange.last()
    if not exchange.finished or last is None:
        return  # the rest of a response nobody reads: dropped when it ends
    kind, value = last
    exchange.listen(None)
    exchange.close()
    stats = lane.stats
    if stats is not None:
        if kind == _DONE and value[2]:  # written whole before the client left
            stats.answered(request.message.method, value[1], _clock() - request.started)
        else:
            stats.record(request.message.method, "aborted", gone)


def adopt(protocol: Any, message: Any) -> HandedBack | None:
    """What the lane did for `message`, if it handed it back to aiohttp."""
    handed = getattr(protocol, "fast_adopted", None)  # aiohttp's own handler has none
    if handed is None or handed.message is not message:
        return None
    protocol.fast_adopted = None
    return handed  # type: ignore[no-any-return]
