"""A log line per event, at most one per interval, for events that come in floods.

An overloaded server answers thousands of 503s a second; a line for each would
cost the event loop time it does not have and bury everything else in the log.
The first event of a quiet period is logged as it is; the ones after it are
counted and summed up in one line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time


class RateLimitedLog:
    """Owned by one event loop: record() is called from its thread only."""

    __slots__ = ("_interval", "_last", "_latest", "_level", "_logger", "_suppressed", "_timer")

    def __init__(self, logger: logging.Logger, level: int, interval: float = 1.0) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._last = float("-inf")  # when the last line was written
        self._suppressed = 0  # events since then that got no line of their own
        self._latest = ""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def suppressed(self) -> int:
        return self._suppressed

    def record(self, message: str) -> None:
        now = time.monotonic()
        if self._suppressed == 0 and now - self._last >= self._interval:
            self._last = now
            self._logger.log(self._level, "%s", message)
            return
        self._suppressed += 1
        self._latest = message
        if self._timer is None:
            delay = max(0.0, self._last + self._interval - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._summarise)

    def _summarise(self) -> None:
        self._timer = None
        count, self._suppressed = self._suppressed, 0
        if count == 0:
            return
        now = time.monotonic()
        self._logger.log(
            self._level,
            "%s more like it in the last %.1fs; the latest: %s",
            f"{count:,}",
            now - self._last,
            self._latest,
        )
        self._last = now
