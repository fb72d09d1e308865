"""Collecting exited children without blocking: the template's workers, the arbiter's frontends."""

from __future__ import annotations

import os
from collections.abc import Iterator

from wsgipool.protocol import EXIT_CODE, EXIT_SIGNAL

__all__ = ["exit_status", "reap"]


def reap() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of each child that has exited, until none is left to collect."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def exit_status(status: int) -> tuple[int, int]:
    """How a process ended, as the EXITED frame carries it: (EXIT_SIGNAL, signal
    number) or (EXIT_CODE, exit code), from a wait status."""
    if os.WIFSIGNALED(status):
        return EXIT_SIGNAL, os.WTERMSIG(status)
    return EXIT_CODE, os.waitstatus_to_exitcode(status)
