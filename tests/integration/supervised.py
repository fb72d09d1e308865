"""Clients under load and process and log checks, shared by test_supervisor and test_lifecycle."""

from __future__ import annotations

import http.client
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from tests.clientthreads import ClientThreads
from tests.polling import wait_for

# -- clients -------------------------------------------------------------------------


@dataclass
class Result:
    path: str
    sent: float
    done: float
    status: int | None
    body: bytes
    error: str | None = None

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def fetch(port: int, path: str, timeout: float = 60.0) -> Result:
    """One GET on a new connection; a failure to get any answer is recorded, not raised."""
    sent = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return Result(path, sent, time.monotonic(), response.status, body)
    except (OSError, http.client.HTTPException) as exc:
        return Result(path, sent, time.monotonic(), None, b"", repr(exc))
    finally:
        conn.close()


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status != 200]


class LoadLoop(ClientThreads):
    """`threads` clients sending `path` back to back, until stopped, `limit` or `seconds`."""

    def __init__(
        self, port: int, path: str | Callable[[int], str], threads: int, limit: int, seconds: float
    ) -> None:
        self.port = port
        self.path = path if callable(path) else (lambda _i, fixed=path: fixed)
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.results: list[Result] = []
        self._counter = itertools.count()
        super().__init__(threads)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            index = next(self._counter)
            if index >= self.limit:
                return
            result = fetch(self.port, self.path(index))
            with self._lock:
                self.results.append(result)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for_count(self, count: int, timeout: float) -> bool:
        return bool(wait_for(lambda: self.count >= count or self.finished, timeout))

    def stop(self, timeout: float = 60.0) -> list[Result]:
        self._join(timeout)
        assert self.finished, "load threads did not finish"
        with self._lock:
            return list(self.results)

    def join(self, timeout: float) -> list[Result]:
        for thread in self._threads:
            thread.join(max(0.0, timeout))
        return self.stop()


# -- processes -----------------------------------------------------------------------


def gone(processes: list[psutil.Process]) -> bool:
    """Whether every process is gone (exited, or a zombie about to be reaped)."""
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def still_running(processes: list[psutil.Process]) -> list[str]:
    out = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{process.pid} {process.cmdline()}")
        except psutil.NoSuchProcess:
            pass
    return out


def log_lines(server, pattern: str) -> list[re.Match[str]]:
    return [m for m in (re.search(pattern, line) for line in server.log.splitlines()) if m]
