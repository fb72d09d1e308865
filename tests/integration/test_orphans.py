"""No process outlives the main process, however it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

from tests.cli import not_zombie
from tests.polling import wait_for


def _gone(pids: list[int], timeout: float) -> list[int]:
    """PIDs still alive (and not zombies) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if not_zombie(pid)]
        time.sleep(0.05)
    return alive


def test_main_process_killed_takes_template_and_workers_with_it(run_server):
    server = run_server("envapp:app", "--workers", "3")
    assert server.request("GET", "/")[0] == 200
    children = [child.pid for child in server.descendants()]
    assert len(children) >= 4, children  # the template and three workers (and maybe a tracker)
    workers = server.worker_pids()
    assert len(workers) == 3

    server.signal(signal.SIGKILL)
    server.wait(10)

    assert _gone(children, timeout=10.0) == []


def test_workers_are_in_their_own_process_group(run_server):
    """A terminal's Ctrl-C (SIGINT to the foreground group) reaches the main process only."""
    server = run_server("envapp:app", "--workers", "2")
    main_group = os.getpgid(server.pid)
    workers = server.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        assert os.getpgid(pid) != main_group


# Makes the server a child subreaper, then execs it (the attribute survives exec): orphans
# come to it as they would to a container's PID 1, without needing a PID namespace.
_SUBREAPER = (
    sys.executable,
    "-c",
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


def test_workers_orphaned_to_the_main_process_are_reaped(run_server):
    """As a container's PID 1, the main process adopts the workers of a dead template."""
    server = run_server("envapp:app", "--workers", "2", launcher=_SUBREAPER)
    assert server.request("GET", "/")[0] == 200
    workers = server.worker_pids()
    assert len(workers) == 2
    template = psutil.Process(workers[0]).ppid()
    assert template != server.pid

    os.kill(template, signal.SIGKILL)
    main = psutil.Process(server.pid)
    assert wait_for(lambda: all(psutil.Process(w).ppid() == server.pid for w in workers), 10)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    def zombies() -> list[int]:
        found = []
        for child in main.children():
            with contextlib.suppress(psutil.NoSuchProcess):  # reaped since the listing
                if child.status() == psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
        return found

    assert wait_for(lambda: not (set(zombies()) & set(workers)), 15), zombies()
    for pid in workers:  # the exit status came from the reap, not from the dead template
        assert wait_for(lambda pid=pid: f"{pid} died" in server.log, 15), server.log
        line = next(x for x in server.log.splitlines() if f"worker {pid} died" in x)
        assert "killed by SIGKILL" in line, line
    assert wait_for(lambda: server.request("GET", "/")[0] == 200, 30)


_NEVER_SHUT_DOWN = """
import asyncio

from wsgipool import ProcessExecutor, WSGIHandler


def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]


async def main() -> None:
    executor = ProcessExecutor(workers=2, threads=1)
    WSGIHandler(app, executor=executor)
    await executor.start()
    print(*executor.template_pids, *(w.pid for w in executor.workers), flush=True)
    # ... and the program ends without executor.shutdown().


asyncio.run(main())
"""


def test_a_program_that_never_shuts_its_pool_down_still_exits_alone(tmp_path):
    """An embedding program that ends without `shutdown()`: at interpreter exit
    multiprocess's handler SIGTERMs the template, which ignores SIGTERM, and waits for
    it; the template's own exit hook SIGKILLs its group first, so the program exits and
    leaves no process behind."""
    script = tmp_path / "never_shut_down.py"
    script.write_text(_NEVER_SHUT_DOWN)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        pids = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(pids) == 3, pids  # the template and two workers
        assert proc.wait(20) == 0
        assert _gone(pids, timeout=10.0) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
