"""The memory sampler never reports an exiting worker's 0 as its RSS.

A zombie (exited, not yet reaped) reads as rss 0 in /proc; stored, it replaced
the worker's last real figure in its exit log line and on the status page.
"""

from __future__ import annotations

import os
import time

from wsgipool.supervisor.monitor import RssMonitor


def test_a_zombie_is_not_sampled_as_zero():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it is a zombie
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        monitor = RssMonitor()
        assert pid not in monitor._read([pid])
        assert monitor._read([os.getpid()])[os.getpid()] > 0
    finally:
        os.waitpid(pid, 0)
