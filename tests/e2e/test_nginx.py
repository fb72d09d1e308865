"""wsgipool behind a real nginx, configured by deploy/nginx.conf (shown in docs/deployment.md).

nginx runs in the foreground (``daemon off``) as a child of the test, with its
pid file, logs and temporary files in a directory of its own, listening on free
ports of 127.0.0.1; it is stopped by PID.  As root its workers run as www-data
(as Debian's package does), so the unix-socket test needs --unix-socket-group
and --unix-socket-perms 660 exactly as a real deployment does.

Load is a few client threads for a few seconds; "zero failed requests" means
every request through nginx got a 200 with the expected body.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.certs import Pki, make_pki
from tests.clientthreads import ClientThreads
from tests.conftest import ROOT, ServerProcess, free_port, request_once
from tests.polling import wait_for

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx)"
)

SITE = ROOT / "deploy" / "nginx.conf"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


IS_ROOT = os.geteuid() == 0
# As root nginx's workers drop to an unprivileged user; Debian's package uses www-data.
NGINX_USER = "www-data" if IS_ROOT and _has_user("www-data") else "nobody"


def site_config(upstreams: list[str], http_port: int, https_port: int, pki: Pki) -> str:
    """deploy/nginx.conf with this test's upstreams, ports and certificate."""
    text = SITE.read_text()
    replacements = {
        "    server 127.0.0.1:8000;\n": "".join(f"    server {u};\n" for u in upstreams),
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "/etc/ssl/certs/example.pem": str(pki.cert),
        "/etc/ssl/private/example.key": str(pki.key),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(self, directory: Path, site: str, http_port: int, https_port: int) -> None:
        self.directory = directory
        self.http_port = http_port
        self.https_port = https_port
        (directory / "site.conf").write_text(site)
        user = f"user {NGINX_USER} {_group_of(NGINX_USER)};" if IS_ROOT else ""
        (directory / "nginx.conf").write_text(
            f"""
{user}
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/site.conf;
}}
"""
        )
        self.log = open(directory / "stderr.log", "wb")
        assert NGINX is not None
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e",
             str(directory / "error.log")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.known: set[int] = set()
        if not wait_for(self._listening, 15):
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.errors()}")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.errors()}")
        self._remember()
        for port in (self.http_port, self.https_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    def _remember(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.known.update(c.pid for c in psutil.Process(self.proc.pid).children(True))

    def errors(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        self._remember()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # fast shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self.known:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.log.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        tls: bool = False,
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.https_port, context=context, timeout=60
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=60)
        return request_once(conn, method, path, body, headers)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A short directory nginx's unprivileged workers can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="wpn-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_nginx(shared_dir: Path, pki: Pki) -> Iterator[Callable[[list[str]], Nginx]]:
    started: list[Nginx] = []

    def start(upstreams: list[str]) -> Nginx:
        directory = shared_dir / f"nginx{len(started)}"
        directory.mkdir()
        http_port, https_port = free_port(), free_port()
        nginx = Nginx(
            directory, site_config(upstreams, http_port, https_port, pki), http_port, https_port
        )
        started.append(nginx)
        return nginx

    try:
        yield start
    finally:
        for nginx in started:
            nginx.stop()


class Load(ClientThreads):
    """Client threads sending GET `path` through nginx until stopped; every answer is checked."""

    def __init__(self, port: int, path: str = "/whoami", threads: int = 4) -> None:
        self.port = port
        self.path = path
        self.ok = 0
        self.failures: list[str] = []
        self.pids: set[bytes] = set()  # /whoami: which worker processes answered
        super().__init__(threads)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
                good = response.status == 200 and body.count(b" ") == 1
                outcome = None if good else f"{response.status} {body[:80]!r}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self._lock:
                if outcome is None:
                    self.ok += 1
                    self.pids.add(body.split(b" ")[0])
                else:
                    self.failures.append(outcome)
        conn.close()

    def wait_for_ok(self, count: int, timeout: float = 30.0) -> None:
        start = self.ok
        assert wait_for(lambda: self.ok >= start + count, timeout), "load makes no progress"

    def stop(self) -> None:
        self._join(60)


@pytest.fixture
def loads() -> Iterator[Callable[..., Load]]:
    started: list[Load] = []

    def start(port: int, path: str = "/whoami", threads: int = 4) -> Load:
        load = Load(port, path, threads)
        started.append(load)
        return load

    try:
        yield start
    finally:
        for load in started:
            load.stop()


def test_tcp_forwarded_headers_upload_streaming_and_rolling_reload(
    run_server: Callable[..., ServerProcess],
    start_nginx: Callable[[list[str]], Nginx],
    loads: Callable[..., Load],
    pki: Pki,
    tmp_path: Path,
) -> None:
    server = run_server("deployapp:app", "--workers", "2", "--threads", "4")
    nginx = start_nginx([f"127.0.0.1:{server.port}"])

    # X-Forwarded-Proto and -For from nginx (a trusted peer by default: 127.0.0.1).
    status, _, body = nginx.request(
        "GET", "/env", headers={"X-Forwarded-For": "203.0.113.7"}, tls=True,
        context=pki.client_context(),
    )  # fmt: skip
    assert status == 200
    environ = json.loads(body)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"
    assert environ["HTTP_X_FORWARDED_FOR"] == "203.0.113.7, 127.0.0.1"
    assert environ["REMOTE_ADDR"] == "203.0.113.7"
    status, _, body = nginx.request("GET", "/env")
    environ = json.loads(body)
    assert (environ["wsgi.url_scheme"], environ["REMOTE_ADDR"]) == ("http", "127.0.0.1")
    assert environ["HTTP_HOST"] == f"127.0.0.1:{nginx.http_port}"

    # A 50 MB upload (nginx buffers it, then streams it to wsgipool, which spools it).
    upload = os.urandom(1 << 20) * 50
    status, _, body = nginx.request("POST", "/env", body=upload)
    assert status == 200
    assert json.loads(body)["body_length"] == len(upload)

    # A streamed response: the first chunk arrives while the app is still running.
    flag = tmp_path / "flag"
    conn = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=30)
    try:
        conn.request("GET", f"/block?flag={flag}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read1(100) == b"first-chunk\n"
        flag.touch()
        assert response.read() == b"after-flag\n"
    finally:
        conn.close()

    # Rolling SIGHUP under load: every request through nginx succeeds.
    old = {str(pid).encode() for pid in server.worker_pids()}
    load = loads(nginx.http_port)
    load.wait_for_ok(50)
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: server.log.count("generation 2") >= 3, 30), server.log
    load.wait_for_ok(100)
    load.stop()
    new = {str(pid).encode() for pid in server.worker_pids()} - old
    print(f"rolling reload through nginx: {load.ok} requests, {len(load.failures)} failed")
    assert load.failures == []
    # Served by the old workers and by the new ones. (Not necessarily by all four:
    # the dispatcher gives a request to the worker with the most free threads, the
    # first one on a tie, so 4 clients may keep one worker of a generation busy.)
    assert load.pids & old, (load.pids, old)
    assert load.pids & new, (load.pids, new)


def test_keepalive_upstream_and_untrusted_proxy(
    run_server: Callable[..., ServerProcess], start_nginx: Callable[[list[str]], Nginx], pki: Pki
) -> None:
    # nginx is not trusted here, so REMOTE_PORT is nginx's end of the upstream connection.
    server = run_server("deployapp:app", "--workers", "1", "--forwarded-allow-ips", "192.0.2.1")
    nginx = start_nginx([f"127.0.0.1:{server.port}"])
    ports = set()
    for _ in range(20):
        status, _, body = nginx.request("GET", "/env", tls=True, context=pki.client_context())
        assert status == 200
        environ = json.loads(body)
        assert environ["wsgi.url_scheme"] == "http"  # X-Forwarded-Proto from an untrusted peer
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        ports.add(environ["REMOTE_PORT"])
    # 20 client connections to nginx, one kept-alive connection from nginx to wsgipool.
    assert len(ports) == 1, ports


def test_unix_socket_with_group_perms_and_umask(
    run_server: Callable[..., ServerProcess],
    start_nginx: Callable[[list[str]], Nginx],
    shared_dir: Path,
    pki: Pki,
) -> None:
    group = _group_of(NGINX_USER) if IS_ROOT else grp.getgrgid(os.getgid()).gr_name
    path = shared_dir / "app.sock"
    server = run_server(
        "deployapp:app",
        "--workers", "2",
        "--bind", f"unix:{path}",
        "--unix-socket-perms", "660",
        "--unix-socket-group", group,
        "--umask", "027",
        "--forwarded-allow-ips", "unix",
        bind=False,
    )  # fmt: skip
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert grp.getgrgid(info.st_gid).gr_name == group
    nginx = start_nginx([f"unix:{path}"])

    status, _, body = nginx.request(
        "GET", "/env", headers={"X-Forwarded-For": "198.51.100.2"}, tls=True,
        context=pki.client_context(),
    )  # fmt: skip
    assert status == 200, nginx.errors()
    environ = json.loads(body)
    assert environ["wsgi.url_scheme"] == "https"
    # The hop nginx appended (the address it saw), not the one the client wrote:
    # with only `unix` trusted, 127.0.0.1 is no proxy of ours.
    assert environ["HTTP_X_FORWARDED_FOR"] == "198.51.100.2, 127.0.0.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"

    upload = os.urandom(1 << 20) * 50
    status, _, body = nginx.request("POST", "/env", body=upload)
    assert (status, json.loads(body)["body_length"]) == (200, len(upload))

    # --umask reaches the workers: a file the app creates gets 0o666 & ~0o027.
    started = shared_dir / "started"
    status, _, body = nginx.request("GET", f"/slow?seconds=0&started={started}")
    assert (status, body) == (200, b"slow-done")
    assert stat.S_IMODE(started.stat().st_mode) == 0o640
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert not path.exists()


def test_two_instances_one_stopped_under_load(
    run_server: Callable[..., ServerProcess],
    start_nginx: Callable[[list[str]], Nginx],
    loads: Callable[..., Load],
    tmp_path: Path,
) -> None:
    first = run_server("deployapp:app", "--workers", "1", "--threads", "4")
    second = run_server("deployapp:app", "--workers", "1", "--threads", "4")
    nginx = start_nginx([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"])
    load = loads(nginx.http_port)
    load.wait_for_ok(50)
    assert len(load.pids) == 2  # nginx balances over both instances

    # A request in flight on the first instance when it is told to stop.
    started = tmp_path / "started"
    slow: dict[str, object] = {}

    def slow_request() -> None:
        slow["result"] = first.request("GET", f"/slow?seconds=2&started={started}")[::2]

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert wait_for(started.exists, 30)
    first.signal(signal.SIGTERM)

    # It closes its listener at once, while it finishes the request in flight.
    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", first.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    assert wait_for(refused, 10)
    assert first.proc.poll() is None  # still draining
    thread.join(30)
    assert slow["result"] == (200, b"slow-done")
    assert first.wait(30) == 0
    load.wait_for_ok(100)
    load.stop()
    print(
        f"one of two instances stopped under load: {load.ok} requests, {len(load.failures)} failed"
    )
    assert load.failures == []
    assert "stopping (gracefully)" in first.log
