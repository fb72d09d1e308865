"""Says which frontend it serves under: the PID of the process that started its template.

In a worker, the parent is the template and the template's parent is the
frontend; with --workers 0 the app runs in the frontend itself.  ``/slow``
waits (for the graceful-stop tests) until the file named by ``until`` exists,
after creating the one named by ``started``.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs


def _frontend_pid() -> int:
    if os.environ.get("FRONTENDAPP_THREADS"):
        return os.getpid()
    with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])


def app(environ, start_response):
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ["PATH_INFO"] == "/slow":
        if "started" in query:
            with open(query["started"], "w") as marker:
                marker.write("started")
        deadline = time.monotonic() + 30
        while not os.path.exists(query.get("until", "/nonexistent")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    body = json.dumps(
        {
            "worker": os.getpid(),
            "frontend": _frontend_pid(),
            "path": environ["PATH_INFO"],
            "port": environ["SERVER_PORT"],
            "notify": "NOTIFY_SOCKET" in os.environ,  # systemd's socket is the arbiter's alone
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
