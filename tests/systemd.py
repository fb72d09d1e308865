"""systemd's ends in tests: a NOTIFY_SOCKET receiver, and systemd-socket-activate's command."""

from __future__ import annotations

import socket
import time


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET would receive."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[str] = []

    def next(self, timeout: float = 30.0) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The next message starting with `prefix`; WATCHDOG pings in between are kept."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            if message.startswith(prefix):
                return message

    def close(self) -> None:
        self.sock.close()


def activate(address: str, *names: str) -> tuple[str, ...]:
    """systemd-socket-activate passes only the variables named with -E to the server."""
    passed = ("PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", *names)
    return ("systemd-socket-activate", "-l", address, *(f"-E{name}" for name in passed))
