"""The response rules (wsgipool/relay.py) are the same under both frontends.

Every case runs against wsgipool's own aiohttp frontend and against uvicorn
serving the ASGI adapter, each in thread and in process mode, and Hypercorn
serving it in process mode, with the same
WSGI app (tests/apps/asgimix.py's: badapps, streamapp). A case is one keep-alive request followed on
the same connection by ``GET /ok``: a complete response must leave the
connection usable (the /ok answer follows), a cut one must end it (no /ok).
Servers are subprocesses in their own process groups, started once per module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.asgiserver import start_asgi
from tests.conftest import ServerProcess, free_port, server_env
from tests.e2e import rawhttp
from tests.polling import wait_for

FILE_DATA = bytes(range(256)) * 400  # 100 KiB
FILE = "/file?path={file}"  # {file}: a file of FILE_DATA
FRONTENDS = [
    "aiohttp-thread",
    "aiohttp-process",
    "uvicorn-thread",
    "uvicorn-process",
    "hypercorn-process",
]
POOL = {"workers": 2, "threads": 2, "timeout": "10s", "graceful_timeout": "5s"}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int = 200
    body: bytes = b""
    #: The Content-Length header the client sees (None: none).
    length: str | None = None
    #: The response is cut: incomplete, and the connection ends after it.
    cut: bool = False
    #: The app's iterable must be closed (its close() recorded).
    closes: bool = True
    headers: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("GET", "/long", body=b"ABCDE", length="5"),  # declared 5, sent 20: cut at 5
    Case("GET", "/long-stream", body=b"ABCDE", length="5"),
    Case("GET", "/exact-stream", body=b"0123456789", length="10"),
    Case("GET", "/short", body=b"0123456789", length="100", cut=True),
    Case("GET", "/short-stream", body=b"0123456789", length="100", cut=True),
    Case("GET", "/error-after", body=b"first-part-", cut=True),
    Case("GET", "/error-before", status=500, closes=False),
    Case("GET", "/error-in-iterable", status=500),
    Case("GET", "/conflicting-length", status=500, closes=False),
    Case("GET", "/no-length", body=b"twelve bytes", length="12", closes=False),
    Case("HEAD", "/no-length", length="12", closes=False),  # the length GET would have
    Case("HEAD", "/head-body", length="1000"),
    Case("HEAD", "/head-body-stream"),
    # An empty HEAD body without a length: GET's is unknown, so none is announced
    # (RFC 9110 section 9.3.2), not "Content-Length: 0".
    Case("HEAD", "/head-empty"),
    Case("GET", "/status-body?code=204", status=204),
    Case("GET", "/status-body?code=304", status=304),
    Case("GET", "/status-body-stream?code=204", status=204),
    Case("GET", "/status-body-stream?code=304", status=304),
    # A file (wsgi.file_wrapper): sendfile under aiohttp, read in pieces under ASGI.
    Case("GET", FILE, body=FILE_DATA, length=str(len(FILE_DATA)), closes=False),
    Case("GET", FILE + "&length=1000", body=FILE_DATA[:1000], length="1000", closes=False),
    Case("HEAD", FILE + "&length=1000", length="1000", closes=False),
    Case("HEAD", FILE, length=str(len(FILE_DATA)), closes=False),
    Case(
        "GET",
        "/hop-by-hop",
        body=b"hop-by-hop-body",
        length="15",
        closes=False,
        headers={"x-end-to-end": "kept"},
    ),
    Case(
        "GET",
        "/own-server-date",
        body=b"ok",
        length="2",
        closes=False,
        headers={"server": "my-app/1.0", "date": "Mon, 01 Jan 2024 00:00:00 GMT"},
    ),
]
IDS = [f"{case.method}-{case.path}" for case in CASES]


class Frontend:
    def __init__(self, server: ServerProcess, tmp: Path, asgi: bool) -> None:
        self.server = server
        self.tmp = tmp
        #: uvicorn and Hypercorn add their own Server and Date headers even when the
        #: app sends them (uvicorn: unless run with --no-server-header, --no-date-header).
        self.asgi = asgi


def _start(name: str, tmp: Path) -> Frontend:
    frontend, mode = name.split("-")
    if frontend in ("uvicorn", "hypercorn"):
        env = {
            "ASGI_MODE": mode,
            "ASGI_LAYOUT": "top",
            "ASGI_POOL": json.dumps(POOL),
        }
        return Frontend(start_asgi(tmp, frontend, "asgimix:app", env), tmp, asgi=True)
    port = free_port()
    if mode == "thread":
        args = ["--workers", "0", "--threads", "4"]
    else:
        args = ["--workers", str(POOL["workers"]), "--threads", str(POOL["threads"])]
    argv = ["serve", "asgimix:wsgi_app", *args, "--bind", f"127.0.0.1:{port}"]
    server = ServerProcess(argv, port, tmp / "server.log", server_env(), tmp)
    try:
        server.wait_until_serving()
    except BaseException:
        server.stop()
        raise
    return Frontend(server, tmp, asgi=False)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Frontend]]:
    cache: dict[str, Frontend] = {}
    yield cache
    for frontend in cache.values():
        frontend.server.stop()


@pytest.fixture(params=FRONTENDS)
def frontend(
    request: pytest.FixtureRequest,
    started: dict[str, Frontend],
    tmp_path_factory: pytest.TempPathFactory,
) -> Frontend:
    name = request.param
    if name not in started:
        started[name] = _start(name, tmp_path_factory.mktemp(name))
    return started[name]


def _closes(record: Path) -> int:
    try:
        return record.read_text().count("closed")
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_same_response_rules_under_both_frontends(frontend: Frontend, case: Case) -> None:
    record = frontend.tmp / f"close-{CASES.index(case)}.txt"
    record.unlink(missing_ok=True)
    data = frontend.tmp / "data.bin"
    if not data.exists():
        data.write_bytes(FILE_DATA)
    path = case.path.replace("{file}", str(data))
    sep = "&" if "?" in path else "?"
    target = f"{path}{sep}close={record}"
    requests = rawhttp.request_bytes(case.method, target, close=False)
    requests += rawhttp.request_bytes("GET", "/ok", close=True)
    raw = rawhttp.exchange(("127.0.0.1", frontend.server.port), requests)
    response = rawhttp.parse_one(raw, case.method)
    assert response.status == case.status, raw
    assert b"secret" not in raw, raw
    if case.status >= 500:  # wsgipool's own error response
        assert response.complete, raw
        assert response.header("content-length") == str(len(response.body)), raw
    elif case.method == "HEAD" or case.status in (204, 304):
        assert not response.rest.startswith(b"0123") and b"must not" not in raw, raw
        assert response.header("content-length") == case.length, raw
    else:
        assert response.body == case.body, raw
        assert response.complete is not case.cut, raw
        assert response.header("content-length") == case.length, raw
    for name, value in case.headers.items():
        if frontend.asgi and name in ("server", "date"):
            values = [v.decode() for k, v in response.headers if k.lower() == name.encode()]
            assert value in values, raw
        else:
            assert response.header(name) == value, raw
    assert not {"keep-alive", "upgrade", "trailer", "proxy-authenticate", "te"} & (
        response.header_names()
    ), raw
    if case.cut:
        assert b"ok-body" not in raw, raw  # nothing may follow a cut response
    else:
        after = rawhttp.parse_one(response.rest)
        assert (after.status, after.body) == (200, b"ok-body"), raw
    if case.closes:
        assert wait_for(lambda: _closes(record) == 1, 10), f"close() not called: {raw!r}"
