"""Observability of a running server: Prometheus metrics, health endpoints, /stats, a page.

Nothing here is imported by the supervisor, the dispatcher or the workers: they
keep their own facts (worker handles, `Supervisor.exits`, `ProcessExecutor.rejected`)
and this package reads them.  The one thing counted here is what the frontend
sees of each request (`requests.RequestStats`), through a thin wrapper around the
request handler.

- `snapshot.py`: `take_snapshot()`, every fact at one instant; the one read that
  feeds /metrics, /stats, /readyz and the status page.
- `requests.py`: per-request counters and histograms, and the handler wrapper.
- `smaps.py`: workers' USS and PSS, read at scrape time only.
- `history.py`: worker slots, and a bounded ring of RSS samples per slot.
- `exposition.py`: the snapshot as Prometheus metric families.
- `service.py`: the listener (`--metrics-bind`), `--health-path`, the sampler task.
- `page.py`: the HTML status page; `status.py`: the ``wsgipool status`` command.

Adding a fact (say, RSS growth per request path) is: keep it where it is seen,
add a field to `Snapshot`, and a family in `exposition.py`.
"""

from __future__ import annotations

__all__: list[str] = []
