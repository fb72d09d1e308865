"""HTTPS: --certfile/--keyfile/--ca-certs/--ssl-min-version, and serve(ssl_context=...).

Real TLS clients (http.client over ssl, aiohttp's client) against a server in
process mode, with certificates the test makes (tests/certs.py).  The worker's
direct write to the client socket is declined on TLS connections and sendfile
falls back to reads, so the streamed, direct and file_wrapper responses must
arrive intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.apps.directapp import pattern
from tests.certs import Pki, make_pki
from tests.cli import assert_one_line_error, run_cli, wsgipool_cmd
from tests.conftest import ServerProcess, free_port, request_once, server_env
from tests.polling import wait_for

PROCESSES = ["--workers", "2", "--threads", "2"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_args(pki: Pki) -> list[str]:
    return ["--certfile", str(pki.cert), "--keyfile", str(pki.key)]


def get(
    port: int, path: str, context: ssl.SSLContext, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)
    return request_once(conn, "GET", path)


def test_https_environ_streamed_direct_and_sendfile(
    run_server: Callable[..., ServerProcess], pki: Pki, tmp_path: Path
) -> None:
    server = run_server("deployapp:app", *PROCESSES, *tls_args(pki))
    assert f"listening on https://127.0.0.1:{server.port}" in server.log
    context = pki.client_context()
    assert server.port is not None

    status, _, body = get(server.port, "/env", context)
    assert status == 200
    environ = json.loads(body)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_PORT"] == str(server.port)

    size = 3 * 1024 * 1024 + 17
    status, headers, body = get(server.port, f"/big?size={size}", context)
    assert (status, len(body)) == (200, size)
    assert headers.get("transfer-encoding") == "chunked"

    # Large enough that a worker would take the socket over on plain HTTP.
    status, _, body = get(server.port, f"/stream?size={size}&length={size}", context)
    assert status == 200
    assert body == (pattern(0, 251 * 1024) * (size // (251 * 1024) + 1))[:size]

    data = os.urandom(2 * 1024 * 1024 + 5)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    for query in (f"path={path}", f"path={path}&length={len(data)}", f"path={path}&seek=100"):
        status, _, body = get(server.port, f"/file?{query}", context)
        assert status == 200
        expected = data[100:] if "seek" in query else data
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest(), query

    # A plain-HTTP client on the TLS port gets no HTTP answer.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.request("GET", "/env")
        conn.getresponse().read()
    conn.close()


def test_aiohttp_client_keeps_its_tls_connection(
    run_server: Callable[..., ServerProcess], pki: Pki
) -> None:
    server = run_server("deployapp:app", *PROCESSES, *tls_args(pki))

    async def fetch_all() -> list[tuple[int, str, int]]:
        connector = aiohttp.TCPConnector(ssl=pki.client_context(), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            out = []
            for _ in range(3):
                url = f"https://localhost:{server.port}/env"
                async with session.get(url) as response:
                    environ = await response.json()
                    out.append((response.status, environ["wsgi.url_scheme"], len(connector._conns)))
            return out

    results = asyncio.run(fetch_all())
    assert [r[:2] for r in results] == [(200, "https")] * 3


def test_client_certificate_required_with_ca_certs(
    run_server: Callable[..., ServerProcess], pki: Pki
) -> None:
    server = run_server("deployapp:app", *PROCESSES, *tls_args(pki), "--ca-certs", str(pki.ca))
    assert server.port is not None
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(server.port, "/env", pki.client_context(with_cert=False), timeout=10)
    status, _, body = get(server.port, "/env", pki.client_context(with_cert=True))
    assert status == 200
    assert json.loads(body)["wsgi.url_scheme"] == "https"
    assert server.proc.poll() is None


def test_minimum_version_and_ciphers(run_server: Callable[..., ServerProcess], pki: Pki) -> None:
    server = run_server(
        "deployapp:app",
        *PROCESSES,
        *tls_args(pki),
        "--ssl-min-version",
        "TLSv1.3",
        "--ssl-ciphers",
        "ECDHE+AESGCM",
    )
    assert server.port is not None
    old = pki.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(server.port, "/env", old, timeout=10)
    status, _, _ = get(server.port, "/env", pki.client_context())
    assert status == 200


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--certfile", "/nonexistent/cert.pem"], "--certfile: cannot read"),
        (["--certfile", "CERT", "--keyfile", "/nonexistent.key"], "--keyfile: cannot"),
        (["--certfile", "CA_KEY"], "not a PEM certificate"),
        (["--keyfile", "KEY"], "--keyfile: needs --certfile"),
        (["--certfile", "CERT", "--keyfile", "KEY", "--ssl-ciphers", "NOPE"], "no cipher"),
        (["--certfile", "CERT", "--keyfile", "KEY", "--ssl-min-version", "SSLv3"], "TLSv1.2"),
        (
            ["--certfile", "CERT", "--keyfile", "KEY", "--ca-certs", "/none.pem"],
            "--ca-certs: cannot read",
        ),
    ],
)
def test_bad_tls_options_are_one_line_and_exit_2(
    pki: Pki, tmp_path: Path, args: list[str], expected: str
) -> None:
    names = {"CERT": pki.cert, "KEY": pki.key, "CA_KEY": pki.ca.with_suffix(".key")}
    argv = [str(names.get(arg, arg)) for arg in args]
    code, _out, err, _left = run_cli(
        wsgipool_cmd("serve", "deployapp:app", "--bind", "127.0.0.1:0", *argv), tmp_path
    )
    assert code == 2, err
    assert_one_line_error(err, expected)


@pytest.fixture
def api_server(tmp_path: Path, pki: Pki) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    log = tmp_path / "api.log"
    script = (
        "import ssl, wsgipool\n"
        "ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)\n"
        f"ctx.load_cert_chain({str(pki.cert)!r}, {str(pki.key)!r})\n"
        f"wsgipool.serve('deployapp:app', bind=['127.0.0.1:{port}'], workers=1, threads=2,"
        " ssl_context=ctx)\n"
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        yield proc, port, log
    finally:
        stop_tree(proc)


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the process, its group and every descendant (by PID)."""
    try:
        known = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        known = []
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in known:
        with contextlib.suppress(psutil.Error):
            child.kill()
    proc.wait(5)


def test_serve_ssl_context_keyword(
    api_server: tuple[subprocess.Popen[bytes], int, Path], pki: Pki
) -> None:
    proc, port, log = api_server
    assert wait_for(lambda: "serving with" in log.read_text() or proc.poll() is not None, 30)
    assert proc.poll() is None, log.read_text()
    status, _, body = get(port, "/env", pki.client_context())
    assert status == 200
    assert json.loads(body)["wsgi.url_scheme"] == "https"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0


def served_certificate(port: int) -> bytes:
    """The DER certificate the server presents to a new connection (no SNI sent)."""
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.parametrize("workers", ["2", "0"])
def test_sighup_renews_the_certificate(
    run_server: Callable[..., ServerProcess], tmp_path: Path, workers: str
) -> None:
    first, second = make_pki(tmp_path / "first"), make_pki(tmp_path / "second")
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    server = run_server(
        "deployapp:app", "--workers", workers, "--certfile", str(cert), "--keyfile", str(key)
    )
    assert server.port is not None
    pem = ssl.PEM_cert_to_DER_cert
    # A connection opened before the renewal keeps its certificate and its session.
    kept = http.client.HTTPSConnection(
        "127.0.0.1", server.port, timeout=10, context=first.client_context()
    )
    with contextlib.closing(kept):
        kept.request("GET", "/env")
        assert kept.getresponse().read()
        assert served_certificate(server.port) == pem(first.cert.read_text())

        # Renewed on disk (as certbot or cert-manager does), then SIGHUP.
        cert.write_bytes(second.cert.read_bytes())
        key.write_bytes(second.key.read_bytes())
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: "TLS certificate reloaded" in server.log, 30), server.log
        assert served_certificate(server.port) == pem(second.cert.read_text())
        status, _, _ = get(server.port, "/env", second.client_context())
        assert status == 200
        kept.request("GET", "/env")
        assert kept.getresponse().status == 200

    # A broken renewal (key of another certificate) is refused; the last good one serves.
    key.write_bytes(first.key.read_bytes())
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: "the previous certificate stays in use" in server.log, 30)
    assert served_certificate(server.port) == pem(second.cert.read_text())
    assert get(server.port, "/env", second.client_context())[0] == 200
