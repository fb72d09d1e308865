"""``wsgipool status``: a live table of a running server's workers, read from its /stats.

Like uwsgitop: it connects to the metrics listener (``--metrics-bind`` of the
server: HOST:PORT or unix:PATH), prints the workers (pid, age, RSS, requests,
busy threads, state) and the pool's figures, and redraws every ``--interval``
seconds until interrupted; ``--once`` prints one table and exits.  Only the
standard library: it runs wherever wsgipool is installed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from typing import IO, Any

from wsgipool.config import parse_bind

__all__ = ["fetch_stats", "format_table", "run"]

_MIB = 1048576


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def fetch_stats(address: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET /stats from the metrics listener at `address`; OSError or ValueError on failure."""
    bind = parse_bind(address)
    conn: http.client.HTTPConnection
    if bind.kind == "unix":
        conn = _UnixConnection(bind.path, timeout)
    elif bind.kind == "tcp":
        host = bind.host if bind.host not in (None, "0.0.0.0", "::") else "127.0.0.1"
        conn = http.client.HTTPConnection(host, bind.port, timeout=timeout)
    else:
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {address!r}")
    try:
        conn.request("GET", "/stats", headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise ValueError(f"/stats answered {response.status} {response.reason}")
        stats: dict[str, Any] = json.loads(body)
        return stats
    finally:
        conn.close()


def format_table(stats: dict[str, Any]) -> str:
    """The screen: a summary line, then one line per worker."""
    total = sum(r["count"] for r in stats["requests"])
    rejected = sum(stats["rejected"].values())
    ready = sum(1 for w in stats["workers"] if w["state"] == "ready")
    readiness = "ready" if stats["ready"] else "NOT READY"
    if stats["stopping"]:
        readiness += " (shutting down)"
    lines = [
        f"wsgipool {stats['version']}  {stats['mode']}  {readiness}"
        f"  up {_duration(stats['at'] - stats['started_at'])}",
        f"workers {ready}/{stats['workers_target']} ready  "
        f"threads {stats['threads_busy']}/{stats['threads_total']} busy  "
        f"queue {stats['queue_depth']}/{stats['queue_size']}  "
        f"req/s {stats['request_rate']:.1f}  requests {total}  503s {rejected}  "
        f"main rss {_mib(stats['main_rss'])}",
        "",
        f"{'SLOT':>4} {'PID':>8} {'STATE':<22} {'AGE':>8} {'RSS':>10} {'USS':>10} "
        f"{'REQUESTS':>9} {'BUSY':>7}",
    ]
    for w in stats["workers"]:
        state = w["state"] + (f" ({w['recycle_reason']})" if w["recycle_reason"] else "")
        lines.append(
            f"{w['slot']:>4} {w['pid']:>8} {state:<22} {_duration(w['age']):>8} "
            f"{_mib(w['rss']):>10} {_mib(w.get('uss')):>10} "
            f"{w['served']:>9} {w['busy']:>3}/{w['threads']:<3}"
        )
    if not stats["workers"]:
        lines.append("   (no worker processes)" if stats["mode"] == "threads" else "   (none)")
    recent = stats["recent_exits"][-5:]
    if recent:
        lines += ["", "recent exits:"]
        for e in reversed(recent):
            when = time.strftime("%H:%M:%S", time.localtime(e["at"]))
            lines.append(
                f"  {when} pid {e['pid']} {e['reason']}: {e['detail']}, "
                f"served {e['served']}, rss {_mib(e['rss'])}"
            )
    return "\n".join(lines) + "\n"


def run(address: str, interval: float, once: bool, out: IO[str] = sys.stdout) -> int:
    """Print the table once, or redraw it every `interval` seconds; the exit status."""
    clear = "\x1b[H\x1b[2J" if out.isatty() and not once else ""
    try:
        while True:
            try:
                text = format_table(fetch_stats(address))
            except (OSError, ValueError) as exc:
                if once:
                    print(f"wsgipool: error: cannot read {address}/stats: {exc}", file=sys.stderr)
                    return 1
                text = f"cannot read {address}/stats: {exc}; retrying\n"
            out.write(clear + text)
            out.flush()
            if once:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def default_address() -> str | None:
    """The metrics address from the environment, as a server started with it would read it."""
    return os.environ.get("WSGIPOOL_METRICS_BIND") or None


def _mib(n: int | None) -> str:
    return f"{n / _MIB:.1f}M" if n else "-"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
