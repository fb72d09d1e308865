"""The scaling run of issue 13: req/s and event-loop load for 1, 2, 4, ... workers,
with one frontend and with two, on a machine with many cores.

    python -m bench.scaling --workers 1,2,4,8,16 --frontends 1,2 --workloads hello,django

Every cell is one server started afresh (the harness's `run_cell`: answers
checked, warm-up, one measured wrk run).  Besides req/s and CPU per request it
records each event loop's busy fraction (its own CPU seconds over the run's
seconds): a frontend near 1.0 is the ceiling, and a second frontend should then
raise req/s.  `--peers granian` adds a peer at each worker count for scale.
The JSON is rewritten after every cell, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench import report
from bench import wrk as wrk_mod
from bench.apps import workloads as workload_apps
from bench.checks import WORKLOADS
from bench.run import WORK, Context, cleanup_on_exit, progress, run_cell, server_env
from bench.servers import SERVERS, Settings


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"needs numbers of 1 or more: {text!r}")
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scaling",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workers", type=_counts, default=[1, 2, 4, 8, 16], help="worker counts")
    p.add_argument("--frontends", type=_counts, default=[1, 2], help="frontend counts")
    p.add_argument("--threads", type=int, default=4, help="threads per worker")
    p.add_argument("--workloads", default="hello,django", help="comma-separated")
    p.add_argument("--peers", default="", help="comma-separated peer servers, e.g. granian")
    p.add_argument("--duration", type=int, default=5, help="seconds of load per cell")
    p.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load first")
    p.add_argument("--connections", type=int, default=256, help="wrk connections (-c)")
    p.add_argument("--wrk-threads", type=int, default=4, help="wrk threads (-t)")
    p.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, seconds")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.add_argument("--out", type=Path, required=True, help="the JSON file written")
    return p


def _harness_args(args: argparse.Namespace) -> argparse.Namespace:
    """The attributes `run_cell` reads from the main harness's arguments."""
    return argparse.Namespace(
        duration=args.duration,
        warmup=args.warmup,
        repeat=1,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        timeout=args.timeout,
        startup_timeout=args.startup_timeout,
        sample_interval=0.5,
    )


def summary(cell: dict[str, Any]) -> dict[str, Any]:
    """The figures of one cell that the table shows."""
    out = {k: cell[k] for k in ("server", "workload", "workers", "frontends", "status")}
    if cell["status"] != "ok":
        out["reason"] = cell.get("reason", "")
        return out
    cpu = cell.get("cpu") or {}
    loops = cpu.get("loops_s") or []
    out.update(
        rps=round(cell["result"]["rps"]),
        errors=report.errors_text(cell["result"]),
        tree_us=cpu.get("tree_us_per_request"),
        loop_us=round(sum(loops) * 1e6 / cpu["requests"], 1) if loops and cpu["requests"] else None,
        busiest_loop=round(max(loops) / cell["duration"], 2) if loops else None,
        pss_mib=round(cell["memory"]["peak_tree_pss"] / report.MIB),
    )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | server | workers | req/s | CPU µs/req tree | loops µs/req | busiest loop"
        " | PSS MiB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['workload']} | {r['server']} | {r['workers']} | {r['status']}: "
                f"{r.get('reason', '')[:80]} | | | | | |"
            )
            continue
        busiest = "" if r["busiest_loop"] is None else f"{r['busiest_loop']:.2f}"
        lines.append(
            f"| {r['workload']} | {r['server']} | {r['workers']} | {r['rps']:,} "
            f"| {report.us_text(r['tree_us'])} | {report.us_text(r['loop_us'])} "
            f"| {busiest} "
            f"| {r['pss_mib']} | {r['errors']} |"
        )
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """The Markdown report of a run: where and how it ran, then the table."""
    m = results["machine"]
    st = results["settings"]
    return "\n".join(
        [
            f"# wsgipool scaling run: {results['date']}",
            "",
            f"- Command: `{m['command']}`",
            f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['kernel']};"
            f" {m['python']}; load average at start {m['load_average_at_start'][0]:.2f},"
            f" at the end {results.get('load_average_at_end', [0.0])[0]:.2f}",
            f"- Load: {m['wrk']}, `-t{st['wrk_threads']} -c{st['connections']}"
            f" -d{st['duration']}s`, {st['warmup']} s of warm-up; every cell a server"
            f" started afresh, {st['threads']} threads per worker",
            f"- Revision: {m['git']}",
            "",
            "CPU µs/req tree: the server's whole process tree; loops µs/req: wsgipool's"
            " event loops (the frontends) together; busiest loop: the busiest frontend's"
            " own CPU seconds over the run's seconds (1.00: it used a whole core, the"
            " ceiling); PSS: peak of the whole tree.",
            "",
            markdown(results["rows"]),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workloads = [name for name in args.workloads.split(",") if name]
    unknown = [name for name in workloads if name not in WORKLOADS]
    peers = [name for name in args.peers.split(",") if name]
    unknown += [name for name in peers if name not in SERVERS]
    if unknown:
        print(f"bench.scaling: unknown workload or server: {', '.join(unknown)}", file=sys.stderr)
        return 2
    wrk = wrk_mod.find_wrk()
    now = dt.datetime.now()
    workdir = WORK / f"scaling-{now:%Y%m%d-%H%M%S}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_WORKDIR"] = str(workdir)
    workload_apps.ensure_file()
    results: dict[str, Any] = {
        "date": f"{now:%Y-%m-%d}",
        "machine": report.machine(wrk_mod.wrk_version(wrk)),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [],
        "cells": [],
    }

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    plan: list[tuple[str, int, int, list[str]]] = []  # (workload, workers, frontends, extra)
    for name in workloads:
        for workers in args.workers:
            for frontends in args.frontends:
                if frontends <= workers:  # each frontend owns at least one worker
                    extra = ["--frontends", str(frontends)] if frontends > 1 else []
                    plan.append((name, workers, frontends, extra))
            for peer in peers:
                plan.append((name, workers, 0, [peer]))
    with cleanup_on_exit():
        for i, (name, workers, frontends, extra) in enumerate(plan, 1):
            ctx = Context(
                args=_harness_args(args),
                settings=Settings(workers=workers, threads=args.threads),
                wrk=wrk,
                workdir=workdir,
                base_env=server_env(workdir, 64),
            )
            server = SERVERS[extra[0]] if frontends == 0 else SERVERS["wsgipool"]
            cell = run_cell(ctx, server, WORKLOADS[name], extra=[] if frontends == 0 else extra)
            cell.update(workers=workers, frontends=frontends)
            if frontends:
                cell["server"] = f"wsgipool {frontends} frontend{'s' if frontends > 1 else ''}"
            row = summary(cell)
            results["cells"].append(cell)
            results["rows"].append(row)
            save()
            progress(f"[{i}/{len(plan)}] {json.dumps(row)}")
    results["load_average_at_end"] = list(os.getloadavg())
    save()
    text = render(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
