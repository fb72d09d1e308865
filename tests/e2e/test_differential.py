"""Issue 9: every raw wire case of tests/e2e, against thread mode and process mode alike.

One server of each mode, started once for the module, serving the test apps
under prefixes (tests/apps/wiremix.py).  Each case's bytes go to both on a new
connection; every response on it is parsed, and the status lines and headers
must be the same, but for Date and for what docs/architecture.md says differs
by design ("What the two modes answer alike"): header order, and the length
of a body that echoes the environ (envapp, under /env).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, free_port, server_env
from tests.e2e import rawhttp
from tests.e2e.pipelined import CASES as PIPELINE_CASES

SERVER_OPTIONS = [
    "--limit-request-line",
    "1024",
    "--limit-request-field-size",
    "1024",
    "--limit-request-fields",
    "30",
    "--max-request-body-size",
    "1M",
    "--header-timeout",
    "2s",
]
MODES = {
    "threads": ["--workers", "0", "--threads", "4"],
    "processes": ["--workers", "2", "--threads", "2"],
}


@dataclass(frozen=True)
class Wire:
    name: str
    data: bytes
    methods: tuple[str, ...] = ()  # of the responses, where one is HEAD
    echoes_environ: bool = False  # body (so Content-Length) differs by design


def req(method: str, target: str, headers=None, body: bytes = b"", **kw) -> bytes:
    return rawhttp.request_bytes(method, target, headers, body, **kw)


def _cases(tmp: Path) -> list[Wire]:
    file = tmp / "data.bin"
    file.write_bytes(bytes(range(256)) * 300)
    cases: list[Wire] = []
    add = cases.append

    # test_limits.py
    add(Wire("413-declared", req("POST", "/env/up", [("Content-Length", "2000000")], close=False)))
    add(
        Wire(
            "413-expect",
            req("POST", "/env/up", [("Content-Length", "9000000"), ("Expect", "100-continue")]),
        )
    )
    add(
        Wire(
            "expect-ok",
            req("POST", "/env/up", [("Expect", "100-continue")], b"e" * 5000),
            echoes_environ=True,
        )
    )
    piece = b"c" * 65536
    over = req("POST", "/env/up", [("Transfer-Encoding", "chunked")], close=False)
    over += (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") * 17
    add(Wire("413-chunked", over))
    chunked_ok = req(
        "POST", "/env/up", [("Transfer-Encoding", "chunked")], rawhttp.chunked([piece] * 4)
    )
    add(Wire("chunked-ok", chunked_ok, echoes_environ=True))
    add(Wire("408-head", b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Partial: yes\r\n"))
    add(Wire("414", req("GET", "/" + "a" * 2000)))
    add(Wire("414-ok", req("GET", "/env/" + "a" * 900), echoes_environ=True))
    add(Wire("431-field", req("GET", "/", [("X-Big", "b" * 2000)])))
    add(Wire("431-count", req("GET", "/", [(f"X-H{i}", str(i)) for i in range(40)])))
    add(Wire("400-tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)))
    add(Wire("400-length", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"))
    add(
        Wire(
            "400-chunk",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
    )

    # test_pipelining.py: each case alone, then all that keep the connection, pipelined.
    for case in PIPELINE_CASES:
        data = req(case.method, "/bad" + case.target, body=case.request_body)
        add(Wire(f"pipe-{case.method}-{case.target}", data, (case.method,)))
    keep = [c for c in PIPELINE_CASES if not c.cut]
    pipelined = b"".join(
        req(c.method, "/bad" + c.target, body=c.request_body, close=False) for c in keep
    )
    add(
        Wire(
            "pipelined",
            pipelined + req("GET", "/bad/ok"),
            (*(c.method for c in keep), "GET"),
        )
    )

    # test_responses.py
    add(Wire("http10-big", b"GET /stream/big?size=300000 HTTP/1.0\r\n\r\n"))
    for path in ("/latin1-header", "/own-server-date", "/hop-by-hop", "/write"):
        add(Wire(f"resp-{path}", req("GET", "/bad" + path)))
    for path in ("/short", "/short-stream"):
        add(Wire(f"resp-{path}", req("GET", "/bad" + path, close=False)))
    for path in ("/long", "/long-stream"):
        add(Wire(f"resp-{path}", req("GET", "/bad" + path, close=False) + req("GET", "/bad/ok")))
    exact = b"".join(
        req("GET", "/bad" + p, close=False) for p in ("/exact-stream", "/exact-then-pause")
    )
    add(Wire("resp-exact", exact + req("GET", "/bad/ok")))
    add(Wire("file", req("GET", f"/stream/file?path={file}&seek=10")))
    add(Wire("file-length", req("GET", f"/stream/file?path={file}&length=5000")))
    add(Wire("file-short", req("GET", f"/stream/file?path={file}&length=99999", close=False)))
    add(Wire("filelike", req("GET", "/stream/filelike?repeat=30")))
    add(Wire("keepalive", req("GET", "/stream/big?size=1000", close=False) + req("GET", "/echo")))

    # test_environ.py (the bodies echo the environ: worker pid, ports)
    env_requests = [
        req("GET", "/env/caf%c3%a9"),
        req("GET", "http://example.com/env/p%20x?x=1"),
        req("GET", "/env/a?b?c=%3F"),
        req("OPTIONS", "*"),
        b"GET /env/old HTTP/1.0\r\n\r\n",
        req("POST", "/env/c", [("Transfer-Encoding", "chunked")], rawhttp.chunked([b"a" * 1000])),
        req("POST", "/env/c", [("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
        req("GET", "/env/h", [("X-Multi", "a"), ("Cookie", "a=1"), ("x-multi", "b")]),
        req("GET", "/env/u", [("X_Auth_User", "evil"), ("X-Auth-User", "good")]),
        b"GET /env/hdr HTTP/1.1\r\nHost: x\r\nX-Name: caf\xc3\xa9 \xff\r\n"
        b"Connection: close\r\n\r\n",
    ]
    for index, data in enumerate(env_requests):
        add(Wire(f"environ-{index}", data, echoes_environ=True))

    # test_wire.py
    for version in (b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/3.0"):
        add(Wire(f"version-{version.decode()}", b"GET /echo " + version + b"\r\nHost: x\r\n\r\n"))
    add(
        Wire(
            "http10-te",
            b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" + req("GET", "/echo?x=next"),
        )
    )
    add(Wire("http10-stream", b"GET /stream?parts=4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
    add(Wire("fragment", req("GET", "/a?x=1#frag")))
    add(Wire("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"))
    for status in ("200", "200+", "299+Odd"):
        add(Wire(f"status-{status}", req("GET", f"/echo?status={status}")))
    add(Wire("bare", req("GET", "/bare")))
    add(Wire("server", req("GET", "/server")))
    add(Wire("no-length", req("GET", "/echo") + b""))
    add(Wire("zero-length", req("POST", "/echo", [("Content-Length", "0")])))
    add(
        Wire(
            "upgrade-h2c",
            req("GET", "/echo", [("Connection", "Upgrade"), ("Upgrade", "h2c")]).replace(
                b"Connection: close\r\n", b""
            )
            + req("GET", "/echo?x=next"),
        )
    )
    return cases


def _start(tmp: Path, mode: str) -> ServerProcess:
    port = free_port()
    args = ["serve", "wiremix:app", *MODES[mode], *SERVER_OPTIONS]
    args += ["--bind", f"127.0.0.1:{port}"]
    server = ServerProcess(args, port, tmp / f"{mode}.log", server_env(), tmp)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("differential")
    started = {mode: _start(tmp, mode) for mode in MODES}
    try:
        for server in started.values():
            server.wait_until_serving()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[Wire]:
    return _cases(tmp_path_factory.mktemp("files"))


def _responses(server: ServerProcess, case: Wire) -> list[tuple[bytes, list[tuple[bytes, bytes]]]]:
    """(status line, headers sorted, Date aside) of every response on the connection."""
    try:
        data = rawhttp.exchange(("127.0.0.1", server.port), case.data, timeout=15)
    except TimeoutError as exc:  # never closed: reported with the rest, not alone
        return [(b"<no end within 15 s>", [(b"got", str(exc)[:200].encode())])]
    out = []
    index = 0
    while data:
        method = case.methods[index] if index < len(case.methods) else "GET"
        response = rawhttp.parse_one(data, method)
        # An interim response (100 Continue) does not use up a request.
        method_index = index if 100 <= response.status < 200 else index + 1
        skip = {b"date"}
        if case.echoes_environ:
            skip.add(b"content-length")
        headers = sorted((k.lower(), v) for k, v in response.headers if k.lower() not in skip)
        out.append((response.raw_head.split(b"\r\n", 1)[0], headers))
        index = method_index
        data = response.rest
    return out


def test_both_modes_answer_every_wire_case_alike(servers, cases):
    differences = []
    with ThreadPoolExecutor(2) as pool:  # both servers at once: half the wall time
        for case in cases:
            threads_call = pool.submit(_responses, servers["threads"], case)
            processes = _responses(servers["processes"], case)
            threads = threads_call.result()
            if threads != processes:
                differences.append(
                    f"{case.name}:\n  threads:   {threads}\n  processes: {processes}"
                )
            elif b"<no end" in repr(threads).encode():
                differences.append(f"{case.name}: no end in either mode")
    assert not differences, "\n".join(differences)
    print(f"\n{len(cases)} wire cases, the same answers in both modes")
