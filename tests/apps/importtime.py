"""A legacy app that connects and starts a thread at import time, and server hooks for it.

At import it connects to 127.0.0.1:$IMPORTTIME_PORT (a TCP server the test
runs; a stand-in for a database connection) and starts a background thread.
Every answer is JSON: ``pid``, the connection's local ``port``, the ``conn_pid``
that opened it and whether the import-time ``thread_alive`` runs in this process.
``?ms=N`` sleeps first, so concurrent requests reach different workers.

Hooks (``importtime:NAME``) append one line to $IMPORTTIME_HOOKS:
``on_starting``/``when_ready`` (the server), ``post_fork``/``worker_exit``
(the worker); ``reconnect`` is a post_fork hook that opens this process's own
connection and thread; ``fail_first`` is a post_fork hook that raises in worker 1.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

_stop = threading.Event()


def _connect() -> tuple[socket.socket, int]:
    return socket.create_connection(("127.0.0.1", int(os.environ["IMPORTTIME_PORT"]))), os.getpid()


def _start_thread() -> threading.Thread:
    thread = threading.Thread(target=_stop.wait, name="importtime-background", daemon=True)
    thread.start()
    return thread


CONN, CONN_PID = _connect()
THREAD = _start_thread()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
    body = json.dumps(
        {
            "pid": os.getpid(),
            "port": CONN.getsockname()[1],
            "conn_pid": CONN_PID,
            "thread_alive": THREAD.is_alive(),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def _record(line: str) -> None:
    path = os.environ.get("IMPORTTIME_HOOKS")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


def on_starting(server: Any) -> None:
    _record(f"on_starting pid={os.getpid()} workers={server.pool.workers}")


def when_ready(server: Any) -> None:
    _record(f"when_ready pid={os.getpid()} sockets={len(server.sockets)}")


def post_fork(worker: Any) -> None:
    _record(
        f"post_fork pid={os.getpid()} info_pid={worker.pid} number={worker.number} "
        f"generation={worker.generation} preload={worker.preload}"
    )


def worker_exit(worker: Any) -> None:
    _record(f"worker_exit pid={os.getpid()} number={worker.number}")


def reconnect(worker: Any) -> None:
    """What an app with import-time resources needs after a fork: its own of each."""
    global CONN, CONN_PID, THREAD
    CONN.close()  # this process's copy only: the others keep theirs
    CONN, CONN_PID = _connect()
    THREAD = _start_thread()


def fail_first(worker: Any) -> None:
    if worker.number == 1:
        raise RuntimeError("the cache is not reachable from worker 1")


def fail_always(worker: Any) -> None:
    raise RuntimeError(f"the cache is not reachable from worker {worker.number}")
