"""The access log writer: aiohttp's access logger hook, on ``wsgipool.access``.

The access log is on or off (``--access-log``, ``--access-logfile``) whatever
``--log-level`` says: `AccessLogger.enabled` is always true and the
``wsgipool.access`` logger has its own level and handler (see `setup`).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse

from wsgipool.logs.atoms import RequestRecord, compile_format, render
from wsgipool.relay import GONE

__all__ = [
    "GONE_RESPONSE",
    "AccessLogger",
    "StandInResponse",
    "log_abandoned",
    "note_response",
    "note_worker",
]

_WORKER_PID = RequestKey("wsgipool.worker_pid", int)
_RSS_CHANGE = RequestKey("wsgipool.rss_change", int)
_RESPONSE = RequestKey("wsgipool.response", StreamResponse)


def note_worker(request: BaseRequest, exchange: Any) -> None:
    """Note, for the access line, which worker served `request` and its RSS change.

    Called by the handler once the response is written; a thread backend's
    exchange has no worker pid, and its line shows '-'.
    """
    pid = getattr(exchange.owner, "pid", None)
    if isinstance(pid, int):
        request[_WORKER_PID] = pid
    change = getattr(exchange, "rss_change", None)
    if isinstance(change, int):
        request[_RSS_CHANGE] = change


def note_response(request: BaseRequest, response: StreamResponse) -> None:
    """Note the response being streamed to `request`, for the line of a request whose
    client leaves before it ends (`log_abandoned`)."""
    request[_RESPONSE] = response


class StandInResponse:
    """What the atoms read of a response aiohttp never had: a RAW answer of the fast
    lane (its head as the worker serialised it) or none at all (status 499)."""

    __slots__ = ("body_sent", "raw_head", "status")

    def __init__(self, status: int, body_sent: int, raw_head: Any) -> None:
        self.status = status
        self.body_sent = body_sent
        self.raw_head = raw_head  # b"": no header, the response atoms give "-"


#: The response of a request whose client left before it began: nginx's status
#: for "client closed request", which operators know, and no body.
GONE_RESPONSE = StandInResponse(GONE, 0, b"")


def log_abandoned(access: AccessLogger, request: BaseRequest, duration: float) -> None:
    """The line of a request whose handler was cancelled because its client left.

    aiohttp writes no line for a cancelled handler; an operator wants one for
    every request, the aborted ones most.  The status is the response's when it
    had begun (with the body bytes sent so far), else 499.
    """
    response: Any = request.get(_RESPONSE)
    if response is None:
        response = GONE_RESPONSE
    access.write(
        RequestRecord(
            request, response, duration, request.get(_WORKER_PID), request.get(_RSS_CHANGE)
        )
    )


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access logger hook: one record on ``wsgipool.access`` per request.

    The record's message is the formatted line; its ``access`` attribute holds
    the structured fields, which the JSON formatter writes as they are.
    """

    __slots__ = ("_parts",)

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._parts = compile_format(log_format)

    @property
    def enabled(self) -> bool:
        return True  # on or off by configuration, never by --log-level

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.write(
            RequestRecord(
                request, response, time, request.get(_WORKER_PID), request.get(_RSS_CHANGE)
            )
        )

    def write(self, record: RequestRecord) -> None:
        """Write one access line; also for the fast lane, which has no aiohttp request."""
        logger = self.logger
        try:
            line = render(self._parts, record)
            if logger.isEnabledFor(logging.INFO):
                # logger.info() without its caller lookup (a walk up the stack per
                # line): an access line's source is always this line.
                extra = {"access": record}
                made = logger.makeRecord(
                    logger.name, logging.INFO, __file__, 0, line, (), None, "write", extra
                )
                logger.handle(made)
        except Exception:
            self.logger.exception("cannot write an access line")
