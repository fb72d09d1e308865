"""Smoke test of the benchmark suite: every workload app answers correctly on wsgipool.

No wrk here (CI may not have it): the answers are checked with http.client, by the
same checks the harness runs before it measures a server, for about a second per
workload.  Also: the harness's own start/stop code leaves no process behind, and
its report is built from a wrk summary line without error.
"""

from __future__ import annotations

import http.client
import threading
import time

import psutil
import pytest

from bench import report
from bench.checks import WORKLOADS, check, one_request, validate
from bench.procs import ServerProcess, free_port, wait_for_workers
from bench.run import ROOT, server_env, wait_ready
from bench.servers import SERVERS, SETS, Settings
from bench.wrk import parse

SMOKE_SECONDS = 1.0
CLIENTS = 2


@pytest.fixture(scope="session")
def bench_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Where the workloads keep their files (the 10 MiB file, the Django database)."""
    workdir = tmp_path_factory.mktemp("bench-work")
    return {"BENCH_WORKDIR": str(workdir), "BENCH_LEAK_KIB": "4"}


def _hammer(port: int, name: str, seconds: float) -> tuple[int, list[str]]:
    """Requests from CLIENTS kept-alive connections for `seconds`; every answer checked."""
    wl = WORKLOADS[name]
    deadline = time.monotonic() + seconds
    counts = [0] * CLIENTS
    problems: list[str] = []

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline and not problems:
                status, headers, body = one_request(conn, wl)
                problem = validate(name, status, headers, body)
                if problem:
                    problems.append(problem)
                counts[index] += 1
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return sum(counts), problems


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workload_answers_correctly_on_wsgipool(run_server, bench_env, name):
    server = run_server(WORKLOADS[name].app, "--workers", "2", "--threads", "2", env=bench_env)
    assert check(server.port, name) is None
    served, problems = _hammer(server.port, name, SMOKE_SECONDS)
    assert not problems, problems[:3]
    assert served >= 2


def test_harness_start_and_stop_leave_no_process(tmp_path, bench_env):
    settings = Settings(workers=2, threads=2)
    wl = WORKLOADS["hello"]
    port = free_port()
    argv, extra = SERVERS["wsgipool"].build(settings, wl.app, port, [])
    env = server_env(tmp_path, 4)
    env.update(extra, **bench_env)
    server = ServerProcess(argv, log_path=tmp_path / "server.log", env=env, cwd=ROOT)
    tree: list[psutil.Process] = []
    try:
        wait_ready(server, port, wl, 30)
        workers = wait_for_workers(server, settings.workers, 20)
        assert len(workers) == settings.workers, server.log
        assert check(port, "hello") is None
        tree = server.tree()
        assert {p.pid for p in tree} >= set(workers)
    finally:
        server.stop()
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


@pytest.mark.parametrize("name", SETS["asgi"][0])
def test_asgi_set_servers_answer_correctly(tmp_path, bench_env, name):
    """``--set asgi``: each adapter behind one uvicorn process passes the harness's echo check."""
    settings = Settings(workers=2, threads=2)
    wl = WORKLOADS["echo"]
    port = free_port()
    argv, extra = SERVERS[name].build(settings, wl.app, port, [])
    env = server_env(tmp_path, 4)
    env.update(extra, **bench_env)
    server = ServerProcess(argv, log_path=tmp_path / "server.log", env=env, cwd=ROOT)
    tree: list[psutil.Process] = []
    try:
        wait_ready(server, port, wl, 30)
        expected = SERVERS[name].processes(settings)
        assert len(wait_for_workers(server, expected, 20)) == expected, server.log
        assert check(port, "echo") is None
        if name != "uvicorn1-asgiref":
            # asgiref >= 3.9 fails some concurrent requests with "CurrentThreadExecutor
            # already quit or is broken" (django/asgiref#491): its errors are its own.
            served, problems = _hammer(port, "echo", SMOKE_SECONDS)
            assert not problems, problems[:3]
            assert served >= 2
        tree = server.tree()
    finally:
        server.stop()
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:8000/
  2 threads and 64 connections
WRK_JSON {"requests": 1200, "duration_us": 1000000, "bytes": 120000, "connect": 0, \
"read": 3, "write": 0, "status": 2, "timeout": 0, "latency_mean_us": 5000.0, \
"latency_stdev_us": 100.0, "latency_max_us": 9000, "p50_us": 4000, "p75_us": 5000, \
"p90_us": 6000, "p99_us": 8000, "p999_us": 8500, "statuses": {"200": 1198, "502": 2}, \
"wrong_bodies": 0}
"""


def test_report_from_a_wrk_summary():
    result = parse(WRK_OUTPUT, ["wrk"])
    assert result.rps == 1200
    assert result.errors == 5
    assert (result.p50_ms, result.p99_ms) == (4.0, 8.0)
    memory = {"peak_tree_pss": 50 << 20, "peak_tree_rss": 60 << 20, "peak_process_rss": 30 << 20}
    cells = [
        {
            "kind": kind,
            "server": server,
            "workload": "hello",
            "shape": "2 processes x 4 threads",
            "setting": "",
            "status": "ok",
            "result": result.as_dict(),
            "memory": memory,
            "killed_pid": 1,
            "replaced": True,
        }
        for kind, server in (
            ("bench", "wsgipool"),
            ("bench", "gunicorn-gthread"),
            ("recycle", "wsgipool"),
            ("kill", "wsgipool"),
        )
    ]
    results = {
        "date": "2000-01-01",
        "machine": report.machine("wrk test"),
        "settings": {
            "duration": 1,
            "connections": 64,
            "wrk_threads": 2,
            "timeout": 10,
            "warmup": 0,
            "repeat": 1,
            "workers": 2,
            "threads": 4,
            "max_requests": 200,
            "leak_kib": 64,
            "memory_limit_mib": 256,
            "scenario_workload": "hello",
        },
        "servers": ["wsgipool", "gunicorn-gthread"],
        "workloads": ["hello"],
        "cells": cells,
    }
    results["targets"] = report.targets(results)
    text = report.markdown(results)
    assert "| wsgipool | 2 processes x 4 threads | 1,200 |" in text
    assert "502: 2" in text
    assert "hello ≥ 1.0 x gunicorn gthread | 1.00x | yes" in text
