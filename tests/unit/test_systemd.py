"""wsgipool.systemd without a server: which variables are trusted and removed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from wsgipool.systemd import Notifier, listen_fds


def test_listen_fds_trusted_only_for_this_pid() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env) == []
    assert env == {}  # removed either way


def test_listen_fds_for_this_pid() -> None:
    sock = socket.socket()
    try:
        fd = sock.fileno()
        # Only a descriptor at 3 would be systemd's; ask for none to keep the test safe.
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
        assert listen_fds(env) == []
        assert fd >= 3
    finally:
        sock.close()


def test_listen_fds_garbage_and_absent() -> None:
    assert listen_fds({}) == []
    assert listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_usec is None


def test_notifier_watchdog_for_another_pid_is_ignored(short_tmp: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(short_tmp / "n"),
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    notifier = Notifier.from_environ(env)
    assert notifier.watchdog_usec is None
    assert env == {}


def test_notifier_sends_and_survives_a_missing_socket(short_tmp: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(short_tmp / "n"))
    receiver.settimeout(5)
    try:
        notifier = Notifier(str(short_tmp / "n"))
        notifier.ready("serving with 2 worker process(es)\nx")
        assert receiver.recv(1024) == b"READY=1\nSTATUS=serving with 2 worker process(es) x"
        notifier.reloading()
        assert receiver.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    finally:
        receiver.close()
    assert Notifier(str(short_tmp / "n")).notify("STOPPING=1") is False
