"""The snapshot as Prometheus metric families, rendered by prometheus_client.

prometheus_client does the text format and the content negotiation (its
OpenMetrics encoder when the scraper asks for it); the families are built from
a `Snapshot` at each scrape, as its custom-collector pattern intends, so nothing
is registered globally and nothing is kept in sync.  Every name and label is
listed in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from wsgipool.metrics.snapshot import EXIT_REASONS, REJECT_REASONS, Snapshot

__all__ = ["families", "render"]

_STATES = ("starting", "ready", "draining")


def render(snapshot: Snapshot, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type, as the Accept header asks."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class _Collector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


def families(s: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "wsgipool_build_info",
        "Versions of wsgipool, Python and aiohttp in the main process; always 1.",
        labels=["version", "python", "aiohttp"],
    )
    info.add_metric([s.version, s.python, s.aiohttp], 1)
    yield info
    yield _gauge("wsgipool_start_time_seconds", "Unix time the server started.", s.started_at)
    yield _gauge(
        "wsgipool_ready",
        "1 when at least one worker is ready and the server is not shutting down (/readyz).",
        int(s.ready),
    )

    requests = CounterMetricFamily(
        "wsgipool_http_requests",
        "Requests answered on the main listener, by method and status class "
        "(aborted: the client left first).",
        labels=["method", "status"],
    )
    for (method, status), n in sorted(s.requests.items()):
        requests.add_metric([method, status], n)
    yield requests
    yield _histogram(
        "wsgipool_http_request_duration_seconds",
        "Time from the request head to the response handed to aiohttp.",
        s.duration,
    )
    yield _histogram(
        "wsgipool_queue_wait_seconds",
        "Time a dispatched request waited for a free worker thread (0 for most).",
        s.queue_wait,
    )
    yield _gauge(
        "wsgipool_http_requests_in_flight",
        "Requests being handled: waiting, running in a worker, or being written.",
        s.in_flight,
    )
    yield _gauge("wsgipool_threads", "Request threads of ready workers.", s.threads_total)
    yield _gauge("wsgipool_threads_busy", "Request threads running a request.", s.threads_busy)
    yield _gauge(
        "wsgipool_queue_depth", "Requests waiting for a free worker thread.", s.queue_depth
    )
    yield _gauge("wsgipool_queue_capacity", "--queue-size: the most that may wait.", s.queue_size)
    unavailable = CounterMetricFamily(
        "wsgipool_unavailable_responses",
        "503s answered by the server itself (not the app), by reason.",
        labels=["reason"],
    )
    for reason in _ordered(REJECT_REASONS.values(), s.rejected):
        unavailable.add_metric([reason], s.rejected.get(reason, 0))
    yield unavailable

    states = GaugeMetricFamily("wsgipool_workers", "Live workers by state.", labels=["state"])
    for state in _STATES:
        states.add_metric([state], sum(1 for w in s.workers if w.state == state))
    yield states
    yield _gauge(
        "wsgipool_workers_target", "Workers the supervisor keeps serving.", s.workers_target
    )
    labels = ["slot", "pid"]
    rss = GaugeMetricFamily(
        "wsgipool_worker_resident_memory_bytes",
        "A worker's RSS at the supervisor's latest sample.",
        labels=labels,
    )
    served = CounterMetricFamily(
        "wsgipool_worker_requests", "Requests a worker has completed.", labels=labels
    )
    age = GaugeMetricFamily("wsgipool_worker_age_seconds", "Seconds since spawn.", labels=labels)
    busy = GaugeMetricFamily(
        "wsgipool_worker_busy_threads", "A worker's threads running a request.", labels=labels
    )
    threads = GaugeMetricFamily("wsgipool_worker_threads", "A worker's threads.", labels=labels)
    uss = GaugeMetricFamily(
        "wsgipool_worker_unique_memory_bytes",
        "A worker's USS (pages no other process maps), read at this scrape.",
        labels=labels,
    )
    pss = GaugeMetricFamily(
        "wsgipool_worker_proportional_memory_bytes",
        "A worker's PSS (its share of the pages it maps), read at this scrape.",
        labels=labels,
    )
    for w in s.workers:
        key = [str(w.slot), str(w.pid)]
        rss.add_metric(key, w.rss)
        served.add_metric(key, w.served)
        age.add_metric(key, round(w.age, 3))
        busy.add_metric(key, w.busy)
        threads.add_metric(key, w.threads)
        if w.uss is not None:
            uss.add_metric(key, w.uss)
        if w.pss is not None:
            pss.add_metric(key, w.pss)
    yield from (rss, uss, pss, served, age, busy, threads)
    if s.max_rss is not None:
        yield _gauge("wsgipool_worker_max_rss_bytes", "--max-rss, the soft limit.", s.max_rss)
    if s.max_rss_hard is not None:
        yield _gauge(
            "wsgipool_worker_max_rss_hard_bytes", "--max-rss-hard, the hard limit.", s.max_rss_hard
        )
    exits = CounterMetricFamily(
        "wsgipool_worker_exits",
        "Workers that exited, by reason: a recycle's reason, shutdown, or crash/signal "
        "for deaths nobody asked for.",
        labels=["reason"],
    )
    for reason in _ordered(EXIT_REASONS.values(), s.exits):
        exits.add_metric([reason], s.exits.get(reason, 0))
    yield exits
    spawned = CounterMetricFamily(
        "wsgipool_workers_spawned", "Workers started, replacements included."
    )
    spawned.add_metric([], s.spawned)
    yield spawned
    yield _gauge(
        "wsgipool_worker_restarts_pending",
        "Replacement workers decided but not started yet (waiting out a crash backoff).",
        s.pending_spawns,
    )
    yield _gauge(
        "wsgipool_worker_crash_backoff_failures",
        "Workers in a row that died young; each doubles the restart delay.",
        s.backoff_failures,
    )
    yield from _path_families(s)

    yield _gauge("wsgipool_main_resident_memory_bytes", "RSS of the main process.", s.main_rss)
    yield _gauge("wsgipool_main_open_fds", "Open descriptors of the main process.", s.main_fds)
    yield _gauge(
        "wsgipool_event_loop_lag_seconds",
        "How late the main event loop ran a timer at its latest check (every 0.5 s).",
        s.loop_lag,
    )


def _path_families(s: Snapshot) -> Iterator[Metric]:
    """The leak finder: growth by normalised path, at most POOL_PATHS paths plus "other"."""
    if s.mode != "processes":
        return
    grown = CounterMetricFamily(
        "wsgipool_path_rss_growth_kibibytes",
        "Worker RSS growth over requests to a normalised path (rises only), in KiB; "
        'at most 50 paths, the rest under path="other".',
        labels=["path"],
    )
    requests = CounterMetricFamily(
        "wsgipool_path_requests",
        "Requests to a normalised path whose RSS change a worker measured.",
        labels=["path"],
    )
    rows = list(s.paths)
    if s.paths_other is not None:
        rows.append(s.paths_other)
    for row in rows:
        grown.add_metric([row.path], row.grown_kib)
        requests.add_metric([row.path], row.requests)
    yield grown
    yield requests


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str, data: Any) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    if data["buckets"]:
        family.add_metric([], data["buckets"], data["sum"])
    return family


def _ordered(known: Any, seen: Any) -> list[str]:
    """Every known label value, then any other that was seen (none should be)."""
    out = list(known)
    out += sorted(k for k in seen if k not in out)
    return out
