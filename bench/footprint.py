"""How fast a worker starts and how much memory it adds, for the test Django project.

    .venv/bin/python -m bench.footprint [--workers 4] [--requests 200] [--preload | --no-preload]

Starts ``wsgipool serve djangoproj.wsgi:application`` (tests/apps) on
127.0.0.1, warms every worker with real requests (Django imports lazily on the
first request), then reads:

- each worker's start time, from its "ready in N ms" log line (fork from the
  template to its HELLO: with --no-preload, the default, that includes the
  worker's own import of the app), and the template's import time;
- each process's USS (memory no other process shares) and PSS, with psutil;
- one recycle under load: SIGTTIN adds a worker, whose ready time is read too.

Results go to stdout as markdown; docs/architecture.md quotes them.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "apps"
MIB = 1024 * 1024


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="import the app in the template and fork (default: each worker imports it)",
    )
    args = parser.parse_args(argv)

    port = _free_port()
    data = tempfile.mkdtemp(prefix="wsgipool-footprint-")
    env = dict(os.environ, PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}", DJANGOPROJ_DATA=data)
    log_path = Path(data) / "server.log"
    argv = [sys.executable, "-m", "wsgipool", "serve", "djangoproj.wsgi:application"]
    argv += ["--workers", str(args.workers), "--threads", "2", "--bind", f"127.0.0.1:{port}"]
    argv += ["--preload" if args.preload else "--no-preload"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data, start_new_session=True
        )
    known: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while "serving with" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        idle_tree = psutil.Process(server.pid).children(recursive=True)
        idle = [p.memory_full_info().uss / MIB for p in idle_tree if p.ppid() != server.pid]
        for _ in range(args.requests):  # every worker imports Django's request path lazily
            if _get(port, "/") != 200:
                raise SystemExit("the Django project does not answer 200 on /")
        main_process = psutil.Process(server.pid)
        tree = [main_process, *main_process.children(recursive=True)]
        known.update(p.pid for p in tree)
        template = [p for p in tree if p.ppid() == server.pid]
        workers = [p for p in tree if p not in template and p is not main_process]
        os.kill(server.pid, signal.SIGTTIN)  # one more worker: a start under way
        deadline = time.monotonic() + 30
        while log_path.read_text().count(" ready in ") <= args.workers:
            if time.monotonic() > deadline:
                raise SystemExit("the worker added by SIGTTIN did not start within 30s")
            time.sleep(0.05)
        log = log_path.read_text()
        imports = re.findall(r"template \d+ imported the app in (\d+) ms", log)
        ready = [float(ms) for ms in re.findall(r"worker \d+ ready in ([\d.]+) ms", log)]
        mode = "--preload" if args.preload else "--no-preload"
        print(
            f"# Worker footprint: the test Django project, {args.workers} workers x 2 threads, "
            f"{mode}\n"
        )
        where = "once, before any worker" if args.preload else "a check; each worker imports it"
        print(f"- template imported the app in {imports[0]} ms ({where})")
        print(
            f"- worker start (fork to ready), {len(ready)} starts: median "
            f"{statistics.median(ready):.1f} ms, max {max(ready):.1f} ms"
        )
        print(
            f"- after {args.requests} requests (Django's request path imported in each worker):\n"
        )
        print("| process | USS MiB | PSS MiB | RSS MiB |")
        print("|---|---:|---:|---:|")
        rows = [("main (aiohttp)", main_process), *[("template", p) for p in template]]
        rows += [(f"worker {p.pid}", p) for p in workers]
        for name, process in rows:
            info = process.memory_full_info()
            print(
                f"| {name} | {info.uss / MIB:.1f} | {info.pss / MIB:.1f} | {info.rss / MIB:.1f} |"
            )
        uss = [p.memory_full_info().uss / MIB for p in workers]
        print(
            f"\nunique memory per worker (USS): idle median {statistics.median(idle):.1f} MiB, "
            f"after the requests median {statistics.median(uss):.1f} MiB"
        )
    finally:
        for pid in [server.pid, *known]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
