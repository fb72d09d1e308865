"""The process pool (issue 3): parallel workers, a dying worker, no aiohttp in workers, the queue.

Real servers (`run_server`), real sockets on 127.0.0.1, real clients (http.client
in threads); no assertion on how fast anything is, only on what happened.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import request_once
from tests.polling import wait_for


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return request_once(conn, "GET", path)


def test_two_workers_run_cpu_bound_requests_in_parallel(run_server):
    """Issue 3: with 2 workers x 1 thread, two CPU-bound requests run in two processes at once."""
    server = run_server("faultapp:app", "--workers", "2", "--threads", "1")
    workers = server.worker_pids()
    assert len(workers) == 2, server.log
    barrier = threading.Barrier(2)

    def cpu() -> dict:
        barrier.wait(10)
        status, _, body = get(server.port, "/cpu?ms=1000")
        assert status == 200, body
        return json.loads(body)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: cpu(), range(2))
    assert first["pid"] != second["pid"], (first, second)
    assert {first["pid"], second["pid"]} == set(workers)
    # Overlapping [start, end] intervals on the one monotonic clock of the machine.
    assert max(first["start"], second["start"]) < min(first["end"], second["end"]), (
        first,
        second,
    )


def test_os_exit_fails_only_its_request_and_the_pool_recovers(run_server, tmp_path):
    """Issue 3: os._exit in a worker -> 502 for that request only; the pool keeps serving."""
    marks = tmp_path / "marks"
    marks.mkdir()
    server = run_server(
        *("faultapp:app", "--workers", "2", "--threads", "1", "--retry-methods", ""),
        env={"FAULTAPP_MARK_DIR": str(marks)},
    )
    before = server.worker_pids()
    assert len(before) == 2, server.log

    with ThreadPoolExecutor(2) as pool:
        # The slow request takes one worker's only thread, so the fatal one must go
        # to the other worker while the slow one is running.
        slow = pool.submit(get, server.port, "/slow?ms=1500&touch=slow")
        assert wait_for((marks / "slow").exists, 10), server.log
        fatal = pool.submit(get, server.port, "/exit?code=3")
        fatal_status, _, fatal_body = fatal.result(30)
        slow_status, _, slow_body = slow.result(30)

    assert fatal_status == 502, fatal_body
    assert slow_status == 200, slow_body
    survivor = json.loads(slow_body)["pid"]
    assert survivor in before
    (dead,) = set(before) - {survivor}

    # The death is logged with the pid and the exit code, and a replacement is started.
    assert wait_for(lambda: re.search(rf"worker {dead} died \([^)]*\): exit code 3", server.log), 5)
    replacement = wait_for(lambda: [pid for pid in server.worker_pids() if pid not in before], 10)
    assert replacement, server.log
    (new_pid,) = replacement
    assert wait_for(lambda: f"worker {new_pid} ready" in server.log, 5), server.log
    assert dead not in server.worker_pids()

    # Both workers serve afterwards: two concurrent slow requests land on the two threads.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: get(server.port, "/slow?ms=500"), range(2)))
    assert [status for status, _, _ in results] == [200, 200]
    assert {json.loads(body)["pid"] for _, _, body in results} == {survivor, new_pid}
    # And sequential requests keep working.
    for _ in range(10):
        assert get(server.port, "/hello")[0] == 200


def test_worker_never_imports_aiohttp(run_server):
    """Issue 3: the worker never imports aiohttp; environ has the process-mode keys.

    Nor asyncio (and ssl with it): about 6 MiB more in the template, which every
    worker maps, for code the worker never runs.
    """
    server = run_server("faultapp:app", "--workers", "2", "--threads", "2")
    seen = set()
    for _ in range(6):
        status, _, body = get(server.port, "/pid")
        assert status == 200, body
        info = json.loads(body)
        assert info["aiohttp_imported"] is False, info["aiohttp_modules"]
        assert info["asyncio_imported"] is False
        assert info["multiprocess"] is True
        assert info["worker_pid"] == info["pid"]
        assert info["pid"] != server.pid
        seen.add(info["pid"])
    assert seen <= set(server.worker_pids())


def test_full_queue_and_queue_timeout_answer_503_with_retry_after(run_server):
    """Issue 3: 1 worker x 1 thread, queue of 1, 1 s wait: the overflow gets 503 + Retry-After."""
    server = run_server(
        "faultapp:app",
        "--workers",
        "1",
        "--threads",
        "1",
        "--queue-size",
        "1",
        "--queue-timeout",
        "1s",
    )
    # Three requests that each hold the only thread for 2.5 s, sent 0.25 s apart:
    # one runs, one waits in the queue (and times out after 1 s), one finds the
    # queue full.  Whatever the order, exactly one is served.
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for _ in range(3):
            futures.append(pool.submit(get, server.port, "/slow?ms=2500"))
            time.sleep(0.25)
        results = [future.result(30) for future in futures]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 503, 503], results
    for status, headers, body in results:
        if status == 503:
            assert headers.get("retry-after", "").isdigit(), headers
            assert int(headers["retry-after"]) >= 1
            assert b"503" in body
    log = server.log
    assert "already waiting for a worker" in log, log  # the full queue
    assert "no worker thread became free within 1s" in log, log  # the queue timeout
    # The server serves normally afterwards.
    assert get(server.port, "/hello")[0] == 200


def test_a_flood_of_503s_is_logged_as_a_line_and_a_count_not_a_line_each(run_server, tmp_path):
    """Overload must not also flood the log: 503s are summed up once a second."""
    server = run_server(
        "faultapp:app",
        "--workers",
        "1",
        "--threads",
        "1",
        "--queue-size",
        "1",
        env={"FAULTAPP_MARK_DIR": str(tmp_path)},
    )
    with ThreadPoolExecutor(40) as pool:
        slow = pool.submit(get, server.port, "/slow?ms=3000&touch=busy")
        assert wait_for((tmp_path / "busy").exists, 15), server.log
        # The only thread is busy for 3 s: one request waits in the queue, the rest are refused.
        statuses = list(pool.map(lambda i: get(server.port, f"/hello?i={i}")[0], range(80)))
        assert slow.result(30)[0] == 200
    refused = statuses.count(503)
    assert refused >= 40 and statuses.count(200) >= 1, statuses

    def single() -> int:
        return len(re.findall(r"\[WARNING\] GET /hello: 503, ", server.log))

    def logged() -> int:
        counts = re.findall(
            r"([\d,]+) more like it in the last [\d.]+s; the latest: GET /hello: 503", server.log
        )
        return single() + sum(int(n.replace(",", "")) for n in counts)

    assert wait_for(lambda: logged() == refused, 5), (refused, server.log)
    assert single() < refused // 5, server.log


def _status_or_cut(future) -> int | str:
    try:
        return int(future.result()[0])
    except http.client.RemoteDisconnected:
        return "cut"


def test_a_worker_sending_garbage_is_killed_and_only_its_request_fails(run_server):
    """Bytes that are no frame: that worker is killed, its request fails (502, or a cut
    connection since it held the client socket for a whole write), others carry on."""
    server = run_server("faultapp:app", "--workers", "2", "--threads", "2")
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(server.request, "GET", f"/slow?ms=800&n={i}") for i in range(2)]
        time.sleep(0.2)  # the slow ones are running, on both workers
        try:
            bad_status = server.request("GET", "/garbage")[0]
        except http.client.RemoteDisconnected:
            bad_status = "cut"
        statuses = [_status_or_cut(future) for future in slow]
    assert bad_status in (502, "cut")
    # A slow request on the killed worker fails too (it was in flight there: 502, or a
    # cut since it held the client socket); one on the other worker succeeds.
    assert 200 in statuses
    assert "protocol error" in server.log and "unsupported protocol version 255" in server.log
    assert server.request("GET", "/hello")[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.log.count(" ready in ") < 3:
        time.sleep(0.05)
    assert server.log.count(" ready in ") >= 3  # a replacement started
