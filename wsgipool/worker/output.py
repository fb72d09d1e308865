"""A response leaving a worker as frames, in as few writes as the app allows.

Headers wait for the first body chunk (PEP 3333 sends them with it), and a
chunk the app says is the last waits for the end.  A response that is whole
by then leaves as one RESPONSE frame, in one sendmsg(); a streamed one as
START, DATA... and END, each chunk flushed as soon as the app yields it.
"""

from __future__ import annotations

from collections.abc import Callable

from wsgipool import protocol as p
from wsgipool.worker.channel import BlockingChannel
from wsgipool.wsgicall import ResponseOutput

__all__ = ["FrameOutput"]

_HOLD_LIMIT = 64 * 1024


class FrameOutput(ResponseOutput):
    __slots__ = ("_before_end", "_channel", "_held", "_held_size", "_rid", "_start")

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
        self._start: tuple[str, list[tuple[str, str]]] | None = None  # not sent yet
        self._held: list[bytes] = []  # body chunks not sent yet
        self._held_size = 0
        self._before_end = before_end

    def start(self, status: str, headers: list[tuple[str, str]]) -> None:
        self._start = (status, headers)

    def body(self, data: bytes, more: bool) -> None:
        size = len(data)
        offset = 0
        while offset < size:
            piece = data[offset : offset + p.DATA_CHUNK] if size > p.DATA_CHUNK else data
            offset += len(piece)
            if not self.take_credit(len(piece)):
                self._held.clear()
                return
            self._held.append(piece)
            self._held_size += len(piece)
            if more or offset < size or self._held_size > _HOLD_LIMIT:
                self._channel.send(self._take())

    def send_file(self, fd: int, offset: int, count: int | None) -> None:
        parts = self._take()
        parts.append(p.frame(p.FILE, self._rid, p.encode_file(offset, count)))
        self._channel.send(parts, fd)

    def end(self) -> None:
        report = self._before_end()
        start = self._start
        if start is not None:  # nothing sent yet: the whole response in one frame
            self._start = None
            body = b"".join(self._held)
            self._held.clear()
            payload = p.encode_response(start[0], start[1], body)
            self._channel.send([report, p.frame(p.RESPONSE, self._rid, payload)])
            return
        parts = self._take()
        parts.append(report)
        parts.append(p.frame(p.END, self._rid))
        self._channel.send(parts)

    def fail(self, message: str) -> None:
        # Headers not sent yet were never seen: drop them, so the answer is a clean 500.
        self._start = None
        self._held.clear()
        report = self._before_end()
        self._channel.send(
            [report, p.frame(p.ERROR, self._rid, message.encode("utf-8", "replace"))]
        )

    def _take(self) -> list[bytes]:
        """Frames for what is held: START if it has not left yet, then the held chunks."""
        parts: list[bytes] = []
        start = self._start
        if start is not None:
            self._start = None
            payload = p.encode_start(start[0], start[1])
            parts.append(p.frame_header(p.START, self._rid, len(payload)))
            parts.append(payload)
        for piece in self._held:
            parts.append(p.frame_header(p.DATA, self._rid, len(piece)))
            parts.append(piece)
        self._held.clear()
        self._held_size = 0
        return parts
