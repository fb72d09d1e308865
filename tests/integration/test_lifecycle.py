"""What operators do to a running server: signals, reloads in a loop, a bounded SIGTERM.

Real servers, real signals, real clients on 127.0.0.1 (see tests/conftest.py).
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.test_supervisor import (
    LoadLoop,
    failures,
    fetch,
    gone,
    log_lines,
    still_running,
)
from tests.polling import wait_for


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
    server = run_server("faultapp:app", "--workers", "1", "--threads", "2")
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
            if time.monotonic() - started > 60:
                break
    finally:
        results = load.stop()
    failed = failures(results)
    assert failed == [], [(r.status, r.error) for r in failed[:10]]
    time.sleep(0.5)  # the last template's exit
    errors = _errors(server.log)
    assert errors == [], "\n".join(errors)
    assert reloads >= 20, reloads
    print(f"\nreloads: {reloads} under load, {len(results)} requests, 0 failed, 0 error lines")


# -- a bounded SIGTERM -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "executor",
    [["--workers", "2", "--threads", "2"], ["--workers", "0", "--threads", "4"]],
    ids=["processes", "threads"],
)
def test_graceful_timeout_bounds_sigterm_and_cuts_the_long_request(run_server, tmp_path, executor):
    marks = tmp_path / "marks"
    marks.mkdir()
    server = run_server(
        "faultapp:app",
        *executor,
        "--graceful-timeout",
        "2s",
        env={"FAULTAPP_MARK_DIR": str(marks)},
    )
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
    assert wait_for(lambda: gone(processes), 10), still_running(processes)
    print(f"\nSIGTERM with a 10 s request in flight, --graceful-timeout 2s: exit after {took:.2f}s")
