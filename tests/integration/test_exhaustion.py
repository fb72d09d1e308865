"""Out of file descriptors: the supervisor keeps supervising and the pool recovers.

The main process's open-files limit is lowered from outside (prlimit) and idle
client connections use up the rest. A worker killed meanwhile cannot be
replaced at once (its socket pair needs descriptors) and memory samples cannot
read /proc: both must be retried, not end the tasks that do them.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time

from tests.polling import wait_for


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_worker_lost_while_out_of_descriptors_is_replaced_once_they_free_up(run_server):
    server = run_server(
        "faultapp:app", "--workers", "2", "--threads", "2", "--max-rss", "1G", "--backlog", "512"
    )
    # The server raised its soft limit to the hard one when it started.
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY, (soft, hard)
    workers = server.worker_pids()
    assert len(workers) == 2

    limit = open_fds(server.pid) + 20
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (limit, limit))
    clients: list[socket.socket] = []
    try:
        for _ in range(60):  # 20 accepted until the limit, the rest wait in the backlog
            clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        assert wait_for(lambda: open_fds(server.pid) >= limit - 1, 10), open_fds(server.pid)

        os.kill(workers[0], signal.SIGKILL)
        assert wait_for(lambda: f"worker {workers[0]} died" in server.log, 10), server.log
        # Several memory-sampling rounds (every 0.5 s) and spawn attempts while
        # there is not a descriptor to spare.
        time.sleep(2.0)
    finally:
        for client in clients:
            client.close()

    def two_workers() -> bool:
        pids = server.worker_pids()
        return len(pids) == 2 and workers[0] not in pids

    assert wait_for(two_workers, 30), server.log

    def replacement_ready() -> bool:
        return "ready in" in server.log.split(f"worker {workers[0]} died", 1)[1]

    assert wait_for(replacement_ready, 10), server.log
    assert [server.request("GET", f"/pid?i={i}")[0] for i in range(8)] == [200] * 8
    assert "supervisor task failed" not in server.log, server.log
    assert server.proc.poll() is None
