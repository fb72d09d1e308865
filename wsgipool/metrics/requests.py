"""What the frontend sees of each request: counts by method and status class, durations.

These are events, so they are counted (never derived from state), by the one
object that sees them: a wrapper around the server's request handler.  The
cost per request is two clock reads, two dict increments and a bisect (timed by
``python -m bench.observe_cost``).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

__all__ = ["DURATION_BUCKETS", "WAIT_BUCKETS", "Histogram", "RequestStats"]

#: Upper bounds, in seconds, of the request duration histogram's buckets.
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Upper bounds, in seconds, of the queue wait histogram's buckets.
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)

#: Methods with a label of their own; any other is "other" (bounded cardinality).
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_CLASSES: Final = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Histogram:
    """Cumulative-at-export bucket counts, a sum and a count; one bisect per observation."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), +Inf last: Prometheus's buckets."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class RequestStats:
    """Counters of the requests the main listener handled (health checks excluded)."""

    __slots__ = ("by_method_class", "duration", "in_flight", "queue_wait")

    def __init__(self) -> None:
        self.by_method_class: dict[tuple[str, str], int] = {}
        self.duration = Histogram(DURATION_BUCKETS)
        self.queue_wait = Histogram(WAIT_BUCKETS)
        self.in_flight = 0

    @property
    def total(self) -> int:
        return sum(self.by_method_class.values())

    def answered(self, method: str, status: int, seconds: float) -> None:
        """A request answered with `status` (the fast lane's; the wrapper inlines this)."""
        self.record(method, _CLASSES[status // 100] if 100 <= status < 600 else "5xx", seconds)

    def record(self, method: str, status_class: str, seconds: float) -> None:
        key = (method if method in _METHODS else "other", status_class)
        counts = self.by_method_class
        counts[key] = counts.get(key, 0) + 1
        self.duration.observe(seconds)

    def wrap(self, handler: Handler) -> Handler:
        """`handler`, counting each request it answers; a cancelled one is "aborted".

        The count and the duration's bucket are kept inline, in the one frame the
        wrapper adds (not through `record` and `Histogram.observe`): it runs for
        every request of the main process (docs: bench/README.md, "The cost of
        observing").
        """
        clock = time.perf_counter
        counts = self.by_method_class
        duration = self.duration
        bounds = duration.bounds
        buckets = duration.counts
        bucket_of = bisect.bisect_left
        methods = _METHODS
        classes = _CLASSES

        async def counted(request: web.BaseRequest) -> web.StreamResponse:
            started = clock()
            # A request the fast lane took and handed back (fastpath.py): its time
            # counts from when the lane took it.
            handed = getattr(request.protocol, "fast_adopted", None)
            if handed is not None and handed.started and handed.message is request.message:
                started = handed.started
            self.in_flight += 1
            status_class = "5xx"  # an exception: aiohttp answers 500
            try:
                response = await handler(request)
                status = response.status
                status_class = classes[status // 100] if 100 <= status < 600 else "5xx"
                return response
            except asyncio.CancelledError:
                status_class = "aborted"  # the client went away before its response
                raise
            finally:
                seconds = clock() - started
                self.in_flight -= 1
                method = request.method
                key = (method if method in methods else "other", status_class)
                counts[key] = counts.get(key, 0) + 1
                buckets[bucket_of(bounds, seconds)] += 1
                duration.sum += seconds
                duration.count += 1

        return counted
