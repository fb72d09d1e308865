"""Server processes: start in their own session, track every descendant, always clean up.

Each server is started with ``start_new_session=True`` (and, on Linux, a
parent-death signal, so that it dies with the harness even when the harness is
killed with SIGKILL), and every process seen in its tree is remembered (as a
psutil.Process, so a PID that was reused by an unrelated process is never
signalled).  `ServerProcess.stop()` asks politely
(SIGTERM to the server process), then freezes what is left with SIGSTOP (so
nothing forks any more), kills its process group and every remembered process
with SIGKILL.  `cleanup_all()` does that for every server still running; the
harness calls it in a ``finally`` block, at exit and on SIGTERM/SIGINT.
Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_LIVE: list[ServerProcess] = []
_LIVE_LOCK = threading.Lock()

# Processes of a server's tree that are plumbing, not workers.
_HELPER_MARKERS = ("resource_tracker", "semaphore_tracker", "forkserver")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: SIGKILL this process if the harness dies, even by SIGKILL (no finally runs then)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def popen_options() -> dict[str, object]:
    """Own session (so a terminal's Ctrl-C reaches the harness only), and death with it."""
    options: dict[str, object] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _die_with_parent
    return options


# A last resort for when the harness is killed with SIGKILL (no `finally` runs): a
# small process, in a session of its own, holds the read end of a pipe from the
# harness and is told the process group of every server as it starts (+PGID) and
# as it is stopped (-PGID).  When the pipe closes, however the harness ended, it
# kills the groups still listed, which takes the workers that outlive their
# server process (granian's and uvicorn's do) along.
_WATCHDOG = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    sign, pgid = line[:1], int(line[1:])
    if sign == "+":
        groups.add(pgid)
    else:
        groups.discard(pgid)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Watchdog:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                if self._proc is None:
                    self._proc = subprocess.Popen(
                        [sys.executable, "-c", _WATCHDOG],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        text=True,
                        start_new_session=True,
                    )
                assert self._proc.stdin is not None
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
            except OSError:
                pass

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")


watchdog = _Watchdog()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server command running in its own session, with its log in a file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str],
        cwd: Path,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            **popen_options(),  # type: ignore[arg-type]
        )
        self.pid = self.proc.pid
        watchdog.watch(self.pid)  # its process group: it leads a new session
        self._known: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        with contextlib.suppress(psutil.Error):
            self._remember(psutil.Process(self.pid))
        with _LIVE_LOCK:
            _LIVE.append(self)

    # -- the tree ---------------------------------------------------------------

    def _remember(self, process: psutil.Process) -> None:
        with self._lock:
            self._known.setdefault(process.pid, process)

    def tree(self) -> list[psutil.Process]:
        """The live processes of the server (itself first), all remembered for stop()."""
        out: list[psutil.Process] = []
        seen: set[int] = set()
        with self._lock:
            roots = list(self._known.values())
        for process in roots:
            try:
                if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                family = [process, *process.children(recursive=True)]
            except psutil.Error:
                continue
            for member in family:
                if member.pid not in seen:
                    seen.add(member.pid)
                    self._remember(member)
                    out.append(member)
        out.sort(key=lambda p: (p.pid != self.pid, p.pid))
        return out

    def worker_pids(self) -> list[int]:
        """Worker processes: the leaves of the tree below the server process, minus helpers.

        gunicorn, granian and uvicorn fork or spawn workers from the server
        process; wsgipool forks them from its template process.  A single-process
        server has none.
        """
        out: list[int] = []
        for process in self.tree():
            if process.pid == self.pid:
                continue
            try:
                if process.children():
                    continue
                cmdline = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if any(marker in cmdline for marker in _HELPER_MARKERS):
                continue
            out.append(process.pid)
        return sorted(out)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def exited(self) -> int | None:
        return self.proc.poll()

    # -- stopping ---------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM and `grace` seconds to exit; then SIGKILL to everything it ever started."""
        try:
            self.tree()
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace)
            self._kill_everything()
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            watchdog.forget(self.pid)
            self._log.close()
            with _LIVE_LOCK:
                if self in _LIVE:
                    _LIVE.remove(self)

    def _kill_everything(self) -> None:
        # Freeze first, so that no process forks a new one while we kill the others.
        stopped: set[int] = set()
        for _ in range(10):
            fresh = [p for p in self.tree() if p.pid not in stopped]
            if not fresh:
                break
            for process in fresh:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signal.SIGSTOP)
                stopped.add(process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with self._lock:
            remembered = list(self._known.values())
        for process in remembered:
            # psutil refuses to signal a PID that now belongs to another process.
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            psutil.wait_procs([p for p in remembered if p.pid != self.pid], timeout=3)


def cleanup_all() -> None:
    """Stop every server this process started that is still running (idempotent)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(grace=2.0)


@dataclass
class MemoryPeaks:
    """Peaks seen by a `Sampler`, in bytes."""

    tree_pss: int = 0
    tree_rss: int = 0
    process_rss: int = 0  # the largest single process, for the leak scenario
    processes: int = 0
    samples: int = 0
    pids: set[int] = field(default_factory=set)

    def as_dict(self) -> dict[str, int]:
        return {
            "peak_tree_pss": self.tree_pss,
            "peak_tree_rss": self.tree_rss,
            "peak_process_rss": self.process_rss,
            "peak_processes": self.processes,
            "samples": self.samples,
            "distinct_pids": len(self.pids),
        }


class Sampler:
    """Samples the PSS of a server's whole process tree in a thread, keeps the peaks."""

    def __init__(self, server: ServerProcess, interval: float = 0.5) -> None:
        self.server = server
        self.interval = interval
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # one last look, after the load

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        pss = rss = biggest = count = 0
        for process in self.server.tree():
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue
            pss += int(getattr(info, "pss", info.rss))
            rss += int(info.rss)
            biggest = max(biggest, int(info.rss))
            count += 1
            self.peaks.pids.add(process.pid)
        peaks = self.peaks
        peaks.tree_pss = max(peaks.tree_pss, pss)
        peaks.tree_rss = max(peaks.tree_rss, rss)
        peaks.process_rss = max(peaks.process_rss, biggest)
        peaks.processes = max(peaks.processes, count)
        peaks.samples += 1


def wait_for_workers(server: ServerProcess, expected: int, timeout: float) -> list[int]:
    """Wait until the server has `expected` worker processes (or the time is up)."""
    deadline = time.monotonic() + timeout
    pids = server.worker_pids()
    while len(pids) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = server.worker_pids()
    return pids
