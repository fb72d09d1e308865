"""One frontend process under an arbiter (``--frontends N`` with N > 1).

A frontend is the whole main process of the one-frontend server (aiohttp loop,
dispatcher, supervisor, template, its share of the workers), forked by the
arbiter with the listening sockets already bound.  It differs in three ways:
its title is ``frontend I``; it listens on the inherited sockets instead of
binding; and what it would tell systemd (READY, RELOADING, STOPPING) goes to
the arbiter over a datagram socket, as sd_notify messages, so that the
arbiter speaks for the whole tree.  A start that fails (the app does not
import) is told the same way, as ``ERROR=...``, and the frontend exits 2.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, NoReturn

from wsgipool import systemd
from wsgipool.config import BindAddress, ConfigError
from wsgipool.loader import AppImportError, load_app
from wsgipool.threaded import report_busy_app_threads

if TYPE_CHECKING:
    from wsgipool.server import Server

__all__ = ["ArbiterLink", "die_with", "run_frontend"]

logger = logging.getLogger("wsgipool.server")

_PR_SET_PDEATHSIG = 1


class ArbiterLink(systemd.Notifier):
    """sd_notify messages to the arbiter instead of systemd: one datagram each."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("arbiter")
        self.sock = sock

    def notify(self, message: str) -> bool:
        try:
            self.sock.send(message.encode("utf-8", "replace"))
        except OSError as exc:  # the arbiter is gone: PDEATHSIG stops this process
            logger.debug("cannot tell the arbiter %r: %s", message, exc)
            return False
        return True


def run_frontend(
    server: Server,
    index: int,
    workers: int,
    listeners: list[tuple[BindAddress, socket.socket]],
    link: socket.socket,
    arbiter_pid: int,
    metrics_bind: str | None = None,
) -> NoReturn:
    """In the forked child: become frontend `index` with `workers` workers, serve, exit.

    `metrics_bind` is this frontend's private metrics listener (unix:PATH) when the
    server has --metrics-bind: the arbiter's metrics process merges them all.
    """
    die_with(arbiter_pid)
    notifier = ArbiterLink(link)
    code = 0
    try:
        server.role = f"frontend {index}"
        # The pid file is the arbiter's; the metrics address is the arbiter's metrics process's.
        server.config = dataclasses.replace(server.config, pid=None, metrics_bind=metrics_bind)
        server.pool = dataclasses.replace(server.pool, workers=workers)
        server.listeners = listeners
        server.link = notifier
        server._unix_paths = []  # the arbiter's to remove, once every frontend is gone
        if workers == 0 and isinstance(server.application, str):
            server.application = load_app(server.application)  # each frontend its own threads
        server.run()
    except (ConfigError, AppImportError) as exc:
        notifier.notify(f"ERROR={exc}")
        code = 2
    except BaseException:
        logger.exception("frontend %d failed", index)
        notifier.notify("ERROR=the frontend failed; see the log above")
        code = 1
    _leave(code)


def die_with(arbiter_pid: int) -> None:
    """SIGTERM (a graceful stop) to this process if the arbiter dies first."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the frontend outlives a killed arbiter
        return
    if os.getppid() != arbiter_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _leave(code: int) -> NoReturn:
    """Exit without the arbiter's atexit handlers; app threads cut by the drain are left."""
    report_busy_app_threads()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
