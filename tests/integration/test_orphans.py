"""No process outlives the main process, however it ends."""

from __future__ import annotations

import os
import signal
import time

import psutil


def _gone(pids: list[int], timeout: float) -> list[int]:
    """PIDs still alive (and not zombies) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.05)
    return alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
