"""The metrics listener (issue 12): real servers, real scrapes, exact counters.

Each test starts `wsgipool serve` with ``--metrics-bind`` on 127.0.0.1, drives
a known load with real HTTP clients, real SIGKILLs and real recycles, and reads
/metrics with prometheus_client's own parser, /stats as JSON, and the health
endpoints.  Waits are polls with generous bounds.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import wsgipool
from tests.cli import assert_one_line_error, run_cli, wsgipool_cmd
from tests.conftest import APPS, ROOT, free_port
from tests.conftest import http_get as get
from tests.polling import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def stats(port: int) -> dict[str, Any]:
    status, body = get(port, "/stats")
    assert status == 200
    return json.loads(body)


def metrics_server(run_server, app: str, *args: str, **kwargs: Any):
    port = free_port()
    server = run_server(app, *args, "--metrics-bind", f"127.0.0.1:{port}", **kwargs)
    return server, port


def test_exact_counters_after_a_known_load(run_server):
    server, mport = metrics_server(
        run_server,
        "faultapp:app",
        *("--workers", "1", "--threads", "1", "--queue-size", "1", "--max-requests", "8"),
    )
    port = server.port
    # 3 requests, then the worker is SIGKILLed while idle.
    for _ in range(3):
        assert get(port, "/hello")[0] == 200
    first = stats(mport)["workers"][0]["pid"]
    os.kill(first, signal.SIGKILL)
    assert wait_for(
        lambda: (
            (s := stats(mport))["exits"].get("signal") == 1
            and any(w["state"] == "ready" and w["pid"] != first for w in s["workers"])
        ),
        30,
    ), stats(mport)
    # A full queue: one request runs on the only thread, one waits, the third gets 503.
    results: list[int] = []
    slow = [
        threading.Thread(target=lambda: results.append(get(port, "/slow?ms=1500")[0]))
        for _ in range(2)
    ]
    slow[0].start()
    assert wait_for(lambda: stats(mport)["threads_busy"] == 1, 30)
    slow[1].start()
    assert wait_for(lambda: stats(mport)["queue_depth"] == 1, 30)
    assert get(port, "/hello")[0] == 503
    for thread in slow:
        thread.join(30)
    assert results == [200, 200]
    # More on the second worker: 2 POSTs, a 404, 3 GETs; its 8th dispatch recycles it.
    assert [get(port, "/hello", "POST")[0] for _ in range(2)] == [200, 200]
    assert get(port, "/no-such-path")[0] == 404
    assert [get(port, "/hello")[0] for _ in range(3)] == [200, 200, 200]
    assert wait_for(lambda: stats(mport)["exits"].get("max_requests") == 1, 30), stats(mport)

    m = scrape(mport)
    requests = "wsgipool_http_requests_total"
    assert value(m, requests, method="GET", status="2xx") == 8
    assert value(m, requests, method="POST", status="2xx") == 2
    assert value(m, requests, method="GET", status="4xx") == 1
    assert value(m, requests, method="GET", status="5xx") == 1
    assert sum(v for (name, _), v in m.items() if name == requests) == 12
    assert value(m, "wsgipool_http_request_duration_seconds_count") == 12
    assert value(m, "wsgipool_queue_wait_seconds_count") == 11  # the 503 never got a thread
    assert value(m, "wsgipool_queue_wait_seconds_bucket", le="0.001") < 11  # one waited 1.5 s
    unavailable = "wsgipool_unavailable_responses_total"
    assert value(m, unavailable, reason="queue_full") == 1
    assert value(m, unavailable, reason="queue_timeout") == 0
    exits = "wsgipool_worker_exits_total"
    assert value(m, exits, reason="signal") == 1
    assert value(m, exits, reason="max_requests") == 1
    for reason in (
        "crash",
        "max_rss_soft",
        "max_rss_hard",
        "timeout",
        "reload",
        "sigterm",
        "scale_down",
    ):
        assert value(m, exits, reason=reason) == 0, reason
    assert value(m, "wsgipool_workers_spawned_total") == 3
    assert value(m, "wsgipool_http_requests_in_flight") == 0
    assert value(m, "wsgipool_queue_depth") == 0
    assert value(m, "wsgipool_queue_capacity") == 1
    assert value(m, "wsgipool_ready") == 1
    # Per-worker series: the live worker, by slot and pid, with its served count.
    live = [w for w in stats(mport)["workers"] if w["state"] == "ready"]
    assert len(live) == 1
    labels = {"slot": str(live[0]["slot"]), "pid": str(live[0]["pid"])}
    assert value(m, "wsgipool_worker_threads", **labels) == 1
    assert ("wsgipool_worker_resident_memory_bytes", frozenset(labels.items())) in m
    # USS and PSS are read at the scrape: each is above zero and at most the worker's RSS.
    rss_now = psutil.Process(live[0]["pid"]).memory_info().rss
    for kind in ("unique", "proportional"):
        name = f"wsgipool_worker_{kind}_memory_bytes"
        assert 0 < value(m, name, **labels) <= rss_now * 1.5, name
    assert 0 < stats(mport)["workers"][0]["uss"] <= stats(mport)["workers"][0]["pss"]
    assert value(m, "wsgipool_main_resident_memory_bytes") > 0
    assert value(m, "wsgipool_main_open_fds") > 0
    info = [k for k in m if k[0] == "wsgipool_build_info"]
    assert len(info) == 1 and ("version", wsgipool.__version__) in info[0][1]
    # The recycled and the killed worker are in the recent exits, with their reasons.
    reasons = [(e["pid"], e["reason"]) for e in stats(mport)["recent_exits"]]
    assert (first, "signal") in reasons and "max_requests" in {r for _, r in reasons}


def test_openmetrics_when_the_scraper_asks_for_it(run_server):
    _server, mport = metrics_server(run_server, "faultapp:app", "--workers", "1")
    conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_readyz_is_503_while_no_worker_is_ready(run_server):
    """A worker that dies on every request: in its crash backoff, nothing is ready."""
    port_m = free_port()
    server = run_server(
        "faultapp:killer_app",
        *("--workers", "1", "--threads", "1", "--health-path", "/-/health"),
        *("--metrics-bind", f"127.0.0.1:{port_m}"),
    )
    assert get(port_m, "/readyz")[0] == 200
    assert get(server.port, "/-/health/ready") == (200, b"ready\n")
    stop = threading.Event()

    def kill_workers() -> None:
        while not stop.is_set():
            get(server.port, "/", timeout=60)  # each one kills the worker: 502

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    try:
        seen = wait_for(lambda: get(port_m, "/readyz")[0] == 503, 60, interval=0.02)
        assert seen, "readyz never said 503 while the worker was in crash backoff"
        assert wait_for(lambda: get(server.port, "/-/health/ready")[0] == 503, 60, 0.02)
        # The replacement waits out the backoff: a restart pending, early deaths counted.
        assert wait_for(
            lambda: (
                value(m := scrape(port_m), "wsgipool_worker_restarts_pending") >= 1
                and value(m, "wsgipool_worker_crash_backoff_failures") >= 1
            ),
            60,
            0.02,
        )
        assert get(port_m, "/healthz") == (200, b"ok\n")  # alive all along
        assert get(server.port, "/-/health") == (200, b"ok\n")
    finally:
        stop.set()
        killer.join(90)
    # The backoff ends, a worker starts and is left alone: ready again.
    assert wait_for(lambda: get(port_m, "/readyz")[0] == 200, 60), stats(port_m)
    m = scrape(port_m)
    assert value(m, "wsgipool_worker_exits_total", reason="crash") >= 2


def test_readyz_is_503_during_shutdown(run_server):
    server, mport = metrics_server(
        run_server, "faultapp:app", "--workers", "1", "--shutdown-timeout", "30"
    )
    result: list[int] = []
    slow = threading.Thread(target=lambda: result.append(get(server.port, "/slow?ms=5000")[0]))
    slow.start()
    assert wait_for(lambda: stats(mport)["threads_busy"] == 1, 30)
    assert get(mport, "/readyz")[0] == 200
    server.signal(signal.SIGTERM)
    assert wait_for(lambda: get(mport, "/readyz")[0] == 503, 30)
    assert get(mport, "/readyz") == (503, b"not ready: shutting down\n")
    assert result == [], "the request in flight is still running"
    assert get(mport, "/healthz")[0] == 200
    assert stats(mport)["stopping"] is True
    slow.join(30)
    assert result == [200]  # the request in flight finished
    assert server.wait(30) == 0


def test_threads_mode_and_a_unix_metrics_socket(run_server, short_tmp):
    path = short_tmp / "metrics.sock"
    server = run_server("faultapp:app", "--workers", "0", "--metrics-bind", f"unix:{path}")
    for _ in range(4):
        assert server.request("GET", "/hello")[0] == 200
    code, out, err, _alive = run_cli(
        wsgipool_cmd("status", "--metrics-bind", f"unix:{path}", "--once"),
        Path(server.log_path).parent,
    )
    assert code == 0, err
    assert "threads" in out and "requests 4" in out
    server.stop()
    assert not path.exists(), "the metrics socket is removed on exit"


def test_status_command_prints_the_workers(run_server, tmp_path):
    server, mport = metrics_server(run_server, "faultapp:app", "--workers", "2")
    for _ in range(5):
        assert server.request("GET", "/hello")[0] == 200
    pids = sorted(w["pid"] for w in stats(mport)["workers"])
    code, out, err, _ = run_cli(
        wsgipool_cmd("status", "--metrics-bind", f"127.0.0.1:{mport}", "--once"), tmp_path
    )
    assert code == 0, err
    assert "PID" in out and "RSS" in out and "USS" in out and "REQUESTS" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert sorted(int(row[1]) for row in rows) == pids
    assert all(row[5].endswith("M") for row in rows)  # the USS column has a figure
    assert sum(int(row[6]) for row in rows) == 5  # requests served, all workers together
    assert all(row[2] == "ready" for row in rows)


def test_status_command_errors(tmp_path):
    code, _out, err, _ = run_cli(wsgipool_cmd("status", "--once"), tmp_path)
    assert code == 2
    assert_one_line_error(err, "--metrics-bind")
    code, _out, err, _ = run_cli(
        wsgipool_cmd("status", "--once", "--metrics-bind", f"127.0.0.1:{free_port()}"), tmp_path
    )
    assert code == 1
    assert_one_line_error(err, "/stats")


def test_metrics_bind_on_an_address_in_use_exits_2(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, stdout, stderr, alive = run_cli(
            wsgipool_cmd(
                "serve",
                "faultapp:app",
                "--workers",
                "1",
                "--bind",
                f"127.0.0.1:{free_port()}",
                "--metrics-bind",
                f"127.0.0.1:{port}",
            ),
            tmp_path,
        )
    assert code == 2, (stdout, stderr)
    assert_one_line_error(stderr, "--metrics-bind", str(port))
    assert alive == []


@pytest.mark.parametrize(
    ("bind", "metrics"),
    [
        ("127.0.0.1:{p}", "127.0.0.1:{p}"),
        ("127.0.0.1:{p}", "0.0.0.0:{p}"),
        ("unix:/tmp/x.sock", "unix:/tmp/x.sock"),
    ],
    ids=["same", "wildcard", "unix"],
)
def test_metrics_bind_equal_to_bind_exits_2(tmp_path, bind, metrics):
    port = free_port()
    code, stdout, stderr, alive = run_cli(
        wsgipool_cmd(
            "serve",
            "faultapp:app",
            "--workers",
            "1",
            "--bind",
            bind.format(p=port),
            "--metrics-bind",
            metrics.format(p=port),
        ),
        tmp_path,
    )
    assert code == 2, (stdout, stderr)
    assert_one_line_error(stderr, "--metrics-bind", "main listener")
    assert alive == []


def test_metrics_bind_without_prometheus_client_exits_2(tmp_path):
    """Without the 'metrics' extra: one line saying what to install."""
    hidden = tmp_path / "hide"
    (hidden / "prometheus_client").mkdir(parents=True)
    (hidden / "prometheus_client" / "__init__.py").write_text("raise ImportError('hidden')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hidden), str(APPS), str(ROOT)])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsgipool",
            "serve",
            "faultapp:app",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "--metrics-bind",
            f"127.0.0.1:{free_port()}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "--metrics-bind", "wsgipool[metrics]")


@pytest.mark.parametrize(
    "mode",
    [["--workers", "1"], ["--workers", "0"], ["--workers", "1", "--script-name", "/app"]],
    ids=["processes", "threads", "script-name"],
)
def test_health_path_on_the_main_listener_never_reaches_the_app(run_server, tmp_path, mode):
    static = tmp_path / "static"
    static.mkdir()
    (static / "a.txt").write_text("static\n")
    server = run_server(
        "faultapp:app", *mode, "--health-path", "/-/health/", "--static", f"/s={static}"
    )
    assert server.request("GET", "/-/health")[::2] == (200, b"ok\n")
    assert server.request("GET", "/-/health/ready")[::2] == (200, b"ready\n")
    assert server.request("GET", "/s/a.txt")[::2] == (200, b"static\n")
    prefix = "/app" if "--script-name" in mode else ""
    assert json.loads(server.request("GET", f"{prefix}/pid")[2])["pid"] > 0
    # Only the exact paths are the server's; anything below them is the app's.
    assert server.request("GET", "/-/health/other")[0] == 404


def test_status_command_redraws_until_interrupted(run_server, tmp_path):
    _server, mport = metrics_server(run_server, "faultapp:app", "--workers", "1")
    proc = subprocess.Popen(
        wsgipool_cmd("status", "--metrics-bind", f"127.0.0.1:{mport}", "--interval", "0.2"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while sum("SLOT" in line for line in lines) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_fast_lane_requests_are_counted(run_server, tmp_path):
    """With metrics on, serve()'s fast lane (fastpath.py) stays on and counts its requests."""
    server, mport = metrics_server(
        run_server, "streamapp:app", "--workers", "1", "--threads", "2", "--health-path", "/-/h"
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(5):  # one keep-alive connection, small answers: the lane's
            conn.request("GET", "/whoami")
            assert conn.getresponse().read()
        conn.request("GET", "/-/h/ready")  # the main process's, never the app's
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ready\n")
        # Too large for the lane: handed back to the handler after the app's 0.6 s,
        # which must count in its duration.
        conn.request("GET", "/late-big?seconds=0.6&size=40000")
        response = conn.getresponse()
        assert (response.status, len(response.read())) == (200, 40000)
    finally:
        conn.close()
    # A client that leaves while its request runs on the lane: aborted, not in flight.
    started = tmp_path / "started"
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET /slow?seconds=2&started={started} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert wait_for(started.exists, 30)
    sock.close()
    requests = "wsgipool_http_requests_total"
    assert wait_for(lambda: value(scrape(mport), requests, method="GET", status="aborted"), 30)
    m = scrape(mport)
    assert value(m, requests, method="GET", status="2xx") == 6
    assert value(m, requests, method="GET", status="aborted") == 1
    assert value(m, "wsgipool_http_request_duration_seconds_count") == 7
    # Under 0.5 s: the 5 small answers and the aborted one; /late-big took 0.6 s.
    assert value(m, "wsgipool_http_request_duration_seconds_bucket", le="0.5") == 6
    assert value(m, "wsgipool_http_requests_in_flight") == 0
