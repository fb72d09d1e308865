"""The access log writer: aiohttp's access logger hook, on ``wsgipool.access``.

The access log is on or off (``--access-log``, ``--access-logfile``) whatever
``--log-level`` says: `AccessLogger.enabled` is always true and the
``wsgipool.access`` logger has its own level and handler (see `setup`).
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from wsgipool.logs.atoms import RequestRecord, compile_format, render

__all__ = ["AccessLogger"]


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
        try:
            record = RequestRecord(request, response, time)
            line = render(self._parts, record)
            self.logger.info(line, extra={"access": record})
        except Exception:
            self.logger.exception("cannot write an access line")
