"""The workloads the harness knows, and what a correct answer to each is.

`check(port, workload)` sends real requests with http.client (no wrk), over a
kept-alive connection and over fresh ones, and returns None when every answer
is right, else one line that says what was wrong.  The harness refuses to
measure a server whose answer is wrong; the smoke test uses the same checks.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from bench.apps import workloads as w

Validator = Callable[[int, dict[str, str], bytes], "str | None"]


@dataclass(frozen=True)
class Workload:
    name: str
    app: str  # MODULE:ATTR of the WSGI callable
    summary: str
    method: str = "GET"
    path: str = "/"
    body_size: int = 0  # request body (POST), made by request_body()
    scenario_only: bool = False  # served only in the scenarios (the leaky app)


WORKLOADS: dict[str, Workload] = {
    wl.name: wl
    for wl in (
        Workload("hello", "bench.apps.workloads:hello", "13-byte body"),
        Workload("cpu", "bench.apps.workloads:cpu", "about 2 ms of pure-Python work"),
        Workload("sleep", "bench.apps.workloads:sleep", "50 ms blocking time.sleep"),
        Workload("big", "bench.apps.workloads:big", "1 MiB streamed in 64 KiB chunks"),
        Workload(
            "echo",
            "bench.apps.workloads:echo",
            "64 KiB POST body read whole and echoed",
            method="POST",
            body_size=w.ECHO_SIZE,
        ),
        Workload("file", "bench.apps.workloads:file", "10 MiB file through wsgi.file_wrapper"),
        Workload(
            "django",
            "bench.apps.djangoapp.wsgi:application",
            "Django view: ORM query + aggregate on SQLite, template rendering",
        ),
        Workload(
            "leak",
            "bench.apps.workloads:leak",
            "keeps BENCH_LEAK_KIB per request for ever",
            scenario_only=True,
        ),
    )
}

BENCH_WORKLOADS = [name for name, wl in WORKLOADS.items() if not wl.scenario_only]


@cache
def request_body(size: int) -> bytes:
    """A deterministic request body that is not one repeated byte."""
    seed = b"wsgipool-bench"
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


@cache
def expected_body(name: str) -> bytes | None:
    """The exact body a workload must answer, where it is fixed (not for django)."""
    if name == "echo":
        return request_body(WORKLOADS[name].body_size)
    if name == "hello":
        return w.HELLO_BODY
    if name == "cpu":
        return b"%d\n" % w.cpu_work()
    if name == "sleep":
        return w.SLEEP_BODY
    if name == "big":
        return w.file_content()[: w.BIG_SIZE]
    if name == "file":
        return w.file_content()
    if name == "leak":
        return w.LEAK_BODY
    return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def validate(name: str, status: int, headers: dict[str, str], body: bytes) -> str | None:
    """None if (status, headers, body) is a correct answer of workload `name`."""
    if status != 200:
        return f"status {status}, body {body[:80]!r}"
    declared = headers.get("content-length")
    if declared is not None and int(declared) != len(body):
        return f"Content-Length {declared} but {len(body)} bytes of body"
    expected = expected_body(name)
    if expected is not None:
        if body != expected:
            return (
                f"wrong body: {len(body)} bytes (sha256 {_digest(body)}), expected "
                f"{len(expected)} bytes (sha256 {_digest(expected)}); starts {body[:40]!r}"
            )
        return None
    if name == "django":
        text = body.decode("utf-8", "replace")
        from bench.apps.djangoapp.data import ITEM_COUNT, STOCK_TOTAL

        wanted = [
            "<title>wsgipool bench</title>",
            f"{ITEM_COUNT} items, {STOCK_TOTAL} in stock.",
            f'<li id="item-{ITEM_COUNT}"',
        ]
        missing = [marker for marker in wanted if marker not in text]
        if missing or text.count("<li ") != ITEM_COUNT:
            return f"not the Django page: missing {missing}, {text.count('<li ')} <li>"
        if not headers.get("content-type", "").startswith("text/html"):
            return f"Content-Type {headers.get('content-type')!r}"
        return None
    raise KeyError(name)


def one_request(
    conn: http.client.HTTPConnection, wl: Workload
) -> tuple[int, dict[str, str], bytes]:
    body = request_body(wl.body_size) if wl.body_size else None
    headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
    conn.request(wl.method, wl.path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def check(port: int, name: str, requests: int = 4, timeout: float = 30.0) -> str | None:
    """Ask the server on 127.0.0.1:`port` a few times; None if every answer is right.

    Half the requests share one kept-alive connection, the others each get a
    fresh connection (so more than one worker is likely to answer).
    """
    wl = WORKLOADS[name]
    shared = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        for i in range(requests):
            fresh = i % 2 == 1
            conn = (
                http.client.HTTPConnection("127.0.0.1", port, timeout=timeout) if fresh else shared
            )
            try:
                started = time.monotonic()
                status, headers, body = one_request(conn, wl)
                elapsed = time.monotonic() - started
            except (OSError, http.client.HTTPException) as exc:
                return f"request {i + 1}: {type(exc).__name__}: {exc}"
            finally:
                if fresh:
                    conn.close()
            problem = validate(name, status, headers, body)
            if problem is None and name == "sleep" and elapsed < w.SLEEP_SECONDS * 0.9:
                problem = f"answered in {elapsed * 1000:.1f} ms, before the app's 50 ms sleep"
            if problem:
                return f"request {i + 1}: {problem}"
    finally:
        shared.close()
    return None
