"""Running the `wsgipool` command in tests: a command that exits by itself, its one-line errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from tests.conftest import server_env


def run_cli(
    argv: list[str], cwd: Path, timeout: float = 30.0, env: dict[str, str] | None = None
) -> tuple[int, str, str, list[int]]:
    """Run a command that should exit by itself; (code, stdout, stderr, PIDs left alive).

    Every process it started is remembered while it runs and killed at the end,
    so a server that does not exit cannot outlive the test.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=server_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    known: set[int] = set()
    out: list[bytes] = []

    def collect() -> None:
        out.extend(proc.communicate())

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while reader.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                known.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
            reader.join(0.02)
        assert not reader.is_alive(), f"{argv} did not exit within {timeout}s"
        # Whatever it started must be gone too (bounded wait for the last exits).
        alive: list[int] = []
        for _ in range(100):
            alive = [pid for pid in known if psutil.pid_exists(pid) and not_zombie(pid)]
            if not alive:
                break
            time.sleep(0.05)
        return proc.returncode, out[0].decode(), out[1].decode(), alive
    finally:
        kill_tree(proc, known)


def kill_tree(proc: subprocess.Popen[bytes], known: Iterable[int]) -> None:
    """SIGKILL `proc`'s process group and every PID it was seen to start; reap `proc`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in known:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wsgipool_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wsgipool", *args]


def assert_one_line_error(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("wsgipool: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
