"""What operators do to a running server: signals, reloads in a loop, a bounded SIGTERM.

Real servers, real signals, real clients on 127.0.0.1 (see tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.cli import not_zombie
from tests.integration.supervised import (
    LoadLoop,
    failures,
    fetch,
    gone,
    log_lines,
    still_running,
)
from tests.polling import wait_for

MIB = 1 << 20


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "[ERROR]" in line or "Traceback" in line]


# -- signals ---------------------------------------------------------------------------------

#: gunicorn's signals that leave the server running; TERM, INT and QUIT stop it (tested below
#: and in test_supervisor.py / test_cli.py).
_KEEP_SERVING = [
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCHLD,
]


def test_every_operator_signal_under_load_fails_no_request(run_server):
    server = run_server("faultapp:app", "--workers", "2", "--threads", "2")
    load = LoadLoop(server.port, "/slow?ms=5", threads=4, limit=100000, seconds=90)
    try:
        assert load.wait_for_count(20, 30)
        for sig in _KEEP_SERVING:
            before = load.count
            server.signal(sig)
            if sig == signal.SIGHUP:  # a reload: wait until it has replaced both workers
                assert wait_for(
                    lambda: len(log_lines(server, r"worker \d+ stopped \(reload\)")) == 2, 30
                ), server.log
            assert load.wait_for_count(before + 20, 30), (sig, server.log)
            assert server.proc.poll() is None, (sig, server.log)
    finally:
        results = load.stop()
    failed = failures(results)
    assert failed == [], [(r.status, r.error) for r in failed[:10]]
    assert fetch(server.port, "/hello").status == 200
    log = server.log
    assert "SIGUSR2 ignored" in log, log
    assert "SIGWINCH ignored" in log, log
    assert _errors(log) == [], log
    print(f"\nsignals: {len(results)} requests under {len(_KEEP_SERVING)} signals, 0 failed")


# -- reloads -------------------------------------------------------------------------------


def test_fifty_reloads_under_load_log_no_error_and_fail_no_request(run_server):
    """Each SIGHUP retires a template: its channel must only be closed on the event loop."""
    # --preload: a reload is then a new template and a fork, the quickest there is.
    server = run_server("faultapp:app", "--workers", "1", "--threads", "2", "--preload")
    load = LoadLoop(server.port, "/slow?ms=2", threads=3, limit=1000000, seconds=120)
    started = time.monotonic()
    reloads = 0
    try:
        assert load.wait_for_count(10, 30)
        for reloads in range(1, 51):
            server.signal(signal.SIGHUP)
            # Awaited: the old worker stopped and its template was asked to go.
            assert wait_for(
                lambda n=reloads: len(log_lines(server, r"worker \d+ stopped \(reload\)")) >= n,
                20,
                interval=0.02,
            ), server.log
            if time.monotonic() - started > 30:  # a slow machine: fewer, each awaited
                break
    finally:
        results = load.stop()
    failed = failures(results)
    assert failed == [], [(r.status, r.error) for r in failed[:10]]
    time.sleep(0.5)  # the last template's exit
    errors = _errors(server.log)
    assert errors == [], "\n".join(errors)
    assert reloads >= 10, reloads  # the race hit about one reload in three
    print(f"\nreloads: {reloads} under load, {len(results)} requests, 0 failed, 0 error lines")


# -- a bounded SIGTERM -------------------------------------------------------------------------


_EXECUTORS = pytest.mark.parametrize(
    "executor",
    [["--workers", "2", "--threads", "2"], ["--workers", "0", "--threads", "4"]],
    ids=["processes", "threads"],
)


def _slow_requests_in_flight(server, marks, count: int, ms: int) -> list:
    """`count` requests sleeping `ms` ms each, all begun in the app; their futures."""
    pool = ThreadPoolExecutor(count)
    futures = [
        pool.submit(fetch, server.port, f"/slow?ms={ms}&touch=r{n}", 30) for n in range(count)
    ]
    pool.shutdown(wait=False)
    assert wait_for(lambda: all((marks / f"r{n}").exists() for n in range(count)), 10), server.log
    return futures


@_EXECUTORS
def test_a_second_sigterm_during_the_drain_changes_nothing(run_server, tmp_path, executor):
    """Two SIGTERMs (an arbiter forwarding what systemd's control-group kill sent too, an
    impatient operator): the second must not end the process by the default action in
    the middle of its drain. Every request in flight is answered and the exit is 0."""
    marks = tmp_path / "marks"
    marks.mkdir()
    server = run_server("faultapp:app", *executor, env={"FAULTAPP_MARK_DIR": str(marks)})
    futures = _slow_requests_in_flight(server, marks, 3, 1500)
    server.signal(signal.SIGTERM)
    assert wait_for(lambda: "stopping (gracefully)" in server.log, 5), server.log
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.log
    results = [future.result(30) for future in futures]
    assert [r.status for r in results] == [200, 200, 200], [(r.status, r.error) for r in results]
    assert "SIGTERM: already stopping gracefully" in server.log, server.log
    assert "app thread(s) still running" not in server.log, server.log
    assert _errors(server.log) == [], server.log


def test_sigterm_to_every_process_at_once_loses_nothing(run_server, tmp_path):
    """systemd's default KillMode (control-group) signals the main process, the template
    and the workers at once. The template ignores it and each worker asks to be
    replaced, so the requests running and those queued behind them are all answered,
    even with retries off (a killed worker's request would get 502)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    no_retries = ["--workers", "2", "--threads", "2", "--retry-methods", ""]
    server = run_server("faultapp:app", *no_retries, env={"FAULTAPP_MARK_DIR": str(marks)})
    running = _slow_requests_in_flight(server, marks, 4, 1500)
    with ThreadPoolExecutor(2) as pool:
        queued = [pool.submit(fetch, server.port, "/slow?ms=100", 30) for _ in range(2)]
        time.sleep(0.2)  # the two wait in the main process's queue
        for process in [psutil.Process(server.pid), *server.descendants()]:
            os.kill(process.pid, signal.SIGTERM)
        assert server.wait(30) == 0, server.log
        results = [future.result(30) for future in running + queued]
    statuses = [r.status for r in results]
    assert statuses == [200] * 6, ([(r.status, r.error) for r in results], server.log)
    assert len(log_lines(server, r"worker \d+ recycling \(sigterm\)")) == 2, server.log
    assert _errors(server.log) == [], server.log


@_EXECUTORS
def test_sigquit_during_the_drain_stops_at_once(run_server, tmp_path, executor):
    """SIGTERM, then SIGQUIT while a 10 s request drains: the stop turns quick (the
    workers are killed, the connection closed) instead of waiting out the request."""
    marks = tmp_path / "marks"
    marks.mkdir()
    server = run_server("faultapp:app", *executor, env={"FAULTAPP_MARK_DIR": str(marks)})
    (slow,) = _slow_requests_in_flight(server, marks, 1, 10000)
    server.signal(signal.SIGTERM)
    assert wait_for(lambda: "stopping (gracefully)" in server.log, 5), server.log
    signalled = time.monotonic()
    server.signal(signal.SIGQUIT)
    code = server.wait(15)
    took = time.monotonic() - signalled
    assert code == 0, server.log
    assert took < 6.0, (took, server.log)  # a generous bound, not the 10 s request
    assert slow.result(30).status != 200
    assert "SIGQUIT during the graceful stop: stopping at once" in server.log, server.log


@_EXECUTORS
def test_graceful_timeout_bounds_sigterm_and_cuts_the_long_request(run_server, tmp_path, executor):
    marks = tmp_path / "marks"
    marks.mkdir()
    server = run_server(
        "faultapp:app",
        *executor,
        "--graceful-timeout",
        "2s",
        "--shutdown-timeout",  # longer than the whole stop: it never extends it, and says so
        "25s",
        env={"FAULTAPP_MARK_DIR": str(marks)},
    )
    assert (
        "--shutdown-timeout 25s is longer than --graceful-timeout 2s, which bounds the whole "
        "stop: requests in flight get at most 2s after SIGTERM"
    ) in server.log, server.log
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(fetch, server.port, "/slow?ms=10000&touch=long", 30)
        assert wait_for((marks / "long").exists, 10), server.log
        processes = server.descendants()
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(15)
        took = time.monotonic() - signalled
        result = slow.result(30)
    assert code == 0, server.log
    assert took < 6.0, (took, server.log)  # 2 s and a generous bound, not the 10 s request
    assert result.status != 200, result  # cut: no answer, or not a whole one
    assert "graceful timeout: 1 " in server.log, server.log
    # Thread mode exits without the cut app thread, and says so (threaded.py); in a worker
    # the thread dies with its process.
    cut_thread = "1 app thread(s) still running at the end of the graceful timeout"
    assert (cut_thread in server.log) == (executor[1] == "0"), server.log
    assert wait_for(lambda: gone(processes), 10), still_running(processes)
    print(f"\nSIGTERM with a 10 s request in flight, --graceful-timeout 2s: exit after {took:.2f}s")


# -- preload and hooks -----------------------------------------------------------------------


class TcpSink:
    """A tiny TCP server on 127.0.0.1 standing in for a database: it records who connects."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[int] = []
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            self.peers.append(peer[1])

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def sink():
    server = TcpSink()
    try:
        yield server
    finally:
        server.close()


def _answers_from_each_worker(server, workers: int) -> dict[int, dict]:
    """Concurrent slow requests until every worker has answered at least once."""
    by_pid: dict[int, dict] = {}
    with ThreadPoolExecutor(workers * 2) as pool:
        for _ in range(10):
            results = list(pool.map(lambda _i: fetch(server.port, "/?ms=200"), range(workers * 2)))
            assert failures(results) == [], [(r.status, r.error) for r in results]
            for result in results:
                by_pid[result.json["pid"]] = result.json
            if len(by_pid) == workers:
                break
    assert len(by_pid) == workers, by_pid
    return by_pid


@pytest.mark.parametrize(
    "mode, own",
    [
        (["--no-preload"], True),
        (["--preload", "--post-fork", "importtime:reconnect"], True),
        (["--preload"], False),  # the hazard --preload documents: one socket, no thread
    ],
    ids=["no-preload", "preload+post-fork", "preload-alone"],
)
def test_import_time_socket_and_thread_per_worker(run_server, sink, mode, own):
    server = run_server(
        "importtime:app",
        "--workers",
        "2",
        "--threads",
        "1",
        *mode,
        env={"IMPORTTIME_PORT": str(sink.port)},
    )
    answers = _answers_from_each_worker(server, 2)
    ports = {answer["port"] for answer in answers.values()}
    if own:
        assert len(ports) == 2, answers  # a connection of its own in each worker
        for pid, answer in answers.items():
            assert answer["conn_pid"] == pid and answer["thread_alive"], answers
    else:
        assert len(ports) == 1, answers  # one import-time socket shared by both workers
        for pid, answer in answers.items():
            assert answer["conn_pid"] != pid and not answer["thread_alive"], answers
    assert ports <= set(sink.peers), (ports, sink.peers)


def test_hooks_run_in_their_documented_processes(run_server, sink, tmp_path):
    marks = tmp_path / "hooks.txt"
    server = run_server(
        "importtime:app",
        "--workers",
        "2",
        "--threads",
        "1",
        "--on-starting",
        "importtime:on_starting",
        "--when-ready",
        "importtime:when_ready",
        "--post-fork",
        "importtime:post_fork",
        "--worker-exit",
        "importtime:worker_exit",
        env={"IMPORTTIME_PORT": str(sink.port), "IMPORTTIME_HOOKS": str(marks)},
    )
    assert wait_for(lambda: marks.exists() and "when_ready" in marks.read_text(), 10)
    workers = set(_answers_from_each_worker(server, 2))
    lines = marks.read_text().splitlines()
    assert lines[0] == f"on_starting pid={server.pid} workers=2", lines
    assert f"when_ready pid={server.pid} sockets=1" in lines, lines
    forks = [line for line in lines if line.startswith("post_fork")]
    assert {int(line.split()[1][4:]) for line in forks} == workers, (lines, workers)
    for line in forks:
        _, pid, info_pid, number, generation, preload = line.split()
        assert pid[4:] == info_pid[9:], line  # called in the worker it describes
        assert number in ("number=1", "number=2") and generation == "generation=1", line
        assert preload == "preload=False", line
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.log
    exits = [line for line in marks.read_text().splitlines() if line.startswith("worker_exit")]
    assert {int(line.split()[1][4:]) for line in exits} == workers, exits
    assert _errors(server.log) == [], server.log


def test_a_failing_post_fork_fails_the_worker_which_is_replaced(run_server, sink):
    server = run_server(
        "importtime:app",
        "--workers",
        "2",
        "--threads",
        "1",
        "--post-fork",
        "importtime:fail_first",
        env={"IMPORTTIME_PORT": str(sink.port)},
    )
    assert wait_for(lambda: len(log_lines(server, r"worker \d+ ready in")) >= 2, 20), server.log
    log = server.log
    assert "[ERROR] post_fork hook importtime:fail_first failed" in log, log
    assert "the cache is not reachable from worker 1" in log, log
    assert log_lines(server, r"worker \d+ died .*exit code 4; .*; restarting"), log
    assert len(_answers_from_each_worker(server, 2)) == 2


def test_a_post_fork_that_fails_in_every_worker_stops_the_boot(run_server, sink):
    server = run_server(
        "importtime:app",
        *("--workers", "2", "--threads", "1", "--post-fork", "importtime:fail_always"),
        env={"IMPORTTIME_PORT": str(sink.port)},
        wait=False,
    )
    assert server.wait(60) == 2, server.log
    log = server.log
    errors = [line for line in log.splitlines() if line.startswith("wsgipool: error:")]
    assert len(errors) == 1 and "no worker could start: 5 in a row died" in errors[0], log
    assert "the cache is not reachable from worker" in log  # the cause, logged by the worker
    assert "listening on" not in log, log  # never bound: a proxy or systemd sees the failure
    # Every process it started is gone: the template and each worker the log names.
    started = [int(pid) for pid in re.findall(r"(?:template|worker) (\d+) ", log)]
    assert len(set(started)) >= 6, log  # the template and 5 workers
    assert not [pid for pid in set(started) if not_zombie(pid)], log


@pytest.mark.parametrize("mode", ["--preload", "--no-preload"])
def test_an_app_that_fails_at_import_stops_the_boot_with_one_line(run_server, mode):
    server = run_server("faultapp_broken:app", "--workers", "2", mode, wait=False)
    assert server.wait(30) == 2, server.log
    log = server.log
    errors = [line for line in log.splitlines() if line.startswith("wsgipool: error:")]
    assert len(errors) == 1 and "the database is unreachable at import time" in errors[0], log
    assert "ready in" not in log and "died" not in log, log  # no worker, no fork loop


def test_a_bad_hook_stops_the_boot_with_one_line(run_server, sink):
    server = run_server(
        "importtime:app",
        "--workers",
        "1",
        "--post-fork",
        "importtime:no_such_hook",
        env={"IMPORTTIME_PORT": str(sink.port)},
        wait=False,
    )
    assert server.wait(30) == 2, server.log
    assert "post_fork (--post-fork): module 'importtime' has no 'no_such_hook'" in server.log


def test_a_worker_that_cannot_import_new_code_backs_off_while_the_old_ones_serve(
    run_server, tmp_path
):
    """--no-preload: code broken on disk after boot fails new workers, with the crash backoff."""
    module = tmp_path / "lateapp.py"
    module.write_text("from faultapp import app\n")
    server = run_server("lateapp:app", "--workers", "1", "--threads", "2", cwd=tmp_path)
    module.write_text("raise ImportError('half-deployed release')\n")
    server.signal(signal.SIGTTIN)
    assert wait_for(lambda: "crash backoff" in server.log, 15), server.log
    time.sleep(2)
    log = server.log
    cannot = log_lines(server, r"\[ERROR\] worker \d+: cannot import 'lateapp:app': ImportError")
    assert cannot and "half-deployed release" in cannot[0].string, log
    assert len(log_lines(server, r"worker \d+ died .*exit code 2")) < 12, log  # not a fork loop
    assert fetch(server.port, "/hello").status == 200  # the worker that imported serves on
    assert server.proc.poll() is None


def test_a_full_collection_in_a_preloaded_worker_copies_none_of_the_apps_pages(run_server):
    """With --preload the template's objects (the app's, about 20 MiB here) leave the
    collector's view before any fork: a worker's full collection, which writes the
    header of every object it tracks, would otherwise copy every page it shares."""
    server = run_server("bulkyapp:app", "--workers", "1", "--threads", "1", "--preload")
    status, _, body = server.request("GET", "/")
    assert status == 200
    worker = psutil.Process(int(body))
    before = worker.memory_full_info().uss
    status, _, _ = server.request("GET", "/collect")
    assert status == 200
    grown = worker.memory_full_info().uss - before
    assert grown < 4 * MIB, f"the worker's own memory grew {grown / MIB:.1f} MiB"
