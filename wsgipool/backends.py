"""Where a frontend's requests run: chosen once, the same way for every frontend.

The aiohttp handler and the ASGI adapter take the same arguments (an app or an
import string; a `ProcessExecutor`, another executor, or none) and mean the
same by them: a ProcessExecutor runs the app in its worker processes, anything
else runs it in threads of this process.  This module is that choice.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from wsgipool import exchange as ev
from wsgipool.cgi import EnvironOptions
from wsgipool.loader import load_app
from wsgipool.threaded import ThreadBackend

if TYPE_CHECKING:
    from wsgipool.executor import ProcessExecutor

__all__ = ["INLINE_BODY_LIMIT", "Placement", "check_keywords", "place"]

#: Bodies up to this size travel inside the request frame to a worker; larger
#: ones are spooled to a file whose descriptor the worker reads.
INLINE_BODY_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Placement:
    """What runs the app, and what follows for reading request bodies."""

    backend: ThreadBackend | ProcessExecutor
    #: Bytes of a request body kept in memory before it is spooled to a file.
    memory_limit: int
    #: The app runs in this process's threads (live objects may go in its environ).
    in_process: bool
    #: Methods that run again when their worker dies before answering (retry.py);
    #: None: never (thread mode, or `retry_methods` empty).
    retry_methods: frozenset[str] | None = None


def place(
    application: Callable[..., Any] | str,
    executor: Executor | ProcessExecutor | None,
    options: EnvironOptions,
    inbuf_overflow: int,
    stderr: IO[str] | None,
) -> Placement:
    """Bind `application` to the worker pool, or load it for this process's threads."""
    # Imported here: thread mode never loads the pool's modules (multiprocess and all).
    from wsgipool.executor import ProcessExecutor

    if isinstance(executor, ProcessExecutor):
        executor.bind(application, options)
        memory_limit = min(inbuf_overflow, INLINE_BODY_LIMIT)
        retry = executor.retry_methods or None
        return Placement(executor, memory_limit, in_process=False, retry_methods=retry)
    app = load_app(application) if isinstance(application, str) else application
    if not callable(app):
        raise TypeError(f"application must be callable, got {type(app).__name__}")
    backend = ThreadBackend(app, executor, options, stderr=stderr, window=ev.RESPONSE_WINDOW)
    return Placement(backend, inbuf_overflow, in_process=True)


def check_keywords(
    inbuf_overflow: object, max_request_body_size: object, url_scheme: object
) -> None:
    """The keywords every frontend (WSGIHandler, WSGIMiddleware) takes alike; ValueError."""
    for name, value in (
        ("inbuf_overflow", inbuf_overflow),
        ("max_request_body_size", max_request_body_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if url_scheme is not None and url_scheme not in ("http", "https"):
        raise ValueError(f"url_scheme must be 'http' or 'https', got {url_scheme!r}")
