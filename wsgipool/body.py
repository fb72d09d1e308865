"""Request bodies: held in memory while small, then spooled to an unnamed temporary file.

The whole body is read before the app runs, as aiohttp-wsgi does: the app gets
an exact CONTENT_LENGTH even for chunked uploads, and a slow upload never holds
a worker thread.  Writes to the file happen in the default executor so a large
upload does not stall the event loop.  A body that stops arriving for
``stall`` seconds raises `BodyTimeout` (deadlines.py); a spooled file is
closed, and so deleted, before the exception leaves.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING

from wsgipool.deadlines import BodyDeadline, BodyTimeout

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Body", "BodyTimeout", "BodyTooLarge", "ReadAny", "read_body", "read_stream"]

#: Returns the next piece of the body as it arrives; b"" at its end.
ReadAny = Callable[[], Awaitable[bytes]]

_FILE_WRITE_BATCH = 256 * 1024


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class Body:
    """A request body: `chunks` as received when in memory, else `file` (positioned at 0).

    The chunks are kept apart: the process executor sends them to the worker
    scatter-gather, so a body is never joined in the main process.
    """

    __slots__ = ("chunks", "file", "length")

    def __init__(
        self, chunks: list[bytes] | None = None, file: IO[bytes] | None = None, length: int = 0
    ) -> None:
        self.chunks = chunks or []
        self.file = file
        self.length = length

    def stream(self) -> IO[bytes]:
        """A readable wsgi.input; the caller closes it."""
        if self.file is not None:
            file, self.file = self.file, None
            return file
        chunks = self.chunks
        return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


EMPTY = Body()


async def read_body(
    request: web.BaseRequest, memory_limit: int, max_size: int, stall: float | None = None
) -> Body:
    """Read the whole body; over `memory_limit` bytes it goes to a temporary file.

    BodyTimeout if `stall` seconds pass without a byte of it.
    """
    if not request.body_exists:
        return EMPTY
    content = request.content
    readany = content.readany
    if stall is None or content.is_eof():
        # Without a limit, or with the whole body already here (most bodies of up to a
        # few hundred KiB): nothing to wait for, so no deadline to arm per request.
        return await read_stream(readany, memory_limit, max_size)
    deadline = BodyDeadline(stall)
    try:
        async with deadline.scope:
            return await read_stream(readany, memory_limit, max_size, deadline)
    except TimeoutError:
        if deadline.scope.expired():
            raise BodyTimeout(stall) from None
        raise


async def read_stream(
    readany: ReadAny, memory_limit: int, max_size: int, deadline: BodyDeadline | None = None
) -> Body:
    """The body `readany` yields, whichever frontend received it (aiohttp, ASGI)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await readany()
        if not chunk:
            break
        size += len(chunk)
        if size > max_size:
            raise BodyTooLarge(max_size)
        chunks.append(chunk)
        if deadline is not None:
            deadline.progress()
        if size > memory_limit:
            return await _spool(readany, chunks, size, max_size, deadline)
    if not chunks:
        return EMPTY
    return Body(chunks=chunks, length=size)


async def _spool(
    readany: ReadAny,
    chunks: list[bytes],
    size: int,
    max_size: int,
    deadline: BodyDeadline | None,
) -> Body:
    loop = asyncio.get_running_loop()
    # Our own work in a thread is never cut short by the deadline: a cancelled
    # write would still run there, on a descriptor closed (and maybe reused) meanwhile.
    if deadline is not None:
        deadline.pause()
    file = await loop.run_in_executor(None, _open_temp)
    if deadline is not None:
        deadline.resume()
    try:
        pending = chunks
        pending_size = sum(len(c) for c in pending)
        while True:
            chunk = await readany()
            if chunk:
                size += len(chunk)
                if size > max_size:
                    raise BodyTooLarge(max_size)
                pending.append(chunk)
                pending_size += len(chunk)
                if deadline is not None:
                    deadline.progress()
            if pending and (pending_size >= _FILE_WRITE_BATCH or not chunk):
                batch = pending
                pending = []
                pending_size = 0
                if deadline is not None:
                    deadline.pause()
                await loop.run_in_executor(None, _write_all, file, batch)
                if deadline is not None:
                    deadline.resume()
            if not chunk:
                break
        file.seek(0)
        return Body(file=file, length=size)
    except BaseException:
        file.close()
        raise


def _open_temp() -> IO[bytes]:
    return tempfile.TemporaryFile(prefix="wsgipool-body-")


def _write_all(file: IO[bytes], chunks: list[bytes]) -> None:
    fd = file.fileno()
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
