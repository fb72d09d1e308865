"""The status page of the metrics listener, rendered by a real headless browser.

Debian's ``chromium`` loads ``/`` from a running server in ``--dump-dom`` mode
(with a virtual time budget so the page's script runs and its refresh fetches
``stats``); the DOM it dumps must hold a row and an RSS chart per live worker.
Skipped, with the reason, only where chromium is not installed (.ci/run
installs it).
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.conftest import free_port
from tests.e2e.browser import CHROMIUM, headless
from tests.polling import wait_for

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium; .ci/run installs it)",
)


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as response:
        return json.loads(response.read())


def test_status_page_shows_each_worker_with_its_rss_chart(run_server, tmp_path):
    mport = free_port()
    server = run_server(
        "faultapp:app",
        *("--workers", "3", "--threads", "2", "--max-rss", "256M"),
        *("--metrics-bind", f"127.0.0.1:{mport}"),
    )
    for _ in range(6):
        assert server.request("GET", "/hello")[0] == 200
    # Wait for an RSS sample of every worker, so each chart has a line to draw.
    assert wait_for(lambda: all(w["rss_history"] for w in stats(mport)["workers"]), 30)
    pids = sorted(w["pid"] for w in stats(mport)["workers"])
    assert len(pids) == 3

    dom = headless(f"http://127.0.0.1:{mport}/", tmp_path / "profile", "--dump-dom")

    assert "wsgipool status" in dom, dom[:2000]
    rows = sorted(int(pid) for pid in re.findall(r'<tr data-pid="(\d+)" class="worker">', dom))
    assert rows == pids, dom
    charts = re.findall(r'<svg class="rss-chart"[^>]*data-pid="(\d+)"', dom)
    assert sorted(int(pid) for pid in charts) == pids, dom
    assert dom.count("<polyline") == 3, "each chart draws the worker's RSS"
    uss = re.findall(r'<td class="uss">([\d.]+) MiB</td>', dom)
    assert len(uss) == 3 and all(float(v) > 0 for v in uss), "each worker's USS is shown"
    assert "stroke-dasharray" in dom, "the --max-rss line is drawn"
    assert "requests answered" in dom
