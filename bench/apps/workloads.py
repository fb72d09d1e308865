"""The benchmark workloads, one plain WSGI callable each (``bench.apps.workloads:hello``, ...).

Every server serves exactly these callables, so the work per request is the same
everywhere; `bench.checks` knows what each must answer.  Nothing here depends on
wsgipool.

Environment (read at import, so every server process agrees):

- ``BENCH_WORKDIR``: where the 10 MiB file for ``file`` lives (default ``bench/.work``).
- ``BENCH_LEAK_KIB``: what ``leak`` keeps per request (default 64 KiB).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

StartResponse = Callable[..., Any]

HELLO_BODY = b"Hello, World!"  # 13 bytes

# cpu: a fixed amount of pure-Python work (not a time budget), about 2 ms on a
# 2020s x86 core; its result is the body, so the check proves the work was done.
CPU_ITERATIONS = 36_000

SLEEP_SECONDS = 0.05
SLEEP_BODY = b"slept 50 ms\n"

CHUNK_SIZE = 64 * 1024
BIG_SIZE = 1024 * 1024
_CHUNK = bytes(range(256)) * (CHUNK_SIZE // 256)

ECHO_SIZE = 64 * 1024

FILE_SIZE = 10 * 1024 * 1024
FILE_NAME = "file-10MiB.bin"

LEAK_BYTES = int(os.environ.get("BENCH_LEAK_KIB", "64")) * 1024
LEAK_BODY = b"leaked\n"

ROOT = Path(__file__).resolve().parents[2]


def workdir() -> Path:
    return Path(os.environ.get("BENCH_WORKDIR") or ROOT / "bench" / ".work")


def cpu_work(n: int = CPU_ITERATIONS) -> int:
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1_000_003
    return total


def file_content() -> bytes:
    """The exact bytes of the ``file`` workload's file."""
    return _CHUNK * (FILE_SIZE // CHUNK_SIZE)


def ensure_file() -> Path:
    """Create the 10 MiB file once; concurrent imports race safely (write, then rename)."""
    path = workdir() / FILE_NAME
    try:
        if path.stat().st_size == FILE_SIZE:
            return path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    tmp.write_bytes(file_content())
    os.replace(tmp, path)
    return path


def _headers(length: int, content_type: str = "text/plain") -> list[tuple[str, str]]:
    return [("Content-Type", content_type), ("Content-Length", str(length))]


def hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", _headers(len(HELLO_BODY)))
    return [HELLO_BODY]


def cpu(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    body = b"%d\n" % cpu_work()
    start_response("200 OK", _headers(len(body)))
    return [body]


def sleep(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(SLEEP_SECONDS)
    start_response("200 OK", _headers(len(SLEEP_BODY)))
    return [SLEEP_BODY]


def _big_chunks() -> Iterator[bytes]:
    for _ in range(BIG_SIZE // CHUNK_SIZE):
        yield _CHUNK


def big(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", _headers(BIG_SIZE, "application/octet-stream"))
    return _big_chunks()


def echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    body = stream.read(int(length)) if length.isdigit() else stream.read()
    start_response("200 OK", _headers(len(body), "application/octet-stream"))
    return [body]


class _FileIterator:
    """What a server without wsgi.file_wrapper gets: the file in 64 KiB blocks."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __iter__(self) -> Iterator[bytes]:
        while block := self.handle.read(CHUNK_SIZE):
            yield block

    def close(self) -> None:
        self.handle.close()


_file_lock = threading.Lock()
_file_path: Path | None = None


def file(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    global _file_path
    if _file_path is None:  # the harness creates it before the server starts
        with _file_lock:
            _file_path = ensure_file()
    handle = open(_file_path, "rb")
    start_response("200 OK", _headers(FILE_SIZE, "application/octet-stream"))
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(handle, CHUNK_SIZE)  # type: ignore[no-any-return]
    return _FileIterator(handle)


_LEAKED: list[bytes] = []


def leak(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Keeps LEAK_BYTES (touched, so resident) for ever on every request: a leaky app."""
    _LEAKED.append(b"x" * LEAK_BYTES)
    start_response("200 OK", _headers(len(LEAK_BODY)))
    return [LEAK_BODY]
