"""Server hooks: user functions named "module:function", called at points of the server's life.

Like gunicorn's server hooks, for legacy apps that open connections or start
threads at import time.  Who calls what, in which process (docs/operations.md):

- ``on_starting(server)``: the main process, before the app is imported anywhere;
- ``when_ready(server)``: the main process, once the workers are ready and the
  sockets listen;
- ``post_fork(worker)``: each worker, after the fork and after the app is
  imported (inherited with --preload), before it serves; an exception fails
  the worker (it is replaced with the crash backoff);
- ``worker_exit(worker)``: each worker, as it exits on its own (stopped,
  recycled, its main process gone); not for a worker killed or crashed.

``server`` is the `wsgipool.server.Server` (``.config``, ``.pool``,
``.sockets``); ``worker`` a `WorkerInfo`.  A hook is imported where it runs:
the main process imports the first two, the template (--preload) or each
worker (--no-preload) the last two.  This module runs in the template and must
stay free of asyncio and aiohttp.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsgipool.loader import AppImportError, one_line

__all__ = ["WorkerInfo", "call_hook", "load_hook"]

logger = logging.getLogger("wsgipool.hooks")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What ``post_fork`` and ``worker_exit`` are told about the worker they run in."""

    pid: int
    #: 1, 2, 3... in the order workers are started; never reused, so replacements get new ones.
    number: int
    #: 1 for the workers of the first template, one more after each reload (SIGHUP).
    generation: int
    #: Whether the app was imported before the fork (--preload) or in this worker.
    preload: bool


def load_hook(spec: str, name: str) -> Callable[..., Any]:
    """Import the function `spec` names; AppImportError (one line, naming the option) if not."""
    flag = f"{name} (--{name.replace('_', '-')})"
    module_name, _, path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise AppImportError(f"{flag}: cannot import {spec!r}: {one_line(exc)}") from None
    for part in path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"{flag}: module {module_name!r} has no {path!r}") from None
    if not callable(obj):
        raise AppImportError(f"{flag}: {spec!r} is a {type(obj).__name__}, not a function")
    return obj  # type: ignore[no-any-return]


def call_hook(hook: Callable[..., Any] | None, name: str, *args: Any) -> bool:
    """Call `hook` if there is one; an exception is logged with its traceback and gives False."""
    if hook is None:
        return True
    try:
        hook(*args)
    except Exception:
        logger.exception("%s hook %s failed", name, _name_of(hook))
        return False
    return True


def _name_of(hook: Callable[..., Any]) -> str:
    module = getattr(hook, "__module__", "?")
    return f"{module}:{getattr(hook, '__qualname__', repr(hook))}"
