"""The leak finder (issue 12): which request paths grow the workers.

A real server runs tests/apps/leakapp.py, which keeps 1 MiB per ``/leak``
request and nothing for ``/ok`` or ``/items/<n>``.  After a mixed load, /stats,
/metrics (read with prometheus_client's parser) and the status page (in a real
headless chromium, where installed) must name ``/leak`` first and show
``/items/{id}`` as one path; the log line of a ``--max-rss`` recycle and of a
``--max-rss-hard`` kill must name the request in flight and ``/leak`` as the
path that grew the worker most.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.conftest import http_get as get
from tests.e2e.browser import CHROMIUM, headless
from tests.polling import wait_for


def stats(port: int) -> dict[str, Any]:
    status, body = get(port, "/stats")
    assert status == 200
    return json.loads(body)


def growth_metrics(port: int) -> dict[str, tuple[float, float]]:
    """path -> (KiB grown, requests), from /metrics."""
    status, body = get(port, "/metrics")
    assert status == 200
    grown: dict[str, float] = {}
    requests: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "wsgipool_path_rss_growth_kibibytes_total":
                grown[sample.labels["path"]] = sample.value
            elif sample.name == "wsgipool_path_requests_total":
                requests[sample.labels["path"]] = sample.value
    return {path: (grown[path], requests.get(path, 0.0)) for path in grown}


def mixed_load(port: int, rounds: int) -> None:
    for i in range(rounds):
        for path in ("/leak", "/ok", f"/items/123?page={i}", "/items/456"):
            assert get(port, path)[0] == 200


def leak_until(server: Any, needle: str, mib: int = 4) -> str:
    """Hit /leak?mib=N until the server's log has a line with `needle`; that line."""

    def found() -> str | None:
        if needle in server.log:
            return next(line for line in server.log.splitlines() if needle in line)
        get(server.port, f"/leak?mib={mib}")
        return None

    line = wait_for(found, 60, interval=0.0)
    assert line, f"no {needle!r} line:\n{server.log[-3000:]}"
    return str(line)


def test_stats_and_metrics_name_the_leaking_route_first(run_server):
    mport = free_port()
    server = run_server(
        "leakapp:app",
        *("--workers", "1", "--threads", "1", "--metrics-bind", f"127.0.0.1:{mport}"),
    )
    mixed_load(server.port, 20)

    paths = stats(mport)["paths"]
    assert paths[0]["path"] == "/leak", paths
    assert paths[0]["requests"] == 20
    assert paths[0]["grown_kib"] >= 15 * 1024, "about 1 MiB kept per request"
    by_path = {p["path"]: p for p in paths}
    assert by_path["/items/{id}"]["requests"] == 40, "numeric segments collapsed, query dropped"
    assert not any("123" in p or "?" in p for p in by_path)
    assert by_path["/ok"]["grown_kib"] < 1024
    worker = stats(mport)["workers"][0]
    assert worker["top_paths"][0]["path"] == "/leak"

    metrics = growth_metrics(mport)
    ranked = sorted((p for p in metrics if p != "other"), key=lambda p: -metrics[p][0])
    assert ranked[0] == "/leak", metrics
    assert metrics["/leak"] == (paths[0]["grown_kib"], 20.0)
    assert metrics["/items/{id}"][1] == 40.0
    assert set(metrics) == {"/leak", "/ok", "/items/{id}", "other"}


def test_max_rss_recycle_line_names_the_leaking_route(run_server):
    server = run_server("leakapp:app", *("--workers", "1", "--threads", "1", "--max-rss", "96M"))
    mixed_load(server.port, 3)
    line = leak_until(server, "over the memory limit")
    # The request that crossed the limit has ended; the next one may be in flight.
    assert re.search(r"in flight: (none|GET /leak)", line), line
    grew = line.split("grew it most: ", 1)[1]
    assert grew.startswith("/leak +"), line
    assert "recycling it" in line
    assert wait_for(lambda: "stopped (max-rss)" in server.log, 30), server.log[-3000:]


def test_hard_kill_line_names_the_leaking_route(run_server):
    server = run_server(
        "leakapp:app", *("--workers", "1", "--threads", "1", "--max-rss-hard", "96M")
    )
    mixed_load(server.port, 3)
    line = leak_until(server, "over the hard memory limit")
    grew = line.split("grew it most: ", 1)[1]
    assert grew.startswith("/leak +"), line
    assert "killing it" in line


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_status_page_lists_the_leaking_route_first(run_server, tmp_path):
    mport = free_port()
    server = run_server(
        "leakapp:app",
        *("--workers", "1", "--threads", "1", "--metrics-bind", f"127.0.0.1:{mport}"),
    )
    mixed_load(server.port, 5)
    dom = headless(f"http://127.0.0.1:{mport}/", tmp_path / "profile", "--dump-dom")
    rows = re.findall(r'<tr class="path"><td class="l">([^<]*)</td>', dom)
    assert rows and rows[0] == "/leak", dom[-3000:]
