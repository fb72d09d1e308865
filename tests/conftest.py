"""Shared fixtures: real servers in subprocesses on 127.0.0.1, always cleaned up.

`run_server` starts ``python -m wsgipool serve ...`` in its own process group
and waits until it answers.  On teardown it sends SIGTERM, then kills the whole
tree by PID: the main process group and every descendant recorded while it ran
(the template and its workers live in a process group of their own).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings

# The suite runs in parallel on small, shared machines: a property that takes
# 300 ms once under load is not a failure (hypothesis's default deadline is 200 ms).
settings.register_profile("wsgipool", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wsgipool")

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
ROOT = TESTS.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, bytes]:
    """One request to 127.0.0.1:`port` on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def request_once(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on `conn`, which is closed after: (status, lower-cased headers, body)."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class ServerProcess:
    """A `python -m MODULE` server subprocess (`wsgipool serve` by default) and what it printed."""

    def __init__(
        self,
        args: list[str],
        port: int | None,
        log_path: Path,
        env: dict[str, str],
        cwd: Path,
        launcher: tuple[str, ...] = (),
        module: str = "wsgipool",
    ) -> None:
        self.args = args
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [*launcher, sys.executable, "-m", module, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.known: set[int] = {self.pid}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        """Live processes started by the server (template, workers), remembered for cleanup."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.known.update(child.pid for child in children)
        return children

    def worker_pids(self) -> list[int]:
        """PIDs of worker processes: the children of the template process."""
        out: list[int] = []
        for child in self.descendants():
            try:
                if child.name() and child.ppid() != self.pid:
                    out.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(out)

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            if "serving with" in self.log:
                self.descendants()
                return
            time.sleep(0.05)
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.port is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        return request_once(conn, method, path, body, headers)

    def signal(self, sig: int) -> None:
        self.descendants()
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to the group and every process it ever started."""
        self.descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in self.known:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONWARNINGS", None)
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for AF_UNIX paths (at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="wp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers: ``run_server("envapp:app", "--workers", "2")``; all stopped at teardown.

    `launcher` goes before ``python -m wsgipool`` (a program that execs it, such as
    systemd-socket-activate, so the PID stays the server's).
    """
    started: list[ServerProcess] = []

    def start(
        app: str,
        *args: str,
        wait: bool = True,
        bind: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        launcher: tuple[str, ...] = (),
    ) -> ServerProcess:
        port = free_port() if bind else None
        argv = ["serve", app, *args]
        if bind:
            argv += ["--bind", f"127.0.0.1:{port}"]
        log_path = tmp_path / f"server-{len(started)}.log"
        server = ServerProcess(argv, port, log_path, server_env(env), cwd or tmp_path, launcher)
        started.append(server)
        if wait:
            server.wait_until_serving()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


EXECUTORS = [
    pytest.param(["--workers", "0", "--threads", "4"], id="threads"),
    pytest.param(["--workers", "2", "--threads", "2"], id="processes"),
]


@pytest.fixture(params=EXECUTORS)
def executor_args(request: pytest.FixtureRequest) -> list[str]:
    """CLI arguments for each executor: every environ/response test runs against both."""
    return list(request.param)
