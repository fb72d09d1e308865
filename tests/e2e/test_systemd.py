"""systemd: socket activation (LISTEN_FDS) and sd_notify, from the outside.

Socket activation runs under ``systemd-socket-activate`` (Debian package
``systemd``), which listens, then execs the server with LISTEN_FDS/LISTEN_PID
when the first client connects.  Notifications go to a datagram socket the
test binds, standing in for systemd's NOTIFY_SOCKET.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess, free_port, http_get
from tests.polling import wait_for
from tests.systemd import NotifySocket, activate
from wsgipool.cli import build_parser
from wsgipool.config import Config, PoolConfig, split_options

PROCESSES = ["--workers", "2", "--threads", "2"]


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(str(short_tmp / "notify"))
    try:
        yield receiver
    finally:
        receiver.close()


def get(port: int, path: str = "/env") -> tuple[int, bytes]:
    return http_get(port, path)


def test_ready_reloading_watchdog_and_stopping(
    run_server: Callable[..., ServerProcess], notify: NotifySocket
) -> None:
    server = run_server(
        "deployapp:app",
        *PROCESSES,
        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"},
        wait=False,
    )
    ready = notify.wait_for("READY=1")
    assert "STATUS=serving with 2 worker process(es)" in ready
    # READY=1 means the workers answer: a request sent now is served at once.
    assert server.port is not None
    status, body = get(server.port)
    assert status == 200
    environ = json.loads(body)
    assert "NOTIFY_SOCKET" not in environ  # not in os.environ either: the app cannot see it
    assert "ready in" in server.log and "serving with" in server.log

    # Half of WATCHDOG_USEC: pings every 0.2 s.
    pings = [notify.wait_for("WATCHDOG=1", timeout=10) for _ in range(3)]
    assert pings == ["WATCHDOG=1"] * 3

    server.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1")
    fields = dict(line.split("=", 1) for line in reloading.splitlines())
    assert int(fields["MONOTONIC_USEC"]) > 0
    assert notify.wait_for("READY=1").startswith("READY=1")
    assert wait_for(lambda: "generation 2" in server.log, 30)
    assert get(server.port)[0] == 200

    server.signal(signal.SIGTERM)
    assert notify.wait_for("STOPPING=1") == "STOPPING=1"
    assert server.wait(30) == 0
    # Nothing after STOPPING but the pings that may have been on their way.
    notify.sock.settimeout(0.2)
    late: list[bytes] = []
    try:
        while True:
            late.append(notify.sock.recv(4096))
    except TimeoutError:
        pass
    assert set(late) <= {b"WATCHDOG=1"}


def test_abstract_notify_socket(run_server: Callable[..., ServerProcess]) -> None:
    receiver = NotifySocket(f"@wsgipool-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        server = run_server(
            "deployapp:app",
            "--workers",
            "1",
            env={"NOTIFY_SOCKET": receiver.address},
            wait=False,
        )
        assert receiver.wait_for("READY=1")
        server.signal(signal.SIGTERM)
        assert receiver.wait_for("STOPPING=1") == "STOPPING=1"
        assert server.wait(30) == 0
    finally:
        receiver.close()


def test_unreachable_notify_socket_changes_nothing(
    run_server: Callable[..., ServerProcess], short_tmp: Path
) -> None:
    server = run_server(
        "deployapp:app", "--workers", "1", env={"NOTIFY_SOCKET": str(short_tmp / "nobody-here")}
    )
    assert server.port is not None
    assert get(server.port)[0] == 200
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0


needs_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (apt-get install systemd)",
)


@needs_activate
def test_socket_activation_tcp(run_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    ignored = free_port()
    server = run_server(
        "deployapp:app",
        *PROCESSES,
        "--bind",
        f"127.0.0.1:{ignored}",  # the activated socket replaces it
        bind=False,
        wait=False,
        launcher=activate(f"127.0.0.1:{port}"),
    )
    # systemd-socket-activate execs the server when the first client connects;
    # that client waits in the backlog and is answered once the server runs.
    assert wait_for(lambda: "Listening on" in server.log, 10), server.log
    status, body = get(port)
    assert status == 200
    environ = json.loads(body)
    assert environ["SERVER_PORT"] == str(port)
    assert "systemd socket activation: fd://3" in server.log
    assert f"listening on http://127.0.0.1:{port}" in server.log
    assert f"listening on http://127.0.0.1:{ignored}" not in server.log
    assert wait_for(lambda: "(sockets from systemd (LISTEN_FDS); workers from" in server.log, 10)
    assert "bind from" not in server.log
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ignored), timeout=5).close()
    assert get(port, "/whoami")[0] == 200
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string((ROOT / "deploy" / "systemd" / name).read_text())
    return unit


@needs_activate
def test_unit_files_from_the_docs(
    run_server: Callable[..., ServerProcess], short_tmp: Path, notify: NotifySocket
) -> None:
    """deploy/systemd/myapp.{socket,service} as systemd would run them, on a test socket."""
    socket_unit, service = read_unit("myapp.socket"), read_unit("myapp.service")
    assert socket_unit["Socket"]["SocketMode"] == "0660"
    unit = service["Service"]
    assert unit["Type"] == "notify"
    assert unit["KillMode"] == "mixed"  # SIGTERM to the main process only

    argv = shlex.split(unit["ExecStart"])
    assert argv[0].endswith("/wsgipool") and argv[1] == "serve"
    assert "--bind" not in argv  # the socket unit provides it
    assert argv[2] == "myproject.wsgi:application"
    options = vars(build_parser().parse_args(argv[1:]))
    config = Config(**split_options(options)[0])
    pool = PoolConfig(**split_options(options)[1])
    # --graceful-timeout bounds the whole stop, of which requests get --shutdown-timeout.
    assert 20 <= config.shutdown_timeout < pool.graceful_timeout
    assert float(unit["TimeoutStopSec"]) > pool.graceful_timeout
    assert float(unit["WatchdogSec"]) > 0

    path = short_tmp / "app.sock"  # for ListenStream=/run/myapp/wsgipool.sock
    assert socket_unit["Socket"]["ListenStream"].startswith("/")
    server = run_server(
        "deployapp:app",
        *argv[3:],
        bind=False,
        wait=False,
        # systemd sets WATCHDOG_USEC from WatchdogSec; shorter here so pings come quickly.
        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "500000"},
        launcher=activate(str(path), "NOTIFY_SOCKET", "WATCHDOG_USEC"),
    )
    assert wait_for(lambda: "Listening on" in server.log, 10), server.log

    def unix_get() -> bytes:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(30)
        try:
            client.connect(str(path))
            client.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = b""
            while chunk := client.recv(65536):
                response += chunk
        finally:
            client.close()
        return response

    # The first connection starts the service; it is answered once wsgipool runs.
    assert unix_get().startswith(b"HTTP/1.1 200 ")
    assert "STATUS=serving with 4 worker process(es)" in notify.wait_for("READY=1")
    assert "systemd socket activation: fd://3" in server.log
    assert notify.wait_for("WATCHDOG=1", timeout=10) == "WATCHDOG=1"

    # ExecReload, as systemctl reload runs it.
    reload = unit["ExecReload"].replace("$MAINPID", str(server.pid))
    server.descendants()
    subprocess.run(shlex.split(reload), check=True, timeout=10)
    assert notify.wait_for("RELOADING=1")
    assert notify.wait_for("READY=1")
    assert unix_get().startswith(b"HTTP/1.1 200 ")

    # systemctl stop: SIGTERM to the main process (KillMode=mixed).
    server.signal(signal.SIGTERM)
    assert notify.wait_for("STOPPING=1") == "STOPPING=1"
    assert server.wait(float(unit["TimeoutStopSec"])) == 0
