"""Worker slots and a short memory of their RSS, kept in the main process.

A *slot* is a small, stable number for a worker position: a new worker takes
the lowest slot no live worker holds, so a replacement usually inherits the
slot of the worker it replaces.  Slots keep the `slot` label of per-worker
metrics bounded (at most the largest number of workers alive at once) where
pids grow without end.

The RSS history is what the supervisor already sampled (`WorkerHandle.rss`),
copied into a bounded ring per slot every `interval` seconds: no extra /proc
reads.  The request rate comes from the same samples.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Final

__all__ = ["History", "Slots"]

#: Seconds between samples, and how many are kept: five minutes.
SAMPLE_INTERVAL: Final = 2.0
SAMPLES: Final = 150
#: The request rate is averaged over about this many seconds.
RATE_WINDOW: Final = 10.0


class Slots:
    """pid → slot, the lowest free slot for each new pid, freed when the pid leaves."""

    __slots__ = ("_by_pid",)

    def __init__(self) -> None:
        self._by_pid: dict[int, int] = {}

    def assign(self, live: Iterable[int]) -> dict[int, int]:
        """Slots of the `live` pids (in order of first appearance), forgetting dead ones."""
        pids = list(live)
        wanted = set(pids)
        by_pid = self._by_pid
        for gone in [pid for pid in by_pid if pid not in wanted]:
            del by_pid[gone]
        taken = set(by_pid.values())
        free = 0
        for pid in pids:
            if pid in by_pid:
                continue
            while free in taken:
                free += 1
            by_pid[pid] = free
            taken.add(free)
        return {pid: by_pid[pid] for pid in pids}


class History:
    """RSS samples per worker pid, and total request counts, over the last few minutes."""

    __slots__ = ("_requests", "_rss", "samples")

    def __init__(self, samples: int = SAMPLES) -> None:
        self.samples = samples
        # pid -> ring of (wall clock, rss bytes); only live pids are kept.
        self._rss: dict[int, deque[tuple[float, int]]] = {}
        self._requests: deque[tuple[float, int]] = deque(maxlen=samples)

    def record(
        self, rss_by_pid: dict[int, int], requests_total: int, now: float | None = None
    ) -> None:
        at = time.time() if now is None else now
        rings = self._rss
        for gone in [pid for pid in rings if pid not in rss_by_pid]:
            del rings[gone]
        for pid, rss in rss_by_pid.items():
            ring = rings.get(pid)
            if ring is None:
                ring = rings[pid] = deque(maxlen=self.samples)
            if rss > 0:  # 0: not sampled yet
                ring.append((at, rss))
        self._requests.append((at, requests_total))

    def rss(self, pid: int) -> list[tuple[float, int]]:
        return list(self._rss.get(pid, ()))

    def request_rate(self, requests_total: int, now: float | None = None) -> float:
        """Requests per second over the last `RATE_WINDOW` seconds or so (0 if unknown)."""
        at = time.time() if now is None else now
        base: tuple[float, int] | None = None
        for sample in reversed(self._requests):
            base = sample
            if at - sample[0] >= RATE_WINDOW:
                break
        if base is None or at - base[0] <= 0:
            return 0.0
        return max(0, requests_total - base[1]) / (at - base[0])
