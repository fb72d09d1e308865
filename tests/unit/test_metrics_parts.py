"""The pure parts of wsgipool.metrics: slots, the RSS ring, histograms, page escaping."""

from __future__ import annotations

import json
import os
import re

import psutil

from wsgipool.metrics.history import History, Slots
from wsgipool.metrics.page import render
from wsgipool.metrics.requests import Histogram, RequestStats
from wsgipool.metrics.smaps import Memory, read_all, read_memory
from wsgipool.metrics.status import format_table


def test_slots_are_small_stable_and_reused():
    slots = Slots()
    assert slots.assign([101, 102, 103]) == {101: 0, 102: 1, 103: 2}
    # 102 is replaced by 104: the newcomer takes the freed slot, the others keep theirs.
    assert slots.assign([101, 103, 104]) == {101: 0, 103: 2, 104: 1}
    # A planned recycle: old and new alive together, then the old one leaves.
    assert slots.assign([101, 103, 104, 105]) == {101: 0, 103: 2, 104: 1, 105: 3}
    assert slots.assign([103, 104, 105]) == {103: 2, 104: 1, 105: 3}
    assert slots.assign([103, 104, 105, 106]) == {103: 2, 104: 1, 105: 3, 106: 0}


def test_history_is_bounded_and_forgets_dead_workers():
    history = History(samples=3)
    for i in range(5):
        history.record({1: 100 + i, 2: 0}, requests_total=10 * i, now=1000.0 + i)
    assert history.rss(1) == [(1002.0, 102), (1003.0, 103), (1004.0, 104)]
    assert history.rss(2) == []  # never sampled (0): nothing to draw
    history.record({2: 50}, requests_total=50, now=1005.0)
    assert history.rss(1) == []
    assert history.rss(2) == [(1005.0, 50)]


def test_request_rate_over_the_window():
    history = History()
    for i in range(20):
        history.record({}, requests_total=i * 30, now=1000.0 + i * 2)  # 15 per second
    assert abs(history.request_rate(19 * 30, now=1038.0) - 15.0) < 1e-9
    assert History().request_rate(5, now=1.0) == 0.0


def test_histogram_buckets_are_cumulative_with_inf_last():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4 and abs(h.sum - 3.65) < 1e-9


def test_unknown_methods_share_one_label():
    stats = RequestStats()
    stats.record("GET", "2xx", 0.01)
    stats.record("BREW", "4xx", 0.01)
    stats.record("X" * 100, "4xx", 0.01)
    assert stats.by_method_class == {("GET", "2xx"): 1, ("other", "4xx"): 2}


def _stats(**overrides):
    base = {
        "at": 1000.0, "version": "0", "python": "3", "aiohttp": "3", "started_at": 900.0,
        "mode": "processes", "alive": True, "ready": True, "stopping": False,
        "workers_target": 1, "workers": [], "threads_total": 0, "threads_busy": 0,
        "queue_depth": 0, "queue_size": 8, "in_flight": 0, "requests": [],
        "request_rate": 0.0, "rejected": {}, "exits": {}, "recent_exits": [],
        "main_rss": 0, "max_rss": None, "max_rss_hard": None,
    }  # fmt: skip
    base.update(overrides)
    return base


def test_page_embeds_its_data_without_breaking_out_of_the_script():
    hostile = "</script><script>alert(1)</script>&amp;"
    page = render(_stats(recent_exits=[{"detail": hostile}]))
    assert "</script><script>alert(1)" not in page
    embedded = re.search(r'id="initial">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded)["recent_exits"][0]["detail"] == hostile


def test_status_table_lines():
    worker = {
        "slot": 0, "pid": 4242, "state": "draining", "recycle_reason": "max-requests",
        "age": 75.0, "rss": 50 * 1048576, "uss": 20 * 1048576, "served": 12, "busy": 1,
        "threads": 4,
    }  # fmt: skip
    text = format_table(_stats(workers=[worker], requests=[{"count": 12}]))
    line = next(line for line in text.splitlines() if "4242" in line)
    assert line.split() == [
        "0",
        "4242",
        "draining",
        "(max-requests)",
        "1m15s",
        "50.0M",
        "20.0M",
        "12",
        "1/4",
    ]
    assert "requests 12" in text


def test_worker_memory_from_smaps_rollup(tmp_path):
    rollup = tmp_path / "77" / "smaps_rollup"
    rollup.parent.mkdir()
    rollup.write_text(
        "55ac-7ffc ---p 00000000 00:00 0   [rollup]\n"
        "Rss:               13544 kB\nPss:                8712 kB\n"
        "Shared_Clean:       6664 kB\nPrivate_Clean:        12 kB\n"
        "Private_Dirty:      6880 kB\nPrivate_Hugetlb:     2048 kB\n"
    )
    assert read_memory(77, str(tmp_path)) == Memory(uss=(12 + 6880 + 2048) * 1024, pss=8712 * 1024)
    # Gone, unreadable or garbled: no figure rather than a wrong one.
    assert read_memory(78, str(tmp_path)) is None
    rollup.write_text("Pss: lots kB\n")
    assert read_memory(77, str(tmp_path)) is None
    assert read_all([77, 78], str(tmp_path)) == {}


def test_worker_memory_agrees_with_psutil():
    own = read_memory(os.getpid())
    full = psutil.Process().memory_full_info()
    assert own is not None
    assert abs(own.uss - full.uss) < 4 * 1048576 and abs(own.pss - full.pss) < 4 * 1048576
