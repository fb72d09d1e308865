"""Smoke test of the benchmark suite: every workload app answers correctly on wsgipool.

No wrk here (CI may not have it): the answers are checked with http.client, by the
same checks the harness runs before it measures a server, for about a second per
workload.  Also: the harness's own start/stop code leaves no process behind, and
its report is built from a wrk summary line without error; the CPU time of a
server's tree (bench/cputime.py) counts a worker that died meanwhile; interleaved
rounds fold into medians and per-round ratios; and, where wrk and gunicorn are
installed, two interleaved rounds of one second each run end to end.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time

import psutil
import pytest

from bench import cputime, interleave, report
from bench.checks import WORKLOADS, check, one_request, validate
from bench.procs import ServerProcess, free_port, wait_for_workers
from bench.run import ROOT, main, server_env, wait_ready
from bench.servers import SERVERS, SETS, Settings
from bench.wrk import parse
from tests.polling import wait_for

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


def _serves_correctly(tmp_path, bench_env, name: str, workload: str, hammer: bool) -> None:
    """Server `name` as the harness starts it: its processes appear, the harness's check
    of `workload` passes (and, with `hammer`, a second of kept-alive load), and its
    whole tree is gone after the harness stops it."""
    settings = Settings(workers=2, threads=2)
    wl = WORKLOADS[workload]
    port = free_port()
    argv, extra = SERVERS[name].build(settings, wl.app, port, [])
    env = server_env(tmp_path, 4)
    env.update(extra, **bench_env)
    server = ServerProcess(argv, log_path=tmp_path / "server.log", env=env, cwd=ROOT)
    tree: list[psutil.Process] = []
    try:
        wait_ready(server, port, wl, 30)
        expected = SERVERS[name].processes(settings)
        workers = wait_for_workers(server, expected, 20)
        assert len(workers) == expected, server.log
        assert check(port, workload) is None
        if hammer:
            served, problems = _hammer(port, workload, SMOKE_SECONDS)
            assert not problems, problems[:3]
            assert served >= 2
        tree = server.tree()
        assert {p.pid for p in tree} >= set(workers)
    finally:
        server.stop()
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_harness_start_and_stop_leave_no_process(tmp_path, bench_env):
    _serves_correctly(tmp_path, bench_env, "wsgipool", "hello", hammer=False)


@pytest.mark.skipif(SERVERS["uwsgi"].available() is not None, reason="no pyuwsgi")
def test_uwsgi_peer_serves_echo_and_leaves_no_process(tmp_path, bench_env):
    """The uWSGI peer as the harness starts it: two workers, kept-alive load answered
    (--http11-socket), and its master and workers gone when the harness stops it."""
    _serves_correctly(tmp_path, bench_env, "uwsgi", "echo", hammer=True)


@pytest.mark.parametrize("name", SETS["asgi"][0])
def test_asgi_set_servers_answer_correctly(tmp_path, bench_env, name):
    """``--set asgi``: each adapter behind one uvicorn process passes the harness's echo check."""
    # asgiref >= 3.9 fails some concurrent requests with "CurrentThreadExecutor already
    # quit or is broken" (django/asgiref#491): its errors are its own, so no load for it.
    _serves_correctly(tmp_path, bench_env, name, "echo", hammer=name != "uvicorn1-asgiref")


@pytest.mark.parametrize("name", ["forward", "forward-parse"])
def test_bare_forwarder_answers_hello_and_leaves_no_process(tmp_path, bench_env, name):
    """``--set floor``'s references (bench/apps/forward.py): the harness's hello check
    passes on them, over kept-alive connections, with their W forked workers."""
    _serves_correctly(tmp_path, bench_env, name, "hello", hammer=True)


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
    assert "hello ≥ 1.0 x gunicorn gthread (issue 5) | 1.00x | yes" in text
    assert "kill: 0 failed GETs, the killed worker's retried (issue 13) | 5 | **no** |" in text


@pytest.mark.skipif(not cputime.available(), reason="needs /proc/PID/stat (Linux)")
def test_cpu_time_of_the_tree_counts_a_worker_that_died(run_server, bench_env):
    server = run_server(WORKLOADS["hello"].app, "--workers", "2", "--threads", "2", env=bench_env)
    assert wait_for(lambda: len(server.worker_pids()) == 2, 30), server.log
    before = cputime.read(server.pid)
    workers = {pid: cputime.read(pid) for pid in server.worker_pids()}
    assert before is not None and None not in workers.values()
    served, problems = _hammer(server.port, "hello", 2 * SMOKE_SECONDS)
    assert not problems, problems[:3]
    victim, survivor = sorted(workers)
    victim_last = cputime.read(victim)
    assert victim_last is not None
    os.kill(victim, signal.SIGKILL)  # its time must stay counted, through its parent's cutime
    assert wait_for(lambda: victim not in server.worker_pids(), 20)
    assert wait_for(lambda: len(server.worker_pids()) == 2, 30), server.log
    after = cputime.read(server.pid)
    survivor_last = cputime.read(survivor)
    assert after is not None and survivor_last is not None
    spent = after - before
    own = {victim: victim_last, survivor: survivor_last}
    worked = sum(own[pid].tree - workers[pid].tree for pid in own)
    assert spent.main > 0 and worked > 0
    half_tick = 0.5 / cputime.TICK  # the readings are whole clock ticks
    assert spent.tree + half_tick >= spent.main + worked
    entry = cputime.per_request(spent, served)
    assert entry["tree_us_per_request"] and entry["main_us_per_request"]
    assert 0 < entry["main_us_per_request"] <= entry["tree_us_per_request"]


def _round(server: str, rnd: int, rps: float, tree: float, main_us: float) -> dict:
    return {
        "kind": "bench",
        "server": server,
        "workload": "hello",
        "shape": "2 processes x 4 threads",
        "setting": "",
        "status": "ok",
        "round": rnd,
        "result": {
            "requests": int(rps),
            "rps": rps,
            "errors": rnd - 1,
            "errors_status": rnd - 1,
            "statuses": {"200": int(rps)},
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "duration_s": 1.0,
        },
        "memory": {"peak_tree_pss": 50 << 20, "peak_tree_rss": 60 << 20},
        "cpu": {"tree_us_per_request": tree, "main_us_per_request": main_us},
    }


def test_interleaved_rounds_fold_into_medians_and_ratios():
    cells = [
        _round("wsgipool", 1, 1000, 100, 60),
        _round("gunicorn-gthread", 1, 800, 200, 1),
        _round("wsgipool", 2, 1100, 90, 55),
        _round("gunicorn-gthread", 2, 1000, 180, 1),
        _round("wsgipool", 3, 900, 110, 65),
        _round("gunicorn-gthread", 3, 1000, 220, 1),
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
            "repeat": 3,
            "interleave": True,
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
    interleave.fold(results)
    assert len(results["rounds"]) == 6
    mine = next(c for c in results["cells"] if c["server"] == "wsgipool")
    assert mine["result"]["rps"] == 1000
    assert mine["result"]["errors"] == 0 + 1 + 2
    assert mine["cpu"]["tree_us_per_request"] == 100
    assert mine["cpu"]["main_us_per_request"] == 60
    entry = results["interleaved"]["hello"]["gunicorn-gthread"]
    assert entry["rps"]["rounds"] == [1.25, 1.1, 0.9]
    assert (entry["rps"]["median"], entry["rps"]["min"], entry["rps"]["max"]) == (1.1, 0.9, 1.25)
    assert entry["tree_cpu"]["median"] == 0.5
    results["targets"] = report.targets(results)
    text = report.markdown(results)
    assert "| hello ≥ 1.0 x gunicorn gthread (issue 5) | 1.10x (0.90-1.25) | yes |" in text
    assert "| hello | 100 (main 60) | 200 |" in text
    assert "median of 3 interleaved round(s)" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.skipif(SERVERS["gunicorn-gthread"].available() is not None, reason="no gunicorn")
def test_interleaved_run_end_to_end(tmp_path):
    """Two rounds of wsgipool and gunicorn gthread, one second of hello each."""
    argv = ["--duration", "1", "--warmup", "0", "--repeat", "2", "--interleave"]
    argv += ["--servers", "wsgipool,gunicorn-gthread", "--workloads", "hello"]
    argv += ["--scenarios", "none", "--workers", "1", "--threads", "2", "--connections", "4"]
    argv += ["--wrk-threads", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    (path,) = tmp_path.glob("*.json")
    results = json.loads(path.read_text())
    assert [(c["server"], c["round"]) for c in results["rounds"]] == [
        ("wsgipool", 1),
        ("gunicorn-gthread", 1),
        ("wsgipool", 2),
        ("gunicorn-gthread", 2),
    ]
    for cell in results["rounds"]:
        assert cell["status"] == "ok", cell.get("reason")
        assert cell["cpu"]["requests"] == cell["result"]["requests"] > 0
        assert cell["cpu"]["tree_us_per_request"] > 0
    for cell in results["cells"]:
        assert cell["cpu"]["tree_us_per_request"] > 0
        assert cell["rounds_ok"] == 2
    mine = next(c for c in results["cells"] if c["server"] == "wsgipool")
    assert 0 < mine["cpu"]["main_us_per_request"] < mine["cpu"]["tree_us_per_request"]
    ratio = results["interleaved"]["hello"]["gunicorn-gthread"]["rps"]
    assert len(ratio["rounds"]) == 2
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert ratio["min"] > 0
    (md,) = tmp_path.glob("*.md")
    assert "CPU µs/req (tree)" in md.read_text()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_scaling_run_finds_each_frontends_loop(tmp_path):
    """bench.scaling with one and two frontends: the loops it times are the frontends."""
    from bench import scaling

    out = tmp_path / "scaling.json"
    argv = ["--workers", "2", "--frontends", "1,2", "--workloads", "hello", "--duration", "1"]
    argv += ["--warmup", "0", "--connections", "4", "--wrk-threads", "1", "--out", str(out)]
    assert scaling.main(argv) == 0
    results = json.loads(out.read_text())
    one, two = results["cells"]
    for cell in (one, two):
        assert cell["status"] == "ok", cell.get("reason")
    # One frontend: the server process itself; two: the arbiter's two children.
    assert len(one["cpu"]["loops_s"]) == 1 and one["cpu"]["loops_s"][0] > 0
    assert one["cpu"]["loops_s"][0] == pytest.approx(one["cpu"]["main_s"])
    # (With 4 connections one frontend may accept them all: only the busier must have run.)
    assert len(two["cpu"]["loops_s"]) == 2 and two["cpu"]["main_s"] < max(two["cpu"]["loops_s"])
    rows = results["rows"]
    assert [(r["frontends"], r["workers"]) for r in rows] == [(1, 2), (2, 2)]
    assert all(r["rps"] > 0 and 0 < r["busiest_loop"] <= 1.5 for r in rows)
    assert "| hello | wsgipool 2 frontends | 2 |" in out.with_suffix(".md").read_text()
