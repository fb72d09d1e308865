"""Run the benchmark: ``python -m bench`` or ``python bench/run.py`` (see bench/README.md).

For every workload and every server: start the server on 127.0.0.1 (its own
session, its own log), wait until it answers, check its answers, warm it up,
measure it with wrk while sampling the PSS of its process tree, check it again,
stop it.  Then the scenarios (recycling, leak under a memory limit, a worker
killed) for the servers that have the setting.  Results go to stdout (markdown)
and to bench/results/<date>-<host>.md and .json.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # `python bench/run.py`: import the package from the repository root, and keep
    # bench/ itself off sys.path (bench/profile.py would shadow the stdlib's).
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path[0] = str(_Path(__file__).resolve().parent.parent)

import argparse
import atexit
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import cputime, interleave, procs, report
from bench import wrk as wrk_mod
from bench.apps import workloads as workload_apps
from bench.checks import BENCH_WORKLOADS, WORKLOADS, Workload, check, one_request
from bench.procs import Sampler, ServerProcess, free_port, wait_for_workers
from bench.servers import (
    DEFAULT_SERVERS,
    SERVERS,
    SETS,
    Server,
    Settings,
    baseline_server,
    check_baseline,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
WORK = BENCH / ".work"
README = BENCH / "README.md"
SCENARIOS = ("recycle", "leak", "kill")
OVERHEAD_S = 4.0  # start, checks and stop of one server, roughly


class CellError(Exception):
    """A server that could not be measured (did not start, died, wrong worker count)."""


# -- command line ------------------------------------------------------------------------


def _names(
    text: str, known: list[str] | tuple[str, ...], what: str, also: list[str] | None = None
) -> list[str]:
    """Names from `text`; 'all' is `known`, and `also` names may be asked for by name."""
    if text in ("all", ""):
        return list(known)
    if text == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known and n not in (also or [])]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark wsgipool against its peers with wrk on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (-c)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (-t)")
    p.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, seconds")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    p.add_argument("--repeat", type=int, default=1, help="measurements per cell; median kept")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="with --repeat N: N rounds of the servers in rotation (A B C A B C), each "
        "started afresh; medians and per-round ratios to wsgipool reported",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes of every server")
    p.add_argument("--threads", type=int, default=4, help="threads per worker process")
    p.add_argument(
        "--servers",
        default="all",
        help=f"comma-separated, or 'all': {','.join(DEFAULT_SERVERS)} "
        f"(also: {','.join(n for n in SERVERS if n not in DEFAULT_SERVERS)})",
    )
    p.add_argument(
        "--workloads",
        default="all",
        help=f"comma-separated, 'all' or 'none': {','.join(BENCH_WORKLOADS)}",
    )
    p.add_argument(
        "--scenarios",
        default="all",
        help=f"comma-separated, 'all' or 'none': {','.join(SCENARIOS)}",
    )
    p.add_argument(
        "--set",
        choices=sorted(SETS),
        help="a named set of servers and workloads (no scenarios); "
        "asgi: the WSGI-to-ASGI adapters behind one uvicorn process; metrics: with and "
        "without /metrics; frontends: one frontend against two; floor: against a bare "
        "forwarder (bench/apps/forward.py)",
    )
    p.add_argument(
        "--scenario-workload",
        default="hello",
        choices=BENCH_WORKLOADS,
        help="the app of the recycle and kill scenarios",
    )
    p.add_argument("--max-requests", type=int, default=200, help="recycle scenario's limit")
    p.add_argument(
        "--leak-kib", type=int, default=64, help="leak scenario: KiB the app keeps per request"
    )
    p.add_argument(
        "--memory-limit",
        type=int,
        default=256,
        metavar="MIB",
        help="leak scenario: per-worker memory limit in MiB",
    )
    p.add_argument("--sample-interval", type=float, default=0.5, help="seconds between PSS samples")
    p.add_argument(
        "--startup-timeout", type=float, default=60, help="seconds for a server to answer"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another wsgipool checkout with its own DIR/.venv: adds the server "
        "wsgipool-base, run like wsgipool from DIR (measure a change against it)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    p.add_argument("--no-save", action="store_true", help="print the report, write no files")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="put this run's summary in bench/README.md (the final, full run)",
    )
    p.add_argument("--list", action="store_true", help="list servers, workloads and scenarios")
    return p


@dataclass
class Context:
    args: argparse.Namespace
    settings: Settings
    wrk: str
    workdir: Path
    base_env: dict[str, str]

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(extra)
        return env


def server_env(workdir: Path, leak_kib: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["BENCH_WORKDIR"] = str(workdir)
    env["BENCH_LEAK_KIB"] = str(leak_kib)
    for name in ("DJANGO_SETTINGS_MODULE", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"):
        env.pop(name, None)
    for name in list(env):
        if name.startswith(("GRANIAN_", "UVICORN_")):
            del env[name]
    return env


# -- one server, one workload ----------------------------------------------------------


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def wait_ready(server: ServerProcess, port: int, wl: Workload, timeout: float) -> None:
    """Until the server answers anything over HTTP; CellError if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        code = server.exited()
        if code is not None:
            raise CellError(f"exited with status {code} before answering: {server.log_tail(6)}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            one_request(conn, wl)
            return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise CellError(f"did not answer within {timeout:.0f} s: {server.log_tail(6)}")
        time.sleep(0.1)


def _start(
    ctx: Context, server: Server, wl: Workload, extra: list[str], log: Path
) -> tuple[ServerProcess, int, list[str]]:
    """Start and wait until it answers; one retry on a fresh port if it died at startup."""
    for attempt in range(2):
        port = free_port()
        argv, env_extra = server.build(ctx.settings, wl.app, port, extra)
        proc = ServerProcess(argv, log_path=log, env=ctx.env(env_extra), cwd=server.cwd or ROOT)
        try:
            wait_ready(proc, port, wl, ctx.args.startup_timeout)
            return proc, port, argv
        except CellError:
            died = proc.exited() is not None  # e.g. its port was taken meanwhile
            proc.stop(grace=1)
            if attempt or not died:
                raise
    raise AssertionError("unreachable")


def run_cell(
    ctx: Context,
    server: Server,
    wl: Workload,
    *,
    kind: str = "bench",
    extra: list[str] | None = None,
    setting: str = "",
    duration: float | None = None,
    warmup: float | None = None,
    kill_at: float | None = None,
    repeat: int | None = None,
    round_no: int | None = None,
) -> dict[str, Any]:
    args = ctx.args
    if repeat is None:
        repeat = args.repeat if kind == "bench" else 1
    duration = args.duration if duration is None else duration
    warmup = args.warmup if warmup is None else warmup
    cell: dict[str, Any] = {
        "kind": kind,
        "server": server.name,
        "workload": wl.name,
        "shape": server.shape(ctx.settings),
        "setting": setting,
        "status": "ok",
        "duration": duration,
    }
    suffix = ""
    if round_no is not None:
        cell["round"] = round_no
        suffix = f"-round{round_no}"
    log = ctx.workdir / f"{kind}-{wl.name}-{server.name}{suffix}.log"
    cell["log"] = _rel(log)
    started = time.monotonic()
    proc: ServerProcess | None = None
    try:
        proc, port, argv = _start(ctx, server, wl, list(extra or []), log)
        cell["command"] = argv
        expected = server.processes(ctx.settings)
        workers = wait_for_workers(proc, expected, timeout=20)
        cell["workers_start"] = workers
        if len(workers) < expected:
            raise CellError(f"{len(workers)} worker processes after 20 s, expected {expected}")
        problem = check(port, wl.name)
        if problem:
            cell.update(status="wrong answer", reason=problem)
            return cell
        script = wrk_mod.write_script(ctx.workdir, wl, inspect=kind != "bench")

        def load(seconds: float) -> wrk_mod.WrkRun:
            return wrk_mod.WrkRun(
                ctx.wrk,
                port=port,
                path=wl.path,
                script=script,
                duration=seconds,
                connections=args.connections,
                threads=args.wrk_threads,
                timeout=args.timeout,
            )

        if warmup > 0:
            load(warmup).wait()
            if proc.exited() is not None:
                raise CellError(f"exited during the warm-up: {proc.log_tail(6)}")
        before = {p.pid for p in proc.tree()}
        runs: list[tuple[wrk_mod.WrkResult, dict[str, Any] | None]] = []
        interval = args.sample_interval if kind == "bench" else min(args.sample_interval, 0.25)
        with Sampler(proc, interval) as sampler:
            for _ in range(repeat):
                cpu_before = cputime.read(proc.pid)
                run = load(duration)
                if kill_at is not None:
                    cell.update(_kill_one_worker(proc, kill_at))
                    if server.name == "wsgipool":
                        # Only the requests in flight on the killed worker may fail.
                        cell["allowed_failures"] = ctx.settings.threads
                result = run.wait()
                cpu_after = cputime.read(proc.pid)
                cpu = None
                if cpu_before is not None and cpu_after is not None:
                    cpu = cputime.per_request(cpu_after - cpu_before, result.requests)
                runs.append((result, cpu))
        if proc.exited() is not None:
            raise CellError(f"exited during the load: {proc.log_tail(6)}")
        runs_sorted = sorted(runs, key=lambda r: r[0].rps)
        chosen, chosen_cpu = runs_sorted[len(runs_sorted) // 2]
        cell["result"] = chosen.as_dict()
        cell["cpu"] = chosen_cpu
        cell["runs"] = [{**r.as_dict(), "cpu": c} for r, c in runs] if len(runs) > 1 else []
        cell["memory"] = sampler.peaks.as_dict()
        cell["new_worker_pids"] = len(sampler.peaks.pids - before)
        end_workers = wait_for_workers(proc, expected, timeout=10 if kind == "kill" else 0)
        cell["workers_end"] = end_workers
        if kill_at is not None:
            victim = cell.get("killed_pid")
            cell["replaced"] = len(end_workers) >= expected and victim not in end_workers
        after = check(port, wl.name)
        if after:
            cell["after_problem"] = after
            if kind == "bench":
                cell.update(status="wrong answer", reason=f"after the load: {after}")
    except CellError as exc:
        cell.update(status="failed", reason=str(exc))
    except RuntimeError as exc:  # wrk failed
        cell.update(status="failed", reason=str(exc))
    finally:
        wrk_mod.kill_all()
        if proc is not None:
            proc.stop()
            if cell["status"] != "ok":
                cell["log_tail"] = proc.log_tail(20)
        cell["elapsed_s"] = round(time.monotonic() - started, 1)
    return cell


def _kill_one_worker(proc: ServerProcess, after: float) -> dict[str, Any]:
    """Wait `after` seconds, then SIGKILL one worker process of `proc`, chosen by PID."""
    time.sleep(after)
    workers = proc.worker_pids()
    if not workers:
        raise CellError("no worker process to kill")
    victim = workers[0]
    try:
        psutil.Process(victim).send_signal(signal.SIGKILL)
    except psutil.Error as exc:
        raise CellError(f"could not kill worker {victim}: {exc}") from None
    return {"killed_pid": victim, "killed_at_s": after}


# -- the run ------------------------------------------------------------------------------


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def describe(cell: dict[str, Any]) -> str:
    head = f"{cell['kind']:>7} {cell['workload']:<7} {cell['server']:<22}"
    if cell["status"] != "ok":
        return f"{head} {cell['status'].upper()}: {cell.get('reason', '')}"
    r = cell["result"]
    pss = cell["memory"]["peak_tree_pss"] / report.MIB
    cpu = cell.get("cpu") or {}
    return (
        f"{head} {r['rps']:>10,.0f} req/s  p50 {r['p50_ms']:>8.2f} ms  p99 {r['p99_ms']:>8.2f} ms"
        f"  errors {report.errors_text(r):<12}  PSS {pss:,.0f} MiB"
        f"  CPU µs/req tree {report.us_text(cpu.get('tree_us_per_request'))}"
        f" main {report.us_text(cpu.get('main_us_per_request'))}  ({cell['elapsed_s']:.0f} s)"
    )


def plan(ctx: Context, servers: list[Server], workloads: list[str], scenarios: list[str]):
    """The cells to run, in order: (description, callable) pairs, and the scenario gaps."""
    args = ctx.args
    jobs: list[tuple[float, Any]] = []
    not_applicable: list[str] = []
    for name in workloads:
        wl = WORKLOADS[name]
        if args.interleave:
            # Round after round of every server, each started afresh: A B C A B C ...
            estimate = args.warmup + args.duration + OVERHEAD_S
            for round_no in range(1, args.repeat + 1):
                for server in servers:
                    if server.serves(name):
                        jobs.append(
                            (
                                estimate,
                                lambda s=server, w=wl, r=round_no: run_cell(
                                    ctx, s, w, repeat=1, round_no=r
                                ),
                            )
                        )
            continue
        for server in servers:
            if server.serves(name):
                estimate = args.warmup + args.duration * args.repeat + OVERHEAD_S
                jobs.append((estimate, lambda s=server, w=wl: run_cell(ctx, s, w)))
    scenario_wl = WORKLOADS[args.scenario_workload]
    for scenario in scenarios:
        for server in servers:
            if server.only is not None:
                continue  # the native handlers: hello references, no WSGI
            if scenario == "recycle":
                if server.recycle is None:
                    not_applicable.append(f"recycle: {server.label} has no max-requests setting")
                    continue
                duration = max(args.duration, server.recycle_min_duration)
                setting = server.recycle_note.format(n=args.max_requests)
                extra = server.recycle(ctx.settings, args.max_requests)
                jobs.append(
                    (
                        duration + OVERHEAD_S,
                        lambda s=server, e=extra, st=setting, d=duration: run_cell(
                            ctx,
                            s,
                            scenario_wl,
                            kind="recycle",
                            extra=e,
                            setting=st,
                            duration=d,
                            warmup=0,
                        ),
                    )
                )
            elif scenario == "leak":
                if server.memory_limit is None:
                    not_applicable.append(f"leak: {server.label} has no memory limit")
                    continue
                extra = server.memory_limit(args.memory_limit)
                jobs.append(
                    (
                        args.duration + OVERHEAD_S,
                        lambda s=server, e=extra: run_cell(
                            ctx,
                            s,
                            WORKLOADS["leak"],
                            kind="leak",
                            extra=e,
                            setting=" ".join(e),
                            warmup=0,
                        ),
                    )
                )
            elif scenario == "kill":
                if server.kill is None:
                    not_applicable.append(
                        f"kill: {server.label} runs in one process (killing it kills the server)"
                    )
                    continue
                jobs.append(
                    (
                        args.duration + OVERHEAD_S + 10,
                        lambda s=server: run_cell(
                            ctx,
                            s,
                            scenario_wl,
                            kind="kill",
                            extra=list(s.kill or []),
                            setting=s.kill_note or "(defaults)",
                            warmup=0,
                            kill_at=args.duration / 2,
                        ),
                    )
                )
    return jobs, not_applicable


def _unique_stem(out: Path, stem: str) -> str:
    candidate, n = stem, 1
    while (out / f"{candidate}.md").exists() or (out / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def save(results: dict[str, Any], text: str, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", results["machine"]["host"]) or "host"
    stem = _unique_stem(out, f"{results['date']}-{host}")
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(text + "\n")
    js.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return md, js


README_BEGIN = "<!-- BEGIN LATEST RESULTS (written by python -m bench --update-readme) -->"
README_END = "<!-- END LATEST RESULTS -->"


def update_readme(results: dict[str, Any], md_path: Path | None) -> None:
    text = README.read_text()
    if README_BEGIN not in text or README_END not in text:
        progress(f"bench: {README} has no results markers; not updated")
        return
    body = report.summary_markdown(results, _rel(md_path) if md_path else None)
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    README.write_text(f"{head}{README_BEGIN}\n{body}\n{README_END}{tail}")


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """Stop every server and wrk on the way out: normal end, exception, Ctrl-C, SIGTERM."""

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    atexit.register(procs.cleanup_all)
    atexit.register(wrk_mod.kill_all)
    try:
        yield
    finally:
        wrk_mod.kill_all()
        procs.cleanup_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.set:
        set_servers, set_workloads = SETS[args.set]
        args.servers, args.workloads = ",".join(set_servers), ",".join(set_workloads)
        args.scenarios = "none"
    if args.baseline is not None:
        problem = check_baseline(args.baseline.resolve())
        if problem:
            parser.error(f"--baseline: {problem}")
        SERVERS["wsgipool-base"] = baseline_server(args.baseline.resolve())
    try:
        server_names = _names(args.servers, DEFAULT_SERVERS, "server", also=list(SERVERS))
        workload_names = _names(args.workloads, BENCH_WORKLOADS, "workload")
        scenario_names = _names(args.scenarios, SCENARIOS, "scenario")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.list:
        for name in SERVERS:
            print(f"server    {name:<24} {SERVERS[name].label}")
        for name in BENCH_WORKLOADS:
            print(f"workload  {name:<24} {WORKLOADS[name].summary}")
        for name in SCENARIOS:
            print(f"scenario  {name}")
        return 0
    if args.connections < 1 or args.duration < 1 or args.workers < 1 or args.threads < 1:
        parser.error("--connections, --duration, --workers and --threads must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        wrk = wrk_mod.find_wrk()
    except wrk_mod.WrkMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    skipped: list[str] = []
    servers: list[Server] = []
    for name in server_names:
        missing = SERVERS[name].available()
        if missing:
            skipped.append(f"{SERVERS[name].label}: {missing}")
            progress(f"bench: skipping {name}: {missing}")
        else:
            servers.append(SERVERS[name])
    now = dt.datetime.now()
    workdir = WORK / f"run-{now:%Y%m%d-%H%M%S}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        args=args,
        settings=Settings(workers=args.workers, threads=args.threads),
        wrk=wrk,
        workdir=workdir,
        base_env=server_env(workdir, args.leak_kib),
    )
    os.environ["BENCH_WORKDIR"] = str(workdir)
    workload_apps.ensure_file()  # in BENCH_WORKDIR: no server pays for it

    results: dict[str, Any] = {
        "date": f"{now:%Y-%m-%d}",
        "started": now.isoformat(timespec="seconds"),
        "machine": report.machine(wrk_mod.wrk_version(wrk)),
        "settings": {
            "duration": args.duration,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "timeout": args.timeout,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "interleave": args.interleave,
            "workers": args.workers,
            "threads": args.threads,
            "max_requests": args.max_requests,
            "leak_kib": args.leak_kib,
            "memory_limit_mib": args.memory_limit,
            "scenario_workload": args.scenario_workload,
            "sample_interval": args.sample_interval,
        },
        "servers": [s.name for s in servers],
        "workloads": workload_names,
        "scenarios": scenario_names,
        "skipped": skipped,
        "cells": [],
        "workdir": _rel(workdir),
    }
    jobs, not_applicable = plan(ctx, servers, workload_names, scenario_names)
    results["scenario_not_applicable"] = not_applicable
    total = sum(estimate for estimate, _ in jobs)
    progress(
        f"bench: {len(jobs)} measurements, about {total / 60:.0f} min; logs in {_rel(workdir)}"
    )
    started = time.monotonic()
    status = 0
    with cleanup_on_exit():
        try:
            for i, (_, job) in enumerate(jobs, 1):
                cell = job()
                results["cells"].append(cell)
                progress(f"[{i:>3}/{len(jobs)}] {describe(cell)}")
        except KeyboardInterrupt:
            progress("bench: interrupted; every server stopped; writing what was measured")
            results["interrupted"] = True
            status = 130
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.interleave:
        interleave.fold(results)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["targets"] = report.targets(results)
    text = report.markdown(results)
    print(text)
    md_path = None
    if not args.no_save:
        md_path, js_path = save(results, text, args.out)
        progress(f"bench: wrote {_rel(md_path)} and {_rel(js_path)}")
    if args.update_readme:
        update_readme(results, md_path)
    with contextlib.suppress(OSError):
        (workdir / workload_apps.FILE_NAME).unlink()
    return status


if __name__ == "__main__":
    sys.exit(main())
