"""Profile wsgipool's request path under load with py-spy: the main process and one worker.

``python -m bench.profile [--workload hello] [--duration 10] [--format speedscope]``

Starts ``wsgipool serve`` (process mode) on 127.0.0.1, loads it with wrk, and
meanwhile records two py-spy profiles: the main process (aiohttp frontend,
dispatcher, supervisor) and one worker (reader thread, request threads, the app).
Writes into bench/results/:

- ``profile-<date>-<host>-<workload>-main.<ext>`` and ``...-worker.<ext>``: the
  profiles (speedscope JSON: open in https://www.speedscope.app; or a flame graph
  SVG with ``--format flamegraph``; or collapsed stacks with ``--format raw``);
- ``profile-<date>-<host>-<workload>.md``: the command, the load's numbers and,
  for speedscope and raw, the functions with the most samples in each process.

py-spy attaches with ptrace: run as the same user as the server (the harness
starts it, so that holds); in a container it may need the SYS_PTRACE capability.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    # `python bench/profile.py`: import the package from the repository root, and keep
    # bench/ off sys.path (this file would shadow the stdlib's `profile`).
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path[0] = str(_Path(__file__).resolve().parent.parent)

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench import procs, report
from bench import wrk as wrk_mod
from bench.apps import workloads as workload_apps
from bench.checks import BENCH_WORKLOADS, WORKLOADS, check
from bench.procs import ServerProcess, free_port, wait_for_workers
from bench.run import ROOT, WORK, CellError, server_env, wait_ready
from bench.servers import SERVERS, Settings

RESULTS = ROOT / "bench" / "results"
EXTENSIONS = {"speedscope": "speedscope.json", "flamegraph": "svg", "raw": "txt"}


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Record py-spy profiles of wsgipool's main process and one worker under load.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workload", default="hello", choices=BENCH_WORKLOADS)
    p.add_argument("--duration", type=int, default=10, help="seconds of profiling under load")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--format", choices=list(EXTENSIONS), default="speedscope")
    p.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy does not pause the processes to sample (less overhead, less exact)",
    )
    p.add_argument(
        "--gil",
        action="store_true",
        help="only samples of threads holding the GIL (CPU spent in Python, no waiting)",
    )
    p.add_argument(
        "--metrics",
        action="store_true",
        help="serve with --metrics-bind (the wsgipool-metrics server of --set metrics)",
    )
    p.add_argument("--top", type=int, default=25, help="functions listed per process")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p


def _spy(py_spy: str, pid: int, out: Path, args: argparse.Namespace) -> subprocess.Popen[str]:
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(args.duration)]
    argv += ["--rate", str(args.rate), "--format", args.format, "--output", str(out)]
    if args.nonblocking:
        argv.append("--nonblocking")
    if args.gil:
        argv.append("--gil")
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


# -- summaries ----------------------------------------------------------------------------


def _stacks_speedscope(path: Path) -> list[tuple[list[str], float]]:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    names = []
    for frame in frames:
        where = frame.get("file", "")
        where = _short(where)
        line = frame.get("line")
        names.append(f"{frame['name']} ({where}{':' + str(line) if line else ''})")
    out: list[tuple[list[str], float]] = []
    for profile in data["profiles"]:
        thread = f"[{profile.get('name', 'thread')}]"
        for sample, weight in zip(profile["samples"], profile["weights"], strict=False):
            out.append(([thread, *(names[i] for i in sample)], float(weight)))
    return out


def _stacks_raw(path: Path) -> list[tuple[list[str], float]]:
    out: list[tuple[list[str], float]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append(([_short(f) for f in stack.split(";")], float(count)))
    return out


def _short(text: str) -> str:
    text = re.sub(r"/\S*?/site-packages/", "", text)
    text = re.sub(r"/\S*?/lib/python3\.\d+/", "", text)
    return text.replace(str(ROOT) + "/", "")


def _function(frame: str) -> str:
    """A frame without its line number: 'name (file)'."""
    return re.sub(r":\d+\)$", ")", frame)


def summarize(stacks: list[tuple[list[str], float]], top: int) -> list[str]:
    total = sum(weight for _, weight in stacks)
    if not total:
        return ["(no samples)"]
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for sampled, weight in stacks:
        stack = sampled
        if stack and stack[0].startswith("["):
            threads[stack[0]] += weight
            stack = stack[1:]
        if stack:
            own[_function(stack[-1])] += weight
        for function in {_function(frame) for frame in stack}:
            inclusive[function] += weight
    lines = [
        f"{len(stacks):,} stacks sampled, all threads together; % of those samples.",
        "",
        "| own % | with callees % | function |",
        "|---:|---:|---|",
    ]
    for function, weight in own.most_common(top):
        lines.append(f"| {weight / total:.1%} | {inclusive[function] / total:.1%} | `{function}` |")
    if threads:
        lines += ["", "Samples per thread:", "", "| % | thread |", "|---:|---|"]
        for thread, weight in threads.most_common():
            lines.append(f"| {weight / total:.1%} | {thread.strip('[]')} |")
    lines += ["", "Most time including callees:", "", "| with callees % | function |"]
    lines.append("|---:|---|")
    for function, weight in inclusive.most_common(top):
        lines.append(f"| {weight / total:.1%} | `{function}` |")
    return lines


# -- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        wrk = wrk_mod.find_wrk()
    except wrk_mod.WrkMissing as exc:
        print(f"bench.profile: {exc}", file=sys.stderr)
        return 2
    py_spy = find_py_spy()
    if py_spy is None:
        print("bench.profile: py-spy not found: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    now = dt.datetime.now()
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()) or "host"
    tag = "-metrics" if args.metrics else ""
    stem = f"profile-{now:%Y-%m-%d}-{host}-{args.workload}{tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    ext = EXTENSIONS[args.format]
    outputs = {role: args.out / f"{stem}-{role}.{ext}" for role in ("main", "worker")}
    workdir = WORK / f"profile-{now:%Y%m%d-%H%M%S}-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_WORKDIR"] = str(workdir)
    workload_apps.ensure_file()
    wl = WORKLOADS[args.workload]
    settings = Settings(workers=args.workers, threads=args.threads)
    port = free_port()
    server_name = "wsgipool-metrics" if args.metrics else "wsgipool"
    argv_server, extra_env = SERVERS[server_name].build(settings, wl.app, port, [])
    env = server_env(workdir, 64)
    env.update(extra_env)
    server = ServerProcess(argv_server, log_path=workdir / "server.log", env=env, cwd=ROOT)
    spies: dict[str, subprocess.Popen[str]] = {}
    try:
        wait_ready(server, port, wl, 60)
        workers = wait_for_workers(server, args.workers, 20)
        if not workers:
            raise CellError("no worker process")
        problem = check(port, wl.name)
        if problem:
            raise CellError(f"wrong answer: {problem}")
        script = wrk_mod.write_script(workdir, wl)

        def load(seconds: float) -> wrk_mod.WrkRun:
            return wrk_mod.WrkRun(
                wrk,
                port=port,
                path=wl.path,
                script=script,
                duration=seconds,
                connections=args.connections,
                threads=args.wrk_threads,
                timeout=10,
            )

        load(1).wait()  # warm-up
        workers = server.worker_pids()
        pids = {"main": server.pid, "worker": workers[0]}
        run = load(args.duration + 2)
        time.sleep(0.5)
        for role, pid in pids.items():
            spies[role] = _spy(py_spy, pid, outputs[role], args)
        spy_output = {}
        for role, spy in spies.items():
            out, _ = spy.communicate(timeout=args.duration + 60)
            spy_output[role] = out
            if spy.returncode != 0:
                raise CellError(f"py-spy ({role}) exited with {spy.returncode}: {out.strip()}")
        result = run.wait()
    except CellError as exc:
        print(f"bench.profile: {exc}\n{server.log_tail(10)}", file=sys.stderr)
        return 1
    finally:
        for spy in spies.values():
            if spy.poll() is None:
                spy.kill()
        wrk_mod.kill_all()
        server.stop()
        procs.cleanup_all()

    lines = [
        f"# Profile of wsgipool's request path: {args.workload}, {now:%Y-%m-%d} on {host}",
        "",
        f"- Command: `{report.command_line()}`",
        f"- Server: `{' '.join(argv_server[1:])}`",
        f"- Load: `{' '.join(Path(a).name if a == wrk else a for a in result.command)}`: "
        f"{result.rps:,.0f} req/s (slowed down by the sampling), p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms, errors {result.errors}",
        f"- py-spy {report.versions().get('py-spy')}, {args.rate} samples/s, "
        f"{args.duration} s, format {args.format}" + (", non-blocking" if args.nonblocking else ""),
        f"- Machine: {report.cpu_model()}, {os.cpu_count()} CPUs",
        "",
    ]
    for role, pid in pids.items():
        title = {
            "main": "Main process (aiohttp frontend, dispatcher, supervisor)",
            "worker": "One worker (reader thread, request threads, the app)",
        }[role]
        lines += [f"## {title}: PID {pid}", "", f"Profile: `{outputs[role].name}`", ""]
        if args.format == "speedscope":
            lines += summarize(_stacks_speedscope(outputs[role]), args.top)
        elif args.format == "raw":
            lines += summarize(_stacks_raw(outputs[role]), args.top)
        lines.append("")
    (workdir / workload_apps.FILE_NAME).unlink(missing_ok=True)
    summary = args.out / f"{stem}.md"
    summary.write_text("\n".join(lines))
    print("\n".join(lines))
    for path in (*outputs.values(), summary):
        print(f"bench.profile: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
