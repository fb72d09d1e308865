"""Workers' unique and proportional memory (USS, PSS), read at scrape time only.

RSS counts pages a worker shares with the template and its siblings, so a pool of
forked workers looks bigger than it is; USS (pages only this worker maps) is what
killing it would free, PSS its fair share.  Both come from
``/proc/PID/smaps_rollup``, about 150 µs per worker, which is why the supervisor's
RSS sampling never reads it: only a scrape of /metrics, /stats or the status page
does, in a thread, so the event loop never waits on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = ["Memory", "read_all", "read_memory"]

_USS_FIELDS = (b"Private_Clean:", b"Private_Dirty:", b"Private_Hugetlb:")


@dataclasses.dataclass(frozen=True, slots=True)
class Memory:
    uss: int  # bytes
    pss: int  # bytes


def read_memory(pid: int, proc: str = "/proc") -> Memory | None:
    """USS and PSS of `pid`, or None when the process is gone or /proc cannot tell."""
    try:
        with open(f"{proc}/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return None
    uss = 0
    pss: int | None = None
    for line in text.splitlines():
        name, _, rest = line.partition(b" ")
        if name in _USS_FIELDS or name == b"Pss:":
            fields = rest.split()
            if not fields or not fields[0].isdigit():
                return None
            kib = int(fields[0])
            if name == b"Pss:":
                pss = kib * 1024
            else:
                uss += kib * 1024
    return None if pss is None else Memory(uss, pss)


def read_all(pids: Iterable[int], proc: str = "/proc") -> dict[int, Memory]:
    """`read_memory` of each pid; pids that cannot be read are left out."""
    out: dict[int, Memory] = {}
    for pid in pids:
        memory = read_memory(pid, proc)
        if memory is not None:
            out[pid] = memory
    return out
