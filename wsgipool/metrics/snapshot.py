"""Every observable fact of the server at one instant, read at scrape time.

`take_snapshot()` reads live state (worker handles, the dispatcher's queue, the
supervisor's exit counters, this process's /proc entries) and the request
counters of `RequestStats`; nothing is kept in sync.  /metrics, /stats, /readyz
and the status page all render one `Snapshot`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from wsgipool.config import Config, PoolConfig
from wsgipool.executor import ProcessExecutor
from wsgipool.growth import GrowthEntry
from wsgipool.metrics.history import History, Slots
from wsgipool.metrics.requests import Histogram, RequestStats
from wsgipool.metrics.smaps import Memory

__all__ = ["PathGrowth", "ServerView", "Snapshot", "WorkerView", "take_snapshot"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: Label values of worker exits (`Supervisor.exits` keys → Prometheus-style names), in
#: the order the docs list them; each is exported, at 0 until it happens.
EXIT_REASONS = {
    "crash": "crash",
    "signal": "signal",
    "max-rss": "max_rss_soft",
    "max-rss-hard": "max_rss_hard",
    "max-requests": "max_requests",
    "max-lifetime": "max_lifetime",
    "timeout": "timeout",
    "reload": "reload",
    "sigterm": "sigterm",
    "scale": "scale_down",
    "shutdown": "shutdown",
}
#: Label values of 503s answered by the server itself (`ProcessExecutor.rejected` keys).
REJECT_REASONS = {
    "queue-full": "queue_full",
    "queue-timeout": "queue_timeout",
    "shutting-down": "shutting_down",
    "dispatch-failed": "dispatch_failed",
}


class ServerView(Protocol):
    """What is read of the server (`wsgipool.server.Server`)."""

    @property
    def config(self) -> Config: ...

    @property
    def pool(self) -> PoolConfig: ...

    @property
    def executor(self) -> ProcessExecutor | ThreadPoolExecutor | None: ...

    @property
    def stopping(self) -> bool: ...


@dataclasses.dataclass(frozen=True, slots=True)
class PathGrowth:
    """A normalised request path's RSS growth (KiB, rises only) and its requests."""

    path: str
    grown_kib: int
    requests: int


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerView:
    slot: int
    pid: int
    number: int  # spawn order, 1 for the first worker
    generation: int  # the template (app import) it was forked from; a reload adds one
    state: str  # starting, ready, draining (recycling or stopping)
    recycle_reason: str | None
    age: float  # seconds since spawn
    rss: int  # bytes, the supervisor's latest sample (0 before the first)
    threads: int
    busy: int
    served: int  # requests completed
    dispatched: int
    rss_history: tuple[tuple[float, int], ...]  # (unix time, bytes), oldest first
    top_paths: tuple[PathGrowth, ...] = ()  # the paths that grew this worker most (3)
    uss: int | None = None  # bytes only this worker maps, read at the scrape (None: unread)
    pss: int | None = None  # its proportional share of the pages it maps


@dataclasses.dataclass(frozen=True, slots=True)
class ExitView:
    at: float
    pid: int
    reason: str
    rss: int
    served: int
    age: float
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    at: float  # unix time
    version: str
    python: str
    aiohttp: str
    started_at: float  # unix time the server started
    mode: str  # "processes" or "threads"
    alive: bool
    ready: bool
    stopping: bool
    workers_target: int
    workers: tuple[WorkerView, ...]
    threads_total: int  # request threads of ready workers (threads mode: the pool)
    threads_busy: int
    queue_depth: int
    queue_size: int
    in_flight: int
    requests: Mapping[tuple[str, str], int]  # (method, status class) -> count
    request_rate: float  # per second, last ~10 s
    duration: Mapping[str, Any]  # histogram: buckets [(le, cumulative)], sum, count
    queue_wait: Mapping[str, Any]
    rejected: Mapping[str, int]  # 503s by reason
    exits: Mapping[str, int]  # worker exits by reason
    recent_exits: tuple[ExitView, ...]  # newest last
    spawned: int
    pending_spawns: int
    backoff_failures: int
    max_rss: int | None
    max_rss_hard: int | None
    main_rss: int
    main_fds: int
    loop_lag: float
    # The leak finder: pool-wide RSS growth by path, most first (at most POOL_PATHS), and
    # what the table holds under "other" (paths evicted from it).
    paths: tuple[PathGrowth, ...] = ()
    paths_other: PathGrowth | None = None

    def as_json(self) -> dict[str, Any]:
        """The /stats document: plain JSON types, tuples of pairs as objects where natural."""
        out = dataclasses.asdict(self)
        out["requests"] = [
            {"method": m, "status": c, "count": n} for (m, c), n in sorted(self.requests.items())
        ]
        for worker in out["workers"]:
            worker["rss_history"] = [[round(t, 3), rss] for t, rss in worker["rss_history"]]
        return out


def take_snapshot(
    server: ServerView,
    stats: RequestStats | None,
    history: History,
    slots: Slots,
    *,
    started_at: float,
    loop_lag: float,
    memory: Mapping[int, Memory] | None = None,
) -> Snapshot:
    """Read every fact now; `memory` holds the workers' USS/PSS when the caller read them."""
    memory = memory or {}
    executor = server.executor
    stopping = server.stopping
    now = time.time()
    workers: list[WorkerView] = []
    recent: list[ExitView] = []
    exits: dict[str, int] = {}
    rejected: dict[str, int] = {}
    queue_depth = spawned = pending = failures = 0
    paths: tuple[PathGrowth, ...] = ()
    paths_other: PathGrowth | None = None
    target = server.pool.workers
    if isinstance(executor, ProcessExecutor):
        rejected = {REJECT_REASONS.get(k, k): n for k, n in executor.rejected.items()}
        queue_depth = executor.dispatcher.waiting
        supervisor = executor.supervisor
        if supervisor is not None:
            handles = [w for w in supervisor.workers if w.alive]
            slot_of = slots.assign(w.pid for w in handles)
            for w in handles:
                shares = memory.get(w.pid)
                workers.append(
                    WorkerView(
                        slot=slot_of[w.pid],
                        pid=w.pid,
                        number=w.number,
                        generation=w.template.generation,
                        state=w.state.value,
                        recycle_reason=w.recycle_reason,
                        age=w.age,
                        rss=w.rss,
                        threads=w.threads,
                        busy=w.busy,
                        served=w.completed,
                        dispatched=w.dispatched,
                        rss_history=tuple(history.rss(w.pid)),
                        top_paths=_paths(w.growth.top(3)),
                        uss=shares.uss if shares else None,
                        pss=shares.pss if shares else None,
                    )
                )
            exits = {EXIT_REASONS.get(k, k): n for k, n in supervisor.exits.items()}
            recent = [
                ExitView(
                    e.at,
                    e.pid,
                    EXIT_REASONS.get(e.reason, e.reason),
                    e.rss,
                    e.served,
                    e.age,
                    e.detail,
                )
                for e in supervisor.recent_exits
            ]
            spawned = supervisor.spawned
            table = supervisor.path_growth
            paths = _paths(table.top())
            other = table.other
            paths_other = PathGrowth(other.path, other.grown_kib, other.requests)
            pending = supervisor.pending_spawns
            failures = supervisor.backoff.failures
            target = supervisor.target
    workers.sort(key=lambda w: w.slot)
    if isinstance(executor, ProcessExecutor):
        ready_workers = [w for w in workers if w.state == "ready"]
        threads_total = sum(w.threads for w in ready_workers)
        threads_busy = sum(w.busy for w in workers)
        ready = bool(ready_workers) and not stopping
        mode = "processes"
    else:
        threads_total = server.pool.threads
        threads_busy = min(stats.in_flight if stats else 0, threads_total)
        ready = executor is not None and not stopping
        mode = "threads"
    requests = dict(stats.by_method_class) if stats else {}
    total = sum(requests.values())
    return Snapshot(
        at=now,
        version=_version(),
        python=platform.python_version(),
        aiohttp=_aiohttp_version(),
        started_at=started_at,
        mode=mode,
        alive=True,
        ready=ready,
        stopping=stopping,
        workers_target=target,
        workers=tuple(workers),
        threads_total=threads_total,
        threads_busy=threads_busy,
        queue_depth=queue_depth,
        queue_size=server.pool.queue_size,
        in_flight=stats.in_flight if stats else 0,
        requests=requests,
        request_rate=history.request_rate(total, now),
        duration=_histogram(stats.duration) if stats else _empty(),
        queue_wait=_histogram(stats.queue_wait) if stats else _empty(),
        rejected=rejected,
        exits=exits,
        recent_exits=tuple(recent),
        spawned=spawned,
        pending_spawns=pending,
        backoff_failures=failures,
        max_rss=server.pool.max_rss,
        max_rss_hard=server.pool.max_rss_hard,
        main_rss=main_rss(),
        main_fds=main_fds(),
        loop_lag=loop_lag,
        paths=paths,
        paths_other=paths_other,
    )


def _paths(entries: Iterable[GrowthEntry]) -> tuple[PathGrowth, ...]:
    return tuple(PathGrowth(e.path, e.grown_kib, e.requests) for e in entries)


def _histogram(h: Histogram) -> dict[str, Any]:
    return {"buckets": h.cumulative(), "sum": h.sum, "count": h.count}


def _empty() -> dict[str, Any]:
    return {"buckets": [], "sum": 0.0, "count": 0}


def main_rss() -> int:
    """This process's resident set, from /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def main_fds() -> int:
    """Open descriptors of this process (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself holds
    except OSError:
        return 0


def _version() -> str:
    from wsgipool import __version__

    return __version__


def _aiohttp_version() -> str:
    module = sys.modules.get("aiohttp")
    return str(getattr(module, "__version__", "unknown"))
