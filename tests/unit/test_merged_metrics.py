"""The merged /stats and /metrics of several frontends (wsgipool.metrics.merged): pure functions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from wsgipool.metrics.merged import merge_stats, render_families


def _doc(ready: bool, pids: list[int], gets: int, stopping: bool = False) -> dict:
    return {
        "at": 100.0,
        "version": "1",
        "python": "3",
        "aiohttp": "3",
        "started_at": 50.0 + len(pids),
        "mode": "processes",
        "alive": True,
        "ready": ready,
        "stopping": stopping,
        "workers_target": len(pids),
        "workers": [{"slot": i, "pid": pid, "state": "ready"} for i, pid in enumerate(pids)],
        "threads_total": 4 * len(pids),
        "threads_busy": 1,
        "queue_depth": 0,
        "queue_size": 64,
        "in_flight": 1,
        "requests": [{"method": "GET", "status": "2xx", "count": gets}],
        "request_rate": 2.0,
        "duration": {"buckets": [[0.1, gets], [float("inf"), gets]], "sum": 0.5, "count": gets},
        "queue_wait": {"buckets": [], "sum": 0.0, "count": 0},
        "rejected": {"queue full": 1},
        "exits": {"crash": 1},
        "recent_exits": [{"at": 90.0 + len(pids), "pid": 7, "reason": "crash"}],
        "spawned": len(pids),
        "pending_spawns": 0,
        "backoff_failures": 0,
        "max_rss": None,
        "max_rss_hard": None,
        "main_rss": 1000,
        "main_fds": 10,
        "loop_lag": 0.01 * len(pids),
        "paths": [{"path": "/a", "grown_kib": 4, "requests": gets}],
        "paths_other": {"path": "other", "grown_kib": 1, "requests": 1},
    }


def test_counts_are_summed_and_workers_tagged_with_their_frontend():
    merged = merge_stats([(1, _doc(True, [11, 12], 5)), (2, _doc(False, [21], 3))], now=123.0)
    assert merged["at"] == 123.0
    assert [(w["frontend"], w["pid"], w["slot"]) for w in merged["workers"]] == [
        (1, 11, 1),
        (1, 12, 2),
        (2, 21, 3),
    ]
    assert merged["ready"] is True  # any frontend ready
    assert merged["stopping"] is False
    assert merged["workers_target"] == 3 and merged["threads_total"] == 12
    assert merged["requests"] == [{"method": "GET", "status": "2xx", "count": 8}]
    assert merged["duration"]["count"] == 8 and merged["duration"]["buckets"][0] == [0.1, 8]
    assert merged["rejected"] == {"queue full": 2} and merged["exits"] == {"crash": 2}
    assert [e["frontend"] for e in merged["recent_exits"]] == [2, 1]  # oldest first
    assert merged["paths"] == [{"path": "/a", "grown_kib": 8, "requests": 8}]
    assert merged["paths_other"]["grown_kib"] == 2
    assert merged["started_at"] == 51.0 and merged["loop_lag"] == 0.02
    assert merged["frontends"] == [
        {"frontend": 1, "up": True, "ready": True},
        {"frontend": 2, "up": True, "ready": False},
    ]


def test_a_frontend_that_did_not_answer_is_left_out_and_shown_down():
    merged = merge_stats([(1, None), (2, _doc(True, [21], 3))])
    assert [w["frontend"] for w in merged["workers"]] == [2]
    assert merged["frontends"][0] == {"frontend": 1, "up": False, "ready": False}
    nobody = merge_stats([(1, None), (2, None)])
    assert nobody["ready"] is False and nobody["workers"] == []


def test_metrics_get_a_frontend_label_and_an_up_gauge():
    text = (
        "# HELP wsgipool_http_requests_total Requests.\n"
        "# TYPE wsgipool_http_requests_total counter\n"
        'wsgipool_http_requests_total{method="GET",status="2xx"} 5.0\n'
    )
    body = render_families([(1, text), (2, text), (3, None)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    up = {s.labels["frontend"]: s.value for s in families["wsgipool_frontend_up"].samples}
    assert up == {"1": 1.0, "2": 1.0, "3": 0.0}
    samples = [s for s in families["wsgipool_http_requests"].samples if s.name.endswith("_total")]
    assert sorted(s.labels["frontend"] for s in samples) == ["1", "2"]
    assert all(s.labels["method"] == "GET" and s.value == 5.0 for s in samples)
