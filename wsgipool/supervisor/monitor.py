"""Memory samples of worker processes, taken with psutil off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import psutil

__all__ = ["RssMonitor"]


class RssMonitor:
    """Reads each worker's resident set size in a thread; /proc reads never stall requests."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    async def sample(self, pids: Iterable[int]) -> dict[int, int]:
        wanted = list(pids)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._read, wanted)

    def _read(self, pids: list[int]) -> dict[int, int]:
        known = self._processes
        for gone in set(known) - set(pids):
            del known[gone]
        out: dict[int, int] = {}
        for pid in pids:
            try:
                process = known.get(pid)
                if process is None:
                    process = known[pid] = psutil.Process(pid)
                rss = int(process.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                known.pop(pid, None)
                continue
            except OSError:
                continue  # /proc unreadable (out of file descriptors, say): next round
            if rss:  # 0: an exiting process (a zombie) has no memory left, not a sample
                out[pid] = rss
        return out
