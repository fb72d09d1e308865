"""Logs from the outside: escaping, the access log and its atoms, files, USR1, JSON, dictConfig.

Each test runs a real server process and reads what it wrote, as an operator's
log shipper would.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import server_env
from tests.e2e.rawhttp import exchange
from tests.polling import wait_for

ALL_ATOMS = (
    'h=%(h)s l=%(l)s u=%(u)s t=%(t)s r="%(r)s" s=%(s)s b=%(b)s B=%(B)s f="%(f)s" '
    'a="%(a)s" T=%(T)s D=%(D)s L=%(L)s m=%(m)s U=%(U)s q=%(q)s H=%(H)s p=%(p)s M=%(M)s '
    "in=%({X-In}i)s out=%({X-Out}o)s"
)

# What must never reach a log raw: C0 controls but tab and line feed, DEL, C1.
_RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_request_data_is_escaped_one_event_one_line(run_server) -> None:
    server = run_server(
        "logapp:app",
        "--workers",
        "1",
        "--access-log",
        "--access-log-format",
        '"%(r)s" %(s)s ua="%(a)s" evil="%({X-Evil}i)s"',
    )
    address = ("127.0.0.1", server.port)
    # aiohttp refuses C0 controls and DEL in headers; C1 controls arrive as UTF-8.
    evil_header = "X-Evil: a\xc2\x9b[2Jb\xc2\x85c\\d\r\n".encode("latin-1")
    events = [
        # An app exception, logged by the worker with the path.
        b"GET /raise%0aFORGED-1%0d%1b[31m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        # A short body, logged by the main process with the path.
        b"GET /short%0aFORGED-2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        # Request data in the access line: the target and headers.
        b"GET /hello?q=%0aFORGED-3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + evil_header
        + b"User-Agent: ua\xc2\x9b\r\n\r\n",
        # A malformed request: its INFO line names what was wrong.
        b"GET /bad\x1b[2J\x00FORGED-4 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for data in events:
        exchange(address, data)
    wait_for(lambda: len(_lines(server.log, '"GET /hello')) >= 1, 10)
    log = server.log
    for line in log.splitlines():
        assert not line.startswith("FORGED"), f"a forged line in the log:\n{log}"
        assert _RAW_CONTROL.search(line) is None, f"a raw control character in {line!r}"
    (error,) = _lines(log, "Error handling GET /raise")
    assert "/raise\\nFORGED-1\\r\\x1b[31m" in error
    (short,) = _lines(log, "app declared Content-Length")
    assert "/short\\nFORGED-2:" in short
    (access,) = _lines(log, '"GET /hello')
    assert '"GET /hello?q=%0aFORGED-3 HTTP/1.1" 200' in access
    assert 'ua="ua\\x9b"' in access
    assert 'evil="a\\x9b[2Jb\\x85c\\\\d"' in access  # reversible: the backslash is doubled
    (malformed,) = _lines(log, "for a malformed request from")
    assert "[INFO] 400" in malformed


def _answers(port: int) -> bool:
    try:
        reply = exchange(("127.0.0.1", port), b"GET /up HTTP/1.0\r\n\r\n", timeout=2)
    except OSError:
        return False
    return reply.split(b"\r\n", 1)[0].endswith(b" 200 OK")


def test_access_log_ignores_log_level(run_server) -> None:
    server = run_server(
        "logapp:app", "--workers", "1", "--access-log", "--log-level", "warning", wait=False
    )
    assert wait_for(lambda: _answers(server.port), 30), server.log
    status, _, _ = server.request("GET", "/hello?x=1")
    assert status == 200
    assert "[INFO]" not in server.log
    assert wait_for(lambda: _lines(server.log, '"GET /hello?x=1 HTTP/1.1" 200'), 10), server.log


@pytest.mark.parametrize("workers", ["0", "2"], ids=["threads", "processes"])
def test_access_log_atoms(run_server, workers: str) -> None:
    server = run_server(
        "logapp:app",
        "--workers",
        workers,
        "--access-log",
        "--access-log-format",
        ALL_ATOMS,
    )
    status, _, body = _get_as_client(server, "/stream?n=3", "in-value", "http://ref/", "tester/1")
    assert status == 200 and len(body) == 3000
    status, _, hello = server.request("GET", "/hello")
    pid = hello.decode().split()[1]
    fields = _atoms(server, "U=/stream")
    assert fields["h"] == "127.0.0.1"
    assert fields["l"] == "-"
    assert fields["u"] == "user1"
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", fields["t"] + "]") or (
        fields["t"].startswith("[")
    )
    assert fields["r"] == '"GET /stream?n=3 HTTP/1.1"'
    assert fields["s"] == "200"
    assert fields["b"] == "3000" and fields["B"] == "3000"  # body bytes, not the head
    assert fields["f"] == '"http://ref/"'
    assert fields["a"] == '"tester/1"'
    assert int(fields["D"]) >= 0 and int(fields["T"]) >= 0 and float(fields["L"]) >= 0
    assert fields["m"] == "GET" and fields["U"] == "/stream" and fields["q"] == "n=3"
    assert fields["H"] == "HTTP/1.1"
    assert fields["in"] == "in-value" and fields["out"] == "streamed"
    if workers == "0":
        assert fields["p"] == "-"
    else:
        assert fields["p"] in server_worker_pids(server) or fields["p"] == pid
    # A large streamed response the worker writes to the socket itself (DONE). A second
    # request on the connection waits for the first to be over in the main process: a
    # client that closed at once could have its handler cancelled before DONE arrives.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/stream?n=3&size=200000")
        response = conn.getresponse()
        big = response.read()
        assert response.status == 200 and len(big) == 600000
        conn.request("GET", "/hello?after=big")
        conn.getresponse().read()
    finally:
        conn.close()
    big_line = wait_for(lambda: _lines(server.log, "q=n=3&size=200000"), 10)
    assert " b=600000 " in big_line[0], big_line
    hello_fields = _atoms(server, "U=/hello")
    assert hello_fields["b"] == str(len(hello))
    assert hello_fields["p"] == (pid if workers != "0" else "-")
    # A small whole response on an idle keep-alive connection: with worker processes,
    # the fast lane's (fastpath.py) line, from the head the worker serialised.
    status, _, small = _get_as_client(server, "/hello?out=whole", "lane", "r2", "t/2", "user2")
    assert status == 200
    small_fields = _atoms(server, "q=out=whole")
    expected = {
        "h": "127.0.0.1",
        "l": "-",
        "u": "user2",
        "r": '"GET /hello?out=whole HTTP/1.1"',
        "s": "200",
        "b": str(len(small)),
        "B": str(len(small)),
        "f": '"r2"',
        "a": '"t/2"',
        "m": "GET",
        "U": "/hello",
        "H": "HTTP/1.1",
        "in": "lane",
        "out": "whole",
        "p": small.decode().split()[1] if workers != "0" else "-",
    }
    assert {k: small_fields[k] for k in expected} == expected, small_fields
    assert small_fields["M"] == "-" or small_fields["M"].lstrip("-").isdigit()
    assert int(small_fields["D"]) >= 0 and small_fields["t"].startswith("[")


def _get_as_client(server, target: str, x_in: str, referer: str, agent: str, user: str = "user1"):
    """A GET with the request headers the atoms read (Basic credentials `user`:pw)."""
    credentials = base64.b64encode(f"{user}:pw".encode()).decode()
    headers = {"X-In": x_in, "Referer": referer, "User-Agent": agent}
    return server.request(
        "GET", target, headers={**headers, "Authorization": f"Basic {credentials}"}
    )


def _atoms(server, needle: str) -> dict[str, str]:
    """name=value pairs of the first access line holding `needle` (ALL_ATOMS' layout)."""
    lines = wait_for(lambda: _lines(server.log, needle), 10)
    assert lines, server.log
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', lines[0]))


def server_worker_pids(server) -> list[str]:
    return [str(p) for p in server.worker_pids()]


def _wsgipool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgipool", "serve", "logapp:app", "--bind", "127.0.0.1:0", *args],
        check=False,
        capture_output=True,
        text=True,
        env=server_env(),
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--access-log-format", "%(h)s %(nope)s"], "unknown atom %(nope)s"),
        (["--access-log-format", "100% %(h)s"], "starts no atom"),
        (["--log-format", "xml"], "expected text or json"),
        (["--log-config", "missing.json"], "cannot read missing.json"),
        (["--log-config", "bad.json"], "is not valid JSON"),
        (["--log-config", "bad.toml"], "is not valid TOML"),
        (["--log-config", "wrong.json"], "cannot apply it"),
        (["--access-logfile", "no/such/dir/a.log"], "cannot open no/such/dir/a.log"),
        (["--error-logfile", "no/such/dir/e.log"], "cannot open no/such/dir/e.log"),
    ],
)
def test_bad_log_options_are_one_line_and_exit_2(tmp_path: Path, args, message) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.toml").write_text("[[[")
    (tmp_path / "wrong.json").write_text(json.dumps({"handlers": {"h": {"class": "no.Such"}}}))
    result = _wsgipool(*args, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


class _Load:
    """Requests in a loop from a few threads; counts what failed."""

    def __init__(self, port: int, paths: list[str]) -> None:
        self.port = port
        self.paths = paths
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(3)]

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        import http.client

        n = 0
        while not self._stop.is_set():
            path = self.paths[(n + index) % len(self.paths)]
            n += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status != 200:
                    self.failed.append(f"{path}: {response.status}")
                else:
                    self.ok += 1
            except OSError as exc:
                self.failed.append(f"{path}: {exc!r}")


def test_usr1_reopens_access_and_error_logs_under_load(run_server, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    errors = tmp_path / "error.log"
    server = run_server(
        "logapp:app",
        "--workers",
        "2",
        "--access-logfile",
        str(access),
        "--error-logfile",
        str(errors),
        wait=False,
    )
    assert wait_for(lambda: errors.exists() and "serving with" in errors.read_text(), 30), (
        server.log
    )
    with _Load(server.port, ["/hello", "/stderr", "/log", "/slow?ms=20"]) as load:
        assert wait_for(lambda: load.ok > 20, 30)
        access.rename(tmp_path / "access.log.1")
        errors.rename(tmp_path / "error.log.1")
        server.signal(signal.SIGUSR1)
        assert wait_for(lambda: access.exists() and "GET /hello" in access.read_text(), 15)
        # Every worker writes to the new error log: its stderr and its logging records.
        workers = set(server.worker_pids())

        def workers_moved() -> bool:
            text = errors.read_text() if errors.exists() else ""
            stderr_pids = {int(m) for m in re.findall(r"stderr line from (\d+)", text)}
            log_pids = {int(m) for m in re.findall(r"app warning from (\d+)", text)}
            return workers <= stderr_pids and workers <= log_pids

        assert wait_for(workers_moved, 20), errors.read_text()

        def all_point_at_new_file() -> bool:
            pids = [server.pid, *(child.pid for child in server.descendants())]
            try:
                return all(os.readlink(f"/proc/{pid}/fd/2") == str(errors) for pid in pids)
            except FileNotFoundError:  # a process that just exited
                return False

        # The template and every worker, idle or not, have the new file as their stderr.
        assert wait_for(all_point_at_new_file, 10)
        done = load.ok
        assert wait_for(lambda: load.ok > done + 10, 15)
    assert load.failed == []
    assert "SIGUSR1: log files reopened" in errors.read_text()
    old_access = (tmp_path / "access.log.1").read_text()
    assert "GET /hello" in old_access
    # After the reopen nothing more goes to the renamed files.
    sizes = ((tmp_path / "access.log.1").stat().st_size, (tmp_path / "error.log.1").stat().st_size)
    status, _, _ = server.request("GET", "/stderr")
    assert status == 200
    assert wait_for(lambda: errors.read_text().count("stderr line from") > 0, 10)
    time.sleep(0.2)
    assert sizes == (
        (tmp_path / "access.log.1").stat().st_size,
        (tmp_path / "error.log.1").stat().st_size,
    )
    assert server.proc.poll() is None


def test_access_logfile_dash_is_stdout(tmp_path: Path) -> None:
    port = _free_port()
    argv = [sys.executable, "-m", "wsgipool", "serve", "logapp:app", "--workers", "0"]
    argv += ["--bind", f"127.0.0.1:{port}", "--access-logfile", "-"]
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, env=server_env(), cwd=tmp_path, start_new_session=True
        )
    try:
        assert wait_for(lambda: "serving with" in (tmp_path / "err").read_text(), 30)
        exchange(
            ("127.0.0.1", port), b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert wait_for(lambda: "GET /hello" in (tmp_path / "out").read_text(), 10)
        assert "GET /hello" not in (tmp_path / "err").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_json_lines(run_server) -> None:
    server = run_server(
        "logapp:app",
        "--workers",
        "1",
        "--access-log",
        "--log-format",
        "json",
        "--log-level",
        "info",
    )
    server.request("GET", "/hello?a=1", headers={"User-Agent": "json-test", "Referer": "r"})
    server.request("GET", "/raise%0aFORGED")
    wait_for(lambda: '"status": 500' in server.log, 10)
    records = [json.loads(line) for line in server.log.splitlines() if line.strip()]
    access = [r for r in records if r["logger"] == "wsgipool.access"]
    hello = next(r for r in access if r["path"] == "/hello")
    assert hello["query"] == "a=1"
    assert hello["method"] == "GET" and hello["status"] == 200 and hello["protocol"] == "HTTP/1.1"
    assert hello["body_bytes"] == len(f"hello {hello['worker_pid']}\n")
    assert hello["user_agent"] == "json-test" and hello["referer"] == "r"
    assert hello["remote"] == "127.0.0.1" and isinstance(hello["duration_us"], int)
    assert "rss_change_kib" in hello and hello["level"] == "INFO" and "time" in hello
    (failure,) = [r for r in records if "Error handling" in r["message"]]
    assert failure["level"] == "ERROR" and failure["logger"].startswith("wsgipool.")
    assert "RuntimeError: the app failed on purpose" in failure["exception"]
    assert failure["pid"] == hello["worker_pid"]
    assert any(r["logger"] == "wsgipool.server" and "serving with" in r["message"] for r in records)


@pytest.mark.parametrize("kind", ["json", "toml"])
def test_log_config_file(run_server, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "custom.log"
    if kind == "json":
        path = tmp_path / "logging.json"
        path.write_text(
            json.dumps(
                {
                    "formatters": {"plain": {"format": "CUSTOM %(name)s %(message)s"}},
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "filename": str(target),
                            "formatter": "plain",
                        }
                    },
                    "loggers": {"wsgipool.access": {"handlers": ["file"], "propagate": False}},
                    "root": {"handlers": ["file"], "level": "INFO"},
                }
            )
        )
    else:
        path = tmp_path / "logging.toml"
        path.write_text(
            f"""
[formatters.plain]
format = "CUSTOM %(name)s %(message)s"
[handlers.file]
class = "logging.FileHandler"
filename = "{target}"
formatter = "plain"
[loggers."wsgipool.access"]
handlers = ["file"]
propagate = false
[root]
handlers = ["file"]
level = "INFO"
"""
        )
    server = run_server(
        "logapp:app", "--workers", "1", "--access-log", "--log-config", str(path), wait=False
    )
    assert wait_for(lambda: target.exists() and "serving with" in target.read_text(), 30)
    status, _, _ = server.request("GET", "/log")
    assert status == 200
    # The worker's line and the main process's access line, in either order.
    text = wait_for(
        lambda: "app warning" in (t := target.read_text()) and "GET /log" in t and t, 10
    )
    assert "CUSTOM wsgipool.access " in text and '"GET /log HTTP/1.1" 200' in text
    assert "CUSTOM logapp app warning from" in text  # the worker applied the file too


def test_client_abort_during_sendfile_is_one_info_line(run_server, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        out.truncate(64 << 20)
    server = run_server("logapp:app", "--workers", "1", "--log-level", "info")
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /file?path={big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        # An abortive close (RST): the server's next write fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert wait_for(lambda: len(_lines(server.log, "client went away")) == 3, 15), server.log
    status, _, _ = server.request("GET", "/hello")
    assert status == 200
    log = server.log
    assert "Traceback" not in log and "ERROR" not in log, log
    for line in _lines(log, "client went away"):
        assert "[INFO]" in line and "GET /file" in line


def test_django_debug_lines_are_not_duplicated(run_server, tmp_path: Path) -> None:
    server = run_server(
        "djangoproj.wsgi:application",
        "--workers",
        "1",
        env={"DJANGOPROJ_DEBUG": "1", "DJANGOPROJ_DATA": str(tmp_path)},
    )
    status, _, _ = server.request("GET", "/no-such-page-xyz/")
    assert status == 404
    assert wait_for(lambda: "no-such-page-xyz" in server.log, 10), server.log
    time.sleep(0.3)
    lines = _lines(server.log, "no-such-page-xyz")
    assert len(lines) == 1, server.log


def test_app_logging_without_its_own_handlers_still_reaches_the_log(run_server) -> None:
    server = run_server("logapp:app", "--workers", "1")
    server.request("GET", "/log")
    assert wait_for(lambda: len(_lines(server.log, "app warning from")) == 1, 10), server.log
    time.sleep(0.2)
    assert len(_lines(server.log, "app warning from")) == 1


@pytest.mark.parametrize("extra", [[], ["--static", "/static=."]], ids=["raw", "routed"])
def test_rss_change_per_request(run_server, extra: list[str]) -> None:
    server = run_server(
        "logapp:grow_app",
        "--workers",
        "1",
        "--access-log",
        "--access-log-format",
        "U=%(U)s q=%(q)s p=%(p)s M=%(M)s",
        *extra,
    )
    for target in ("/a?mb=0", "/b?mb=24", "/c?mb=24&stream=1", "/d?mb=0&stream=1"):
        status, _, body = server.request("GET", target)
        assert status == 200
    pid = body.decode().split()[2]
    lines = wait_for(lambda: len(_lines(server.log, " M=")) >= 4 and _lines(server.log, " M="), 10)
    changes = {}
    for line in lines:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        assert fields["p"] == pid
        changes[fields["U"]] = int(fields["M"])
    assert 23 * 1024 <= changes["/b"] <= 26 * 1024, changes
    assert 23 * 1024 <= changes["/c"] <= 26 * 1024, changes
    assert abs(changes["/a"]) < 2048 and abs(changes["/d"]) < 2048, changes


def test_rss_change_unknown_without_workers(run_server) -> None:
    server = run_server(
        "logapp:grow_app", "--workers", "0", "--access-log", "--access-log-format", "M=%(M)s"
    )
    server.request("GET", "/x?mb=1")
    assert wait_for(lambda: _lines(server.log, "M=-"), 10), server.log


def test_usr1_in_thread_mode(run_server, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    errors = tmp_path / "error.log"
    server = run_server(
        "logapp:app",
        "--workers",
        "0",
        "--access-logfile",
        str(access),
        "--error-logfile",
        str(errors),
        wait=False,
    )
    assert wait_for(lambda: errors.exists() and "serving with" in errors.read_text(), 30)
    server.request("GET", "/hello")
    access.rename(tmp_path / "access.log.1")
    errors.rename(tmp_path / "error.log.1")
    server.signal(signal.SIGUSR1)
    assert wait_for(lambda: errors.exists() and "log files reopened" in errors.read_text(), 10)
    status, _, _ = server.request("GET", "/stderr")
    assert status == 200
    assert wait_for(lambda: "stderr line from" in errors.read_text(), 10)
    assert wait_for(lambda: access.exists() and "GET /stderr" in access.read_text(), 10)
    assert "GET /hello" in (tmp_path / "access.log.1").read_text()


def test_direct_write_whose_client_leaves_at_once_keeps_its_access_line(run_server) -> None:
    # The worker writes these responses to the socket itself; a client that closes as
    # soon as it has read one may do so before the main process hears DONE.
    server = run_server(
        "logapp:app", "--workers", "1", "--access-log", "--access-log-format", "%(U)s %(q)s b=%(b)s"
    )
    count = 40
    for i in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", f"/stream?n=3&size=200000&i={i}")
        response = conn.getresponse()
        assert len(response.read()) == 600000
        conn.close()
    lines = wait_for(lambda: len(_lines(server.log, "size=200000")) == count, 15)
    assert lines, f"{len(_lines(server.log, 'size=200000'))} access lines for {count} requests"
    assert all(line.endswith(" b=600000") for line in _lines(server.log, "size=200000"))
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", ["0", "2"], ids=["threads", "processes"])
def test_a_client_leaving_a_file_response_is_logged_with_the_bytes_sent(
    run_server, tmp_path: Path, workers: str
) -> None:
    """sendfile(2) put bytes in the socket before the client left: the line counts them."""
    size = 64 * 1024 * 1024
    path = tmp_path / "big.bin"
    with path.open("wb") as file:
        file.truncate(size)  # sparse: nothing written to the disk
    server = run_server(
        "logapp:app", "--workers", workers, "--access-log", "--access-log-format", "%(U)s b=%(b)s"
    )
    read = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /file?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while read < 300_000:
            chunk = sock.recv(65536)
            assert chunk, read
            read += len(chunk)
        time.sleep(0.3)  # the socket's buffers fill up: sendfile waits for the client
    lines = wait_for(lambda: _lines(server.log, "/file b="), 15)
    assert lines, server.log
    sent = re.search(r"/file b=(\d+)$", lines[0])
    # What the client read, and at most what the kernel's buffers held besides.
    assert sent and read - 1024 <= int(sent.group(1)) < size, lines
    # The line that says so, unless aiohttp saw the connection close first and
    # cancelled the handler: then only the access line tells.
    gone = re.search(r"client went away after (\d+) bytes of a file response", server.log)
    assert gone is None or int(gone.group(1)) == int(sent.group(1)), server.log
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", ["0", "2"], ids=["threads", "processes"])
def test_a_request_whose_client_leaves_keeps_its_access_line(
    run_server, tmp_path: Path, workers: str
) -> None:
    # aiohttp cancels the handler of a client that left and writes no line for it.
    server = run_server(
        "streamapp:app",
        "--workers",
        workers,
        "--access-log",
        "--access-log-format",
        "%(U)s s=%(s)s b=%(b)s p=%(p)s",
    )
    started = tmp_path / "started"
    # Gone while the app works (process mode: on the fast lane): nothing was sent, 499.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET /slow?seconds=2&started={started} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_for(started.exists, 10), server.log
    # Gone in the middle of a streamed response: its status and the bytes sent so far.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /ticks?interval=0.1&size=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(b"ttttt") < 2:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    slow = wait_for(lambda: _lines(server.log, "/slow s="), 15)
    ticks = wait_for(lambda: _lines(server.log, "/ticks s="), 15)
    assert slow and ticks, server.log
    pid = "-" if workers == "0" else r"\d+"  # the worker the app ran on
    assert re.search(rf"/slow s=499 b=- p={pid}$", slow[0]), slow
    sent = re.search(r"/ticks s=200 b=(\d+) p=", ticks[0])
    assert sent and int(sent.group(1)) >= 10 and int(sent.group(1)) % 5 == 0, ticks
    assert "Traceback" not in server.log
