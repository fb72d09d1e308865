"""CPU time of a server's process tree, from /proc/PID/stat (Linux).

The figure the harness divides by requests served: user + system time, in
seconds, of every process of a server's tree, read just before and just after a
wrk run.  A process's own time is fields 14 and 15 of /proc/PID/stat (utime,
stime: all its threads, the dead ones included).  Fields 16 and 17 (cutime,
cstime) are the totals of the children it has reaped with wait(): the kernel
adds a child's own and reaped-children's time to its parent when the parent
reaps it.  So the *cumulative* time of a tree,

    sum over its live (and zombie) processes of utime + stime + cutime + cstime,

only grows, and its growth between two readings is exactly the CPU the tree
spent meanwhile, including that of workers born and reaped during the run
(recycling, a killed worker), provided each process is reaped by a process of
the tree: wsgipool's template reaps its workers, gunicorn's arbiter and
granian's main process theirs.  A process that leaves the tree (reparented to
init) or is reaped without wait() (SIGCHLD ignored) would take its time along;
none of the servers measured does that.  A reading of the root's cutime/cstime
also holds children reaped before the first reading, which the difference
cancels.

The main process alone is the server process's utime + stime (not its
children's): for wsgipool, the aiohttp frontend with its threads.  Its utime is
also kept apart: user time is the Python the frontend runs per request, system
time its system calls, and the two move for different reasons.

The event loops are the processes two levels above the deepest leaves (the
workers): wsgipool's frontend is the parent of the template that forks the
workers, so with one frontend that is the root itself and with ``--frontends N``
the N children of the arbiter.  Their own times, each apart, say whether one
frontend is the ceiling (bench/scaling.py).  Servers without a template
(gunicorn, Granian) have none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


@dataclass(frozen=True)
class Times:
    """Cumulative CPU seconds at one moment: the whole tree, and its root alone."""

    tree: float
    main: float
    processes: int
    loops: dict[int, float] = field(default_factory=dict)  # event-loop PID: own seconds
    main_user: float = 0.0  # the part of `main` spent in user mode

    def __sub__(self, earlier: Times) -> Times:
        # A loop that was not there at the first reading (restarted) is left out.
        loops = {
            pid: spent - earlier.loops[pid]
            for pid, spent in self.loops.items()
            if pid in earlier.loops
        }
        return Times(
            self.tree - earlier.tree,
            self.main - earlier.main,
            self.processes,
            loops,
            self.main_user - earlier.main_user,
        )


def _stat(pid: int) -> tuple[int, list[str]] | None:
    """(ppid, the fields after the command name) of /proc/PID/stat, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    rest = text[text.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    return int(rest[1]), rest


def _own(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def _reaped(fields: list[str]) -> int:
    return int(fields[13]) + int(fields[14])  # cutime, cstime (fields 16, 17)


def available() -> bool:
    return Path(f"/proc/{os.getpid()}/stat").exists()


def read(root: int) -> Times | None:
    """The cumulative times of `root` and all its descendants; None if `root` is gone.

    The tree is found by parent PID in one pass over /proc, so a process that
    forks between the listing and the reads is missed only until the next
    reading (its time so far is then counted, since it was its own).
    """
    stats: dict[int, tuple[int, list[str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    if root not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total = count = 0
    depth: dict[int, int] = {}
    todo = [(root, 0)]
    while todo:
        pid, level = todo.pop()
        fields = stats[pid][1]
        total += _own(fields) + _reaped(fields)
        count += 1
        depth[pid] = level
        todo.extend((child, level + 1) for child in children.get(pid, ()))
    loop_level = max(depth.values()) - 2
    loops = {
        pid: _own(stats[pid][1]) / TICK
        for pid, level in depth.items()
        if level == loop_level and children.get(pid)
    }
    own = stats[root][1]
    return Times(total / TICK, _own(own) / TICK, count, loops, int(own[11]) / TICK)


def per_request(spent: Times, requests: int) -> dict[str, float | int | None]:
    """The results' `cpu` entry: seconds spent and µs per request, tree and main process."""

    def us(seconds: float) -> float | None:
        return round(seconds * 1e6 / requests, 1) if requests > 0 else None

    return {
        "tree_s": round(spent.tree, 3),
        "main_s": round(spent.main, 3),
        "requests": requests,
        "tree_us_per_request": us(spent.tree),
        "main_us_per_request": us(spent.main),
        "main_user_us_per_request": us(spent.main_user),
        "loops_s": sorted((round(s, 3) for s in spent.loops.values()), reverse=True),
        "tick_s": round(1 / TICK, 4),
    }
