"""A response leaving a worker as frames, in as few writes as the app allows.

START waits for the first body chunk (PEP 3333 sends headers with it), and a
chunk the app says is the last waits for END, so a typical small response is
one sendmsg() of START + DATA + END.
"""

from __future__ import annotations

from collections.abc import Callable

from wsgipool import protocol as p
from wsgipool.worker.channel import BlockingChannel
from wsgipool.wsgicall import ResponseOutput

__all__ = ["FrameOutput"]

_HOLD_LIMIT = 64 * 1024


class FrameOutput(ResponseOutput):
    __slots__ = ("_before_end", "_channel", "_pending", "_pending_size", "_rid", "_started")

    def __init__(
        self,
        channel: BlockingChannel,
        request_id: int,
        credit: int,
        before_end: Callable[[], bytes],
    ) -> None:
        super().__init__(credit)
        self._channel = channel
        self._rid = request_id
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._started = False
        self._before_end = before_end

    def start(self, status: str, headers: list[tuple[str, str]]) -> None:
        payload = p.encode_start(status, headers)
        self._pending.append(p.frame_header(p.START, self._rid, len(payload)))
        self._pending.append(payload)
        self._pending_size += len(payload)
        self._started = True

    def body(self, data: bytes, more: bool) -> None:
        size = len(data)
        offset = 0
        while offset < size:
            piece = data[offset : offset + p.DATA_CHUNK] if size > p.DATA_CHUNK else data
            offset += len(piece)
            if not self.take_credit(len(piece)):
                self._pending.clear()
                return
            self._pending.append(p.frame_header(p.DATA, self._rid, len(piece)))
            self._pending.append(piece)
            self._pending_size += len(piece)
            if more or offset < size or self._pending_size > _HOLD_LIMIT:
                self._flush()

    def send_file(self, fd: int, offset: int, count: int | None) -> None:
        self._pending.append(p.frame(p.FILE, self._rid, p.encode_file(offset, count)))
        parts = self._pending
        self._pending = []
        self._pending_size = 0
        self._channel.send(parts, fd)

    def end(self) -> None:
        self._pending.append(self._before_end())
        self._pending.append(p.frame(p.END, self._rid))
        self._flush()

    def fail(self, message: str) -> None:
        # Headers still pending were never seen: drop them, so the answer is a clean 500.
        self._pending.clear()
        self._pending.append(self._before_end())
        self._pending.append(p.frame(p.ERROR, self._rid, message.encode("utf-8", "replace")))
        self._flush()

    def _flush(self) -> None:
        if self._pending:
            parts = self._pending
            self._pending = []
            self._pending_size = 0
            self._channel.send(parts)
