"""What `--metrics-bind` adds to each request, piece by piece, timed in one process.

``python -m bench.observe_cost [--number 100000] [--repeat 7]``

The interleaved runs of ``--set metrics`` measure the whole cost, but on a
shared 2-core machine their spread (±10% and more) is wider than the 3% the
cost should stay under.  This times, best of `--repeat` runs of `--number`
calls each (the best run is the one least disturbed by other processes), each
piece of work that turning metrics on adds to a request:

- in the worker: the RSS change of the request (`wsgipool.worker.rss`: one
  read of /proc/self/statm when requests run one after another; the two reads
  it took before, for comparison);
- in the main process: the request counter wrapper around the handler (an
  extra coroutine, two clock reads, a dict increment, a histogram bucket), the
  queue-wait histogram, and the leak finder's bookkeeping (the route of the
  target, the worker's and the pool's growth tables).

The sum is a floor, not the cost: in a tight loop the code and the kernel's
/proc path stay in the caches, and inside a running worker the same read of
/proc/self/statm costs about 4 times as much (5.5 to 6.5 µs instead of 1.5).
bench/README.md, "The cost of observing", has both.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from wsgipool.growth import GrowthTable, normalise_path, route_of
from wsgipool.metrics.requests import WAIT_BUCKETS, Histogram, RequestStats
from wsgipool.worker.rss import RssMeter, RssProbe


def best(fn: Callable[[], Any], number: int, repeat: int) -> float:
    """CPU µs per call, best of `repeat` runs (CPU time: time off the CPU does not count)."""
    runs = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
    return min(runs) / number * 1e6


def wrapper_cost(number: int, repeat: int) -> float:
    """µs per request that RequestStats.wrap adds around a handler that returns at once."""

    class Request:
        method = "GET"

    class Response:
        status = 200

    request, response = Request(), Response()

    async def handler(_request: Any) -> Any:
        return response

    async def loop(fn: Callable[[Any], Any], n: int) -> None:
        for _ in range(n):
            await fn(request)

    def timed(fn: Callable[[Any], Any]) -> float:
        runs = []
        for _ in range(repeat):
            started = time.process_time()
            asyncio.run(loop(fn, number))
            runs.append(time.process_time() - started)
        return min(runs) / number * 1e6

    return timed(RequestStats().wrap(handler)) - timed(handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.observe_cost", description=__doc__)
    p.add_argument("--number", type=int, default=100_000, help="calls per run")
    p.add_argument("--repeat", type=int, default=7, help="runs; the best is kept")
    args = p.parse_args(argv)
    n, r = args.number, args.repeat

    probe = RssProbe()
    meter = RssMeter(probe)
    meter.prime()

    def one_request() -> None:
        meter.end(meter.start())

    def two_reads() -> None:
        probe.read()
        probe.read()

    worker = [
        ("RSS change, one read (RssMeter, requests one after another)", best(one_request, n, r)),
    ]
    before = [("RSS change, two reads (before: start and end)", best(two_reads, n, r))]

    worker_table, pool_table = GrowthTable(10), GrowthTable(50)
    wait = Histogram(WAIT_BUCKETS)

    def note() -> None:
        path = route_of(b"/items/123?page=2")
        worker_table.add(path, 0)
        pool_table.add(path, 0)

    def note_before() -> None:
        path = normalise_path(b"/items/123?page=2")
        worker_table.add(path, 0)
        pool_table.add(path, 0)

    main_process = [
        ("request counter wrapper (RequestStats.wrap)", wrapper_cost(n, r)),
        ("queue-wait histogram", best(lambda: wait.observe(0.0004), n, r)),
        ("leak finder: route of the target, two growth tables", best(note, n, r)),
    ]
    before.append(("leak finder, before: normalise_path each time", best(note_before, n, r)))

    print(f"µs per request, best of {r} runs of {n:,} calls ({sys.version.split()[0]})")
    print()
    print("| where | piece | µs |")
    print("|---|---|---:|")
    for where, rows in (("worker", worker), ("main", main_process)):
        for name, us in rows:
            print(f"| {where} | {name} | {us:.2f} |")
    total_worker = sum(us for _, us in worker)
    total_main = sum(us for _, us in main_process)
    print(
        f"| **total** | worker {total_worker:.2f} + main {total_main:.2f} | "
        f"**{total_worker + total_main:.2f}** |"
    )
    print()
    print("For comparison (the code before):")
    print()
    for name, us in before:
        print(f"- {name}: {us:.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
