"""--pid FILE: the main process's PID, for init scripts and ``kill -HUP $(cat FILE)``.

Written once the sockets are bound (a process manager that reads it may send
signals at once), atomically (a reader never sees half a number), and removed
when the server stops, by SIGTERM, SIGINT or SIGQUIT, but only while it still
holds this process's PID: a newer server's file is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os

from wsgipool.config import ConfigError, describe

__all__ = ["check_pid_file", "remove_pid_file", "write_pid_file"]

logger = logging.getLogger("wsgipool.server")


def check_pid_file(path: str) -> None:
    """ConfigError if `path` holds the PID of another live process (a server already running).

    Checked at start, before the app is imported, and again when the file is written.
    """
    other = _read(path)
    if other is not None and other != os.getpid() and _alive(other):
        raise ConfigError(f"{describe('pid')}: {path} holds the PID of a running process ({other})")


def write_pid_file(path: str) -> None:
    """Write this process's PID to `path`; ConfigError if a live process already holds it."""
    check_pid_file(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConfigError(f"{describe('pid')}: cannot write {path}: {exc.strerror}") from None


def remove_pid_file(path: str) -> None:
    if _read(path) == os.getpid():
        try:
            os.unlink(path)
        except OSError as exc:
            logger.warning("cannot remove the pid file %s: %s", path, exc.strerror)


def _read(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
