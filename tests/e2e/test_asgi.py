"""wsgipool.asgi.WSGIMiddleware served by real ASGI servers: uvicorn, Hypercorn, and
mounted under Starlette next to a native route and a websocket, in thread and process mode.

Every server is a subprocess in its own process group on a free 127.0.0.1 port
(tests/apps/asgimix.py builds its app from the environment), started once per
module and killed by process group and by PID at the end.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.asgiserver import AsgiServer, start_asgi
from tests.polling import wait_for

MIB = 1024 * 1024
POOL = {"workers": 2, "threads": 4, "timeout": "3s", "graceful_timeout": "5s"}
OPTIONS = {"max_request_body_size": 60 * MIB}


# (server, layout, mode): the mount prefix each answers under.
SETUPS = [
    ("uvicorn", "top", "thread"),
    ("uvicorn", "top", "process"),
    ("hypercorn", "top", "thread"),
    ("hypercorn", "top", "process"),
    ("uvicorn", "starlette", "thread"),
    ("uvicorn", "starlette", "process"),
]
IDS = ["-".join(setup) for setup in SETUPS]


class Setup:
    def __init__(self, server: AsgiServer, layout: str, mode: str, tmp: Path) -> None:
        self.server = server
        self.prefix = "/legacy" if layout == "starlette" else ""
        self.mode = mode
        self.tmp = tmp

    def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return self.server.request("GET", self.prefix + path, **kwargs)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, ...], Setup]]:
    """Servers started on first use, one per setup, all stopped with the module."""
    cache: dict[tuple[str, ...], Setup] = {}
    yield cache
    for setup in cache.values():
        setup.server.stop()


@pytest.fixture(params=SETUPS, ids=IDS)
def setup(request: pytest.FixtureRequest, servers: dict[tuple[str, ...], Setup]) -> Setup:
    return _get(request, servers, request.param)


def _get(
    request: pytest.FixtureRequest, servers: dict[tuple[str, ...], Setup], key: tuple[str, ...]
) -> Setup:
    if key not in servers:
        server, layout, mode = key
        tmp = request.getfixturevalue("tmp_path_factory").mktemp("-".join(key))
        env = {
            "ASGI_MODE": mode,
            "ASGI_LAYOUT": layout,
            "ASGI_POOL": json.dumps({**POOL, "max_rss": "80M"}),
            "ASGI_OPTIONS": json.dumps(OPTIONS),
        }
        servers[key] = Setup(start_asgi(tmp, server, "asgimix:app", env), layout, mode, tmp)
    return servers[key]


@pytest.fixture
def uvicorn_process(request: pytest.FixtureRequest, servers: dict) -> Setup:
    return _get(request, servers, ("uvicorn", "top", "process"))


# -- the environ ---------------------------------------------------------------------


def test_environ_from_the_scope(setup: Setup) -> None:
    server = setup.server
    status, _, body = server.request(
        "POST",
        setup.prefix + "/caf%C3%A9/a%2Fb?x=1&y=%20",
        body=b"hello body",
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "X-Multi": "é".encode().decode("latin-1"),
        },
    )
    assert status == 200, body[:500]
    env = json.loads(body)
    assert env["SCRIPT_NAME"] == setup.prefix
    assert env["PATH_INFO"] == "/café/a/b".encode().decode("latin-1")
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert env["CONTENT_LENGTH"] == "10" and env["body_length"] == 10
    assert env["body_head"] == "hello body"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(server.port)
    # The peer (127.0.0.1) is trusted by default: the forwarded client and scheme count.
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_X_MULTI"] == "é".encode().decode("latin-1")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.multiprocess"] is (setup.mode == "process")
    assert env["wsgi.multithread"] is True


def test_a_request_without_a_body_has_no_content_length(setup: Setup) -> None:
    """As under the aiohttp frontend (and gunicorn): absent unless a body or a length came."""
    status, _, body = setup.get("/plain")
    assert status == 200 and "CONTENT_LENGTH" not in json.loads(body)
    status, _, body = setup.get("/plain", headers={"Content-Length": "0"})
    assert status == 200 and json.loads(body)["CONTENT_LENGTH"] == "0"


def test_chunked_upload_gets_its_exact_length(setup: Setup) -> None:
    parts = iter([b"a" * 1000, b"b" * 70000, b"c"])
    status, _, body = setup.server.request(
        "POST",
        setup.prefix + "/count",
        body=parts,  # an iterable: sent chunked
    )
    assert status == 200 and json.loads(body)["count"] == 71001


def test_streamed_response_arrives_before_the_app_finishes(setup: Setup) -> None:
    flag = setup.tmp / f"flag-{time.monotonic_ns()}"
    conn = http.client.HTTPConnection("127.0.0.1", setup.server.port, timeout=20)
    try:
        conn.request("GET", f"{setup.prefix}/block?flag={flag}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read1(100) == b"first-chunk\n"  # while the app still waits
        flag.touch()
        assert response.read() == b"after-flag\n"
    finally:
        conn.close()


def test_large_streamed_response_is_whole(setup: Setup) -> None:
    size = 5 * MIB + 123
    status, _, body = setup.get(f"/big?size={size}")
    assert status == 200 and len(body) == size


def test_the_apps_headers_and_lengths_are_checked(setup: Setup) -> None:
    status, headers, body = setup.get("/bad-header?kind=crlf")
    assert status == 500 and "x-injected" not in headers and b"X-Injected" not in body
    status, _, body = setup.get("/error-before")
    assert status == 500 and b"secret" not in body
    status, headers, body = setup.get("/hop-by-hop")
    assert status == 200 and body == b"hop-by-hop-body" and headers["x-end-to-end"] == "kept"
    assert not {"keep-alive", "upgrade", "trailer", "proxy-authenticate"} & set(headers)
    assert setup.get("/long")[2] == b"ABCDE"  # declared 5, sent 20
    assert setup.get("/conflicting-length")[0] == 500
    status, headers, _ = setup.get("/latin1-header")
    assert headers["x-latin1"] == "caf\u00e9 \u00ff"  # http.client reads latin-1
    status, headers, body = setup.server.request("HEAD", setup.prefix + "/head-body")
    assert status == 200 and body == b""
    for path in ("/short", "/short-stream", "/error-after"):  # cut, never completed
        with pytest.raises(http.client.IncompleteRead):
            setup.get(path)


def test_slow_client_holds_the_app_not_memory(setup: Setup) -> None:
    """A client that reads nothing of 64 MiB: the server process does not grow."""
    size = 64 * MIB
    process = psutil.Process(setup.server.pid)
    before = process.memory_info().rss
    sock = socket.create_connection(("127.0.0.1", setup.server.port), timeout=30)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET {setup.prefix}/big?size={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(1.0)  # the app would have produced it all by now without backpressure
        stalled = process.memory_info().rss
        received = 0
        while received < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    finally:
        sock.close()
    assert received >= size  # head and body (chunked framing adds a little)
    assert (stalled - before) / MIB < 20, (before / MIB, stalled / MIB)


def test_disconnect_mid_response_calls_close(setup: Setup) -> None:
    mark = setup.tmp / f"closed-{time.monotonic_ns()}"
    sock = socket.create_connection(("127.0.0.1", setup.server.port), timeout=10)
    target = f"{setup.prefix}/ticks?close={mark}&interval=0.05"
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    sock.close()
    # Within a second or so; without watching for http.disconnect it took the
    # servers over 10 s to notice (the app kept writing into a closed transport).
    wait_for(lambda: mark.exists() and "closed" in mark.read_text(), timeout=6)


def test_request_body_over_the_limit_is_413(setup: Setup) -> None:
    sock = socket.create_connection(("127.0.0.1", setup.server.port), timeout=10)
    try:
        sock.sendall(
            f"POST {setup.prefix}/count HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {61 * MIB}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    finally:
        sock.close()
    # Chunked, so only counting finds out.
    parts = (b"x" * MIB for _ in range(62))
    with contextlib.suppress(OSError):  # the server may close while we still send
        status, _, _ = setup.server.request("POST", setup.prefix + "/count", body=parts)
        assert status == 413


def test_more_duplicate_headers_than_asgirefs_limit_is_400(setup: Setup) -> None:
    """asgiref's `duplicate_header_limit` (100 by default): past it a 400, not the app."""

    def status_with(count: int) -> bytes:
        names = ("X-Dup", "x-dup")  # one header name, in any case
        lines = "".join(f"{names[i % 2]}: {i}\r\n" for i in range(count))
        head = f"GET {setup.prefix}/ok HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", setup.server.port), timeout=10) as sock:
            sock.sendall(head.encode())
            return sock.recv(100)

    assert status_with(100).startswith(b"HTTP/1.1 200")
    assert status_with(101).startswith(b"HTTP/1.1 400")


# -- process mode: isolation and recycling -----------------------------------------------


def test_lifespan_starts_and_stops_the_pool(uvicorn_process: Setup) -> None:
    server = uvicorn_process.server
    assert len(server.worker_pids()) >= 2  # started before the first request
    status, _, body = uvicorn_process.get("/pid")
    assert status == 200 and json.loads(body)["pid"] in server.worker_pids()


@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn"])
def test_sigterm_stops_the_pool_through_lifespan(tmp_path: Path, server_name: str) -> None:
    env = {"ASGI_MODE": "process", "ASGI_POOL": json.dumps(POOL)}
    server = start_asgi(tmp_path, server_name, "asgimix:app", env, log_level="info")
    try:
        workers = server.worker_pids()
        assert len(workers) >= 2, server.log
        assert server.request("GET", "/hello")[0] == 200
        os.kill(server.pid, signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down; Hypercorn exits 0.
        assert server.proc.wait(30) in (0, -signal.SIGTERM), server.log
        wait_for(lambda: not any(psutil.pid_exists(pid) for pid in workers), timeout=10)
        assert "Traceback" not in server.log, server.log
        if server_name == "uvicorn":  # lifespan.shutdown.complete came after the pool stopped
            assert "Application shutdown complete" in server.log, server.log
    finally:
        server.stop()


def test_timeout_is_504(uvicorn_process: Setup) -> None:
    status, _, _ = uvicorn_process.get("/slow?ms=6000")
    assert status == 504


def test_worker_killed_under_load_loses_no_get(uvicorn_process: Setup) -> None:
    """Its in-flight GETs run again on the other worker (wsgipool/retry.py): none fails."""
    victim = json.loads(uvicorn_process.get("/pid")[2])["pid"]  # a live worker

    def slow(_: int) -> tuple[int, bytes]:
        status, _, body = uvicorn_process.get("/slow?ms=1500", timeout=30)
        return status, body

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(slow, i) for i in range(8)]
        time.sleep(0.7)
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in futures]
    statuses = [status for status, _ in results]
    served_by = [json.loads(body)["pid"] for status, body in results if status == 200]
    assert statuses == [200] * 8, statuses
    assert victim not in served_by
    for _ in range(5):
        assert uvicorn_process.get("/hello")[0] == 200


def test_leaky_app_is_recycled_without_failures(uvicorn_process: Setup) -> None:
    """20 MiB kept per request under max_rss=80M, 4 clients at once: every request 200,
    workers replaced."""

    def leak(_: int) -> tuple[int, bytes]:
        status, _, body = uvicorn_process.get("/leak?mb=20", timeout=30)
        return status, body

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(leak, range(20)))
    failed = [(status, body[:200]) for status, body in results if status != 200]
    assert failed == []
    pids = {json.loads(body)["pid"] for _, body in results}
    assert len(pids) > POOL["workers"], pids


# -- a 50 MB upload: the ASGI server's process stays flat ---------------------------------


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_50mb_upload_keeps_server_rss_flat(
    request: pytest.FixtureRequest, servers: dict, mode: str
) -> None:
    setup = _get(request, servers, ("uvicorn", "top", mode))
    process = psutil.Process(setup.server.pid)
    setup.get("/hello")  # warm: first-request allocations are not the upload's
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        parts = (b"u" * MIB for _ in range(50))
        status, _, body = setup.server.request(
            "POST", "/count", body=parts, headers={"Content-Length": str(50 * MIB)}, timeout=60
        )
    finally:
        done.set()
        sampler.join()
    assert status == 200 and json.loads(body)["count"] == 50 * MIB
    growth = (peak - before) / MIB
    print(f"\n50 MB upload, {mode} mode: server rss before {before / MIB:.1f} MiB, ", end="")
    print(f"peak {peak / MIB:.1f} MiB (+{growth:.1f} MiB)")
    assert growth < 25, (before / MIB, peak / MIB)


# -- Starlette: the mount beside native routes --------------------------------------------


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_starlette_native_route_and_websocket_beside_the_mount(
    request: pytest.FixtureRequest, servers: dict, mode: str
) -> None:
    setup = _get(request, servers, ("uvicorn", "starlette", mode))
    assert setup.server.request("GET", "/native")[2] == b"native async route\n"
    assert websocket_echo(setup.server.port, "/ws", "hi") == "echo: hi"
    # A websocket into the WSGI mount is refused at the handshake.
    assert websocket_status(setup.server.port, "/legacy/anything") == 403


def _handshake(port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def websocket_status(port: int, path: str) -> int:
    sock, head = _handshake(port, path)
    sock.close()
    return int(head.split(b" ", 2)[1])


def websocket_echo(port: int, path: str, text: str) -> str:
    sock, head = _handshake(port, path)
    try:
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head.partition(b"\r\n\r\n")[2]
        data = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        sock.sendall(bytes((0x81, 0x80 | len(data))) + mask + masked)
        while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
            rest += sock.recv(4096)
        assert rest[0] == 0x81
        return rest[2 : 2 + (rest[1] & 0x7F)].decode()
    finally:
        sock.close()


# -- the seeds: a2wsgi's and asgiref's quick starts, with the import swapped ----------------

A2WSGI_EXAMPLE = """\
from a2wsgi import WSGIMiddleware
from flaskapp import app as WSGI_APP

ASGI_APP = WSGIMiddleware(WSGI_APP)
"""

ASGIREF_EXAMPLE = """\
import os

from asgiref.wsgi import WsgiToAsgi
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")
application = WsgiToAsgi(get_wsgi_application())
"""


@pytest.mark.parametrize(
    ("example", "original", "swapped", "path"),
    [
        (A2WSGI_EXAMPLE, "from a2wsgi import", "from wsgipool.asgi import", "/caf%C3%A9/bob"),
        (
            ASGIREF_EXAMPLE,
            "from asgiref.wsgi import",
            "from wsgipool.asgi import",
            "/caf%C3%A9/bob/",
        ),
    ],
    ids=["a2wsgi-flask", "asgiref-django"],
)
def test_seed_examples_with_the_import_swapped(
    tmp_path: Path, example: str, original: str, swapped: str, path: str
) -> None:
    variable = "ASGI_APP" if "ASGI_APP" in example else "application"
    answers = []
    for name, text in (("theirs", example), ("ours", example.replace(original, swapped))):
        assert (name == "theirs") or swapped in text
        (tmp_path / f"{name}_example.py").write_text(text)
        server = start_asgi(
            tmp_path,
            "uvicorn",
            f"{name}_example:{variable}",
            {},
            extra_path=tmp_path,
            lifespan="auto",
        )
        try:
            answers.append(server.request("GET", path))
        finally:
            server.stop()
    (theirs_status, _, theirs_body), (ours_status, _, ours_body) = answers
    assert ours_status == theirs_status == 200, (ours_status, ours_body[:300])
    assert ours_body == theirs_body


# -- README: the quick start, word for word ------------------------------------------------


def test_readme_quick_start_mount_inside_starlette(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Mount a legacy WSGI app inside FastAPI/Starlette", 1)[1]
    section = section.split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    command = section.split("```sh\n", 1)[1].split("```", 1)[0].strip()
    assert code.startswith("# main.py\n")
    (tmp_path / "main.py").write_text(code)
    # The install step is what the test extra already did; the server command is run as written.
    serve = command.split(" && ", 1)[1].split()
    assert serve[:2] == [".venv/bin/uvicorn", "main:app"], serve
    assert serve[2:] == ["--host", "127.0.0.1", "--port", "8000"]
    server = start_asgi(tmp_path, "uvicorn", "main:app", {}, extra_path=tmp_path)
    try:
        assert len(server.worker_pids()) >= 2  # the lifespan started the pool
        assert server.request("GET", "/legacy/")[2] == b"hello from Flask\n"
        assert server.request("GET", "/native")[2] == b"hello from Starlette\n"
    finally:
        server.stop()
