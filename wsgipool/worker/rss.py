"""A worker's resident memory, read from /proc, and each request's change of it.

`RssProbe` reads the process's RSS (one ``pread`` of ``/proc/self/statm`` on a
descriptor kept open: about 1.5 µs, most of it the kernel's).  `RssMeter` gives
each request its RSS change with one read per request where it can: the
reading taken at the end of a request that left the worker idle is the start of
the next one, so a worker that runs its requests one after another (the
reader's inline path, the common case) reads once per request, not twice.  A
request that starts while another runs in the same worker reads at its start
too, so its window never reaches back into the other's.
"""

from __future__ import annotations

import os
import threading

__all__ = ["RssMeter", "RssProbe"]


class RssProbe:
    """Resident memory of this process from /proc, cheap enough to read per request."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = -1

    def read(self) -> int:
        """RSS in bytes (where /proc is missing: the peak RSS, from getrusage)."""
        if self._fd < 0:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # "size resident shared ...": the second field, in pages.
        return int(os.pread(self._fd, 64, 0).split(None, 2)[1]) * self._page


class RssMeter:
    """Per-request RSS changes of one worker process, shared by its threads.

    `start` is called as the app starts, `end` as the response ends (it returns
    the change in KiB), or `abandon` when the request ends without a measured
    end (an error frame).  The readings are ordered by a lock, so the windows
    of requests that follow one another tile the worker's life: growth between
    two requests (the worker decoding the next request, an app's own
    background thread) counts for the next one, and nothing counts twice.
    """

    __slots__ = ("_idle_rss", "_lock", "_read", "_running")

    def __init__(self, probe: RssProbe) -> None:
        self._read = probe.read
        self._lock = threading.Lock()
        self._running = 0
        # The RSS read when the last request ended with none other running: the
        # next request's start, if it starts with none other running either.
        self._idle_rss: int | None = None

    def prime(self) -> None:
        """Take the reading the first request starts from (the worker is ready)."""
        with self._lock:
            if self._running == 0:
                self._idle_rss = self._read()

    def start(self) -> int:
        """A request's app call starts: the RSS its change counts from."""
        with self._lock:
            self._running += 1
            idle = self._idle_rss
            self._idle_rss = None
            if self._running == 1 and idle is not None:
                return idle
            return self._read()

    def end(self, start: int) -> int:
        """The request that started at `start` ends: its RSS change in KiB."""
        with self._lock:
            rss = self._read()
            self._running -= 1
            if self._running == 0:
                self._idle_rss = rss
            return (rss - start) // 1024

    def abandon(self) -> None:
        """The request that started ends unmeasured; the next one reads its own start."""
        with self._lock:
            self._running -= 1
