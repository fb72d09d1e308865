"""systemd integration without libsystemd: socket activation and sd_notify.

`listen_fds()` takes the sockets systemd (or ``systemd-socket-activate``) passed
to this process: descriptors 3..3+N-1 when ``LISTEN_PID`` is our PID.  The
variables are removed either way, so neither the app nor anything it starts
mistakes them for its own.  The server turns the descriptors into ``fd://N``
binds, so they take the one path every other listener takes.

`Notifier` speaks the sd_notify datagram protocol to ``NOTIFY_SOCKET``: READY,
RELOADING, STOPPING, WATCHDOG.  Without ``NOTIFY_SOCKET`` every call does
nothing; a failed send is logged at debug level and never stops the server.
Sends never block the event loop (a full receive queue drops the message).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import MutableMapping

__all__ = ["LISTEN_FDS_START", "Notifier", "listen_fds"]

logger = logging.getLogger("wsgipool.systemd")

#: The first descriptor systemd passes (after stdin, stdout and stderr).
LISTEN_FDS_START = 3


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[int]:
    """The descriptors systemd passed to this process, made close-on-exec; [] if none."""
    env = os.environ if environ is None else environ
    pid_text = env.pop("LISTEN_PID", None)
    count_text = env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid_text is None or count_text is None:
        return []
    try:
        pid, count = int(pid_text), int(count_text)
    except ValueError:
        logger.warning("ignoring LISTEN_PID=%r LISTEN_FDS=%r: not numbers", pid_text, count_text)
        return []
    if pid != os.getpid():
        logger.debug("LISTEN_FDS is for process %d, not this one (%d)", pid, os.getpid())
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + max(count, 0)))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)  # the app's subprocesses must not hold the listener
        except OSError as exc:
            logger.warning("systemd passed descriptor %d, which is not open: %s", fd, exc)
    return fds


class Notifier:
    """sd_notify messages to the service manager; all of them no-ops without NOTIFY_SOCKET."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address else None
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read (and remove, so the app's processes do not notify) NOTIFY_SOCKET and WATCHDOG_*."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        usec: int | None = None
        if usec_text is not None:
            try:
                usec = int(usec_text)
                if pid_text is not None and int(pid_text) != os.getpid():
                    usec = None  # meant for another process
            except ValueError:
                logger.warning("ignoring WATCHDOG_USEC=%r: not a number", usec_text)
            if usec is not None and usec <= 0:
                usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram; True when it went out."""
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.connect(address)
                sock.send(message.encode("utf-8"))
        except OSError as exc:
            logger.debug("sd_notify %r to %s failed: %s", message, self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def reloading(self) -> None:
        # MONOTONIC_USEC is what Type=notify-reload wants; Type=notify ignores it.
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def start_watchdog(self) -> None:
        """WATCHDOG=1 every half WATCHDOG_USEC, from the event loop (a stuck loop misses it)."""
        if self.watchdog_usec is None or self._watchdog is not None:
            return
        self._watchdog = asyncio.get_running_loop().create_task(self._ping(self.watchdog_usec))

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _ping(self, usec: int) -> None:
        interval = usec / 2_000_000
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    return " ".join(text.split())
