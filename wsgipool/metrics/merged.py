"""``--metrics-bind`` with more than one frontend: one listener for the whole tree.

Each frontend serves its own metrics listener on a private unix socket (in a
directory of the arbiter's, mode 0700); the arbiter forks one more process,
``wsgipool: metrics``, which serves ``--metrics-bind`` (bound by the arbiter
before anything started) and answers each request from the frontends' answers,
fetched at that moment:

- ``/healthz``: 200 while this process runs;
- ``/readyz``: 200 when any frontend is ready, else 503;
- ``/stats`` and the status page: the frontends' /stats merged into one
  document of the same shape (counts summed, histograms added bucket by bucket,
  workers listed together, each tagged with ``frontend``), with a ``frontends``
  list saying which answered;
- ``/metrics``: every frontend's families, parsed with prometheus_client's
  parser, each sample with a ``frontend`` label, plus ``wsgipool_frontend_up``.

A frontend that does not answer within `FETCH_TIMEOUT` (restarting, stuck) is
left out and shown as down.  The merging functions are pure (`merge_stats`,
`merge_families`); only `serve` does I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["bind", "merge_families", "merge_stats", "serve"]

logger = logging.getLogger("wsgipool.metrics")

#: How long a scrape waits for each frontend's answer.
FETCH_TIMEOUT = 5.0
#: The leak finder's paths kept in the merged /stats (as each frontend keeps).
PATHS_KEPT = 50
RECENT_EXITS_KEPT = 50

_SUMMED = (
    "workers_target",
    "threads_total",
    "threads_busy",
    "queue_depth",
    "queue_size",
    "in_flight",
    "request_rate",
    "spawned",
    "pending_spawns",
    "backoff_failures",
    "main_rss",
    "main_fds",
)

Part = tuple[int, dict[str, Any] | None]  # (frontend index, its /stats or None)


def merge_stats(parts: list[Part], now: float | None = None) -> dict[str, Any]:
    """One /stats document from the frontends' documents (None: that one did not answer)."""
    answered = [(index, doc) for index, doc in parts if doc is not None]
    out: dict[str, Any] = dict(answered[0][1]) if answered else _empty_stats()
    docs = [doc for _, doc in answered]
    out["at"] = time.time() if now is None else now
    out["alive"] = True
    out["ready"] = any(doc["ready"] for doc in docs)
    out["stopping"] = bool(docs) and all(doc["stopping"] for doc in docs)
    if docs:
        out["started_at"] = min(doc["started_at"] for doc in docs)
        out["loop_lag"] = max(doc["loop_lag"] for doc in docs)
    for name in _SUMMED:
        out[name] = sum(doc.get(name, 0) for doc in docs)
    workers: list[dict[str, Any]] = []
    exits: list[dict[str, Any]] = []
    for index, doc in answered:
        for worker in doc["workers"]:
            workers.append({**worker, "frontend": index, "frontend_slot": worker["slot"]})
        exits += [{**e, "frontend": index} for e in doc["recent_exits"]]
    for slot, worker in enumerate(workers, 1):
        worker["slot"] = slot  # one numbering for the whole tree (the page keys rows by it)
    out["workers"] = workers
    out["recent_exits"] = sorted(exits, key=lambda e: e["at"])[-RECENT_EXITS_KEPT:]
    out["requests"] = _sum_requests(doc["requests"] for doc in docs)
    for name in ("duration", "queue_wait"):
        out[name] = _sum_histograms(doc[name] for doc in docs)
    for name in ("rejected", "exits"):
        out[name] = _sum_maps(doc[name] for doc in docs)
    out["paths"], out["paths_other"] = _sum_paths(docs)
    out["max_rss"] = docs[0]["max_rss"] if docs else None
    out["max_rss_hard"] = docs[0]["max_rss_hard"] if docs else None
    out["frontends"] = [
        {"frontend": index, "up": doc is not None, "ready": bool(doc and doc["ready"])}
        for index, doc in parts
    ]
    return out


def _empty_stats() -> dict[str, Any]:
    from wsgipool import __version__

    return {
        "version": __version__,
        "python": "",
        "aiohttp": "",
        "mode": "processes",
        "started_at": time.time(),
        "loop_lag": 0.0,
    }


def _sum_requests(lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], int] = {}
    for entries in lists:
        for entry in entries:
            key = (entry["method"], entry["status"])
            counts[key] = counts.get(key, 0) + entry["count"]
    return [{"method": m, "status": s, "count": n} for (m, s), n in sorted(counts.items())]


def _sum_histograms(histograms: Iterable[dict[str, Any]]) -> dict[str, Any]:
    buckets: dict[float, int] = {}
    total, count = 0.0, 0
    for h in histograms:
        for le, n in h["buckets"]:
            buckets[float(le)] = buckets.get(float(le), 0) + n
        total += h["sum"]
        count += h["count"]
    return {"buckets": [[le, n] for le, n in sorted(buckets.items())], "sum": total, "count": count}


def _sum_maps(maps: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for mapping in maps:
        for key, n in mapping.items():
            out[key] = out.get(key, 0) + n
    return out


def _sum_paths(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    grown: dict[str, list[int]] = {}
    other: dict[str, Any] | None = None
    for doc in docs:
        for entry in doc.get("paths") or []:
            totals = grown.setdefault(entry["path"], [0, 0])
            totals[0] += entry["grown_kib"]
            totals[1] += entry["requests"]
        left = doc.get("paths_other")
        if left:
            if other is None:
                other = dict(left)
            else:
                other["grown_kib"] += left["grown_kib"]
                other["requests"] += left["requests"]
    ranked = sorted(grown.items(), key=lambda item: (-item[1][0], item[0]))
    paths = [{"path": p, "grown_kib": g, "requests": r} for p, (g, r) in ranked[:PATHS_KEPT]]
    return paths, other


# -- /metrics ---------------------------------------------------------------------------


def merge_families(parts: list[tuple[int, str | None]]) -> Iterator[Any]:
    """Every frontend's families (text format), a ``frontend`` label on each sample."""
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    merged: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "wsgipool_frontend_up",
        "1 when the frontend answered this scrape (--frontends), else 0.",
        labels=["frontend"],
    )
    for index, text in parts:
        up.add_metric([str(index)], 1 if text is not None else 0)
        if text is None:
            continue
        for family in text_string_to_metric_families(text):
            target = merged.get(family.name)
            if target is None:
                target = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = target
            for sample in family.samples:
                labels = {**sample.labels, "frontend": str(index)}
                target.samples.append(
                    Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
                )
    yield up
    yield from merged.values()


def render_families(parts: list[tuple[int, str | None]]) -> bytes:
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    class _Collector:
        def collect(self) -> Iterator[Any]:
            return merge_families(parts)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)


# -- the process ----------------------------------------------------------------------


def bind(text: str, perms: int) -> tuple[socket.socket, str | None]:
    """The public metrics socket (and its unix path), bound by the arbiter; ConfigError if not."""
    from wsgipool.metrics.service import bind_listener

    return bind_listener(text, perms)


def serve(sock: socket.socket, sources: list[tuple[int, str]]) -> None:
    """Run the merged listener on `sock` until SIGTERM; `sources` are (index, unix path)."""
    asyncio.run(_serve(sock, sources))


async def _serve(sock: socket.socket, sources: list[tuple[int, str]]) -> None:
    import aiohttp
    from aiohttp import web

    from wsgipool.metrics import page

    no_cache = {"Cache-Control": "no-store"}

    async def fetch(path: str, route: str) -> tuple[int, bytes]:
        connector = aiohttp.UnixConnector(path=path)
        async with (
            aiohttp.ClientSession(connector=connector) as client,
            client.get(
                f"http://frontend{route}", timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
            ) as response,
        ):
            return response.status, await response.read()

    async def gather(route: str) -> list[tuple[int, tuple[int, bytes] | None]]:
        async def one(index: int, path: str) -> tuple[int, tuple[int, bytes] | None]:
            try:
                return index, await fetch(path, route)
            except (OSError, aiohttp.ClientError, TimeoutError):
                return index, None

        return list(await asyncio.gather(*(one(i, p) for i, p in sources)))

    async def stats_parts() -> list[Part]:
        parts: list[Part] = []
        for index, answer in await gather("/stats"):
            doc = None
            if answer is not None and answer[0] == 200:
                try:
                    doc = json.loads(answer[1])
                except ValueError:
                    doc = None
            parts.append((index, doc))
        return parts

    async def healthz(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n", headers=no_cache)

    async def readyz(_request: web.Request) -> web.StreamResponse:
        answers = await gather("/readyz")
        if any(a is not None and a[0] == 200 for _, a in answers):
            return web.Response(text="ready\n", headers=no_cache)
        return web.Response(status=503, text="not ready: no frontend ready\n", headers=no_cache)

    async def stats(_request: web.Request) -> web.StreamResponse:
        body = json.dumps(merge_stats(await stats_parts()))
        return web.Response(text=body, content_type="application/json", headers=no_cache)

    async def status_page(_request: web.Request) -> web.StreamResponse:
        html = page.render(merge_stats(await stats_parts()))
        return web.Response(text=html, content_type="text/html", headers=no_cache)

    async def metrics(_request: web.Request) -> web.StreamResponse:
        parts: list[tuple[int, str | None]] = []
        for index, answer in await gather("/metrics"):
            ok = answer is not None and answer[0] == 200
            parts.append((index, answer[1].decode("utf-8", "replace") if ok and answer else None))
        body = render_families(parts)
        response = web.Response(body=body, headers=no_cache)
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    app = web.Application()
    app.router.add_get("/", status_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock.setblocking(False)
    await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stop
    finally:
        await runner.cleanup()
