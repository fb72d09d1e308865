"""Remake docs/status-page.png: the status page of a leaky app under load.

    .venv/bin/python -m bench.status_screenshot [--seconds 75] [--out docs/status-page.png]

Starts ``wsgipool serve leakapp:app`` (tests/apps) with 4 workers x 2 threads,
``--max-rss 96M`` and a metrics listener on 127.0.0.1, sends it requests from
4 threads (one in eight to ``/leak``, which keeps 1 MiB) for the given time,
SIGKILLs one worker half-way, then has headless chromium screenshot ``/``.
Everything it starts is killed by process group at the end, even on error.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def _load(port: int, until: float, worker: int) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        path = "/leak" if n % 8 == worker % 8 else f"/items/{n}"
        with contextlib.suppress(OSError, http.client.HTTPException):
            _get(port, path)
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    port, mport = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgipool", "serve", "leakapp:app", "--chdir",
         str(ROOT / "tests" / "apps"), "--bind", f"127.0.0.1:{port}",
         "--metrics-bind", f"127.0.0.1:{mport}", "--workers", "4", "--threads", "2",
         "--max-rss", "96M"],
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if json.loads(_get(mport, "/stats"))["ready"]:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready")
            time.sleep(0.2)
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=_load, args=(port, until, i)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(args.seconds / 2)
        victim = json.loads(_get(mport, "/stats"))["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        time.sleep(max(0.0, until - time.monotonic() - 2))
        with tempfile.TemporaryDirectory() as profile:
            shot = subprocess.Popen(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
                 "--hide-scrollbars", "--window-size=1200,1000", "--virtual-time-budget=3000",
                 f"--screenshot={args.out.resolve()}", f"http://127.0.0.1:{mport}/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                shot.wait(90)
            finally:
                _kill_group(shot)
        for t in threads:
            t.join(60)
        print(f"wrote {args.out}")
        return 0
    finally:
        _kill_group(server)


if __name__ == "__main__":
    raise SystemExit(main())
