"""--unix-socket-group, --unix-socket-perms and --umask on a real server (no proxy needed)."""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli import assert_one_line_error, run_cli, wsgipool_cmd
from tests.conftest import ServerProcess


def _other_group() -> str:
    """A group this process is not in by default when root can choose; else its own."""
    if os.geteuid() == 0:
        for name in ("www-data", "nogroup", "daemon"):
            try:
                grp.getgrnam(name)
            except KeyError:
                continue
            return name
    return grp.getgrgid(os.getgid()).gr_name


def unix_get(path: Path, target: str) -> bytes:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(30)
    try:
        client.connect(str(path))
        client.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := client.recv(65536):
            response += chunk
    finally:
        client.close()
    return response


def test_socket_group_perms_and_umask(
    run_server: Callable[..., ServerProcess], short_tmp: Path
) -> None:
    group = _other_group()
    path = short_tmp / "app.sock"
    server = run_server(
        "deployapp:app",
        "--workers", "1",
        "--bind", f"unix:{path}",
        "--unix-socket-perms", "660",
        "--unix-socket-group", group,
        "--umask", "077",
        bind=False,
    )  # fmt: skip
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert grp.getgrgid(info.st_gid).gr_name == group
    assert info.st_uid == os.geteuid()

    started = short_tmp / "started"
    response = unix_get(path, f"/slow?seconds=0&started={started}")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert stat.S_IMODE(started.stat().st_mode) == 0o600  # 0o666 & ~0o077, in the worker
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--unix-socket-group", "no-such-group-here"], "--unix-socket-group: no such group"),
        (["--umask", "999"], "--umask: expected octal"),
        (["--ssl-min-version", "TLSv1.1"], "--ssl-min-version"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    code, _out, err, _left = run_cli(
        wsgipool_cmd("serve", "deployapp:app", "--bind", "127.0.0.1:0", *args), tmp_path
    )
    assert code == 2, err
    assert_one_line_error(err, expected)


def test_group_by_number() -> None:
    from wsgipool.config import Config

    gid = pwd.getpwuid(os.geteuid()).pw_gid
    assert Config(unix_socket_group=gid).unix_socket_group == str(gid)
    assert Config(umask="027").umask == 0o027
    assert Config(ssl_min_version="1.3").ssl_min_version == "TLSv1.3"
