"""A response leaving a worker as frames, in as few writes as the app allows.

Headers wait for the first body chunk (PEP 3333 sends them with it), and a
chunk the app says is the last waits for the end.  A response that is whole
by then leaves as one frame in one sendmsg(): RAW (the head serialised here,
so the main process only checks it and writes it) when the main process
accepts that, else RESPONSE.  A streamed one leaves as START, DATA... and END,
each chunk flushed as soon as the app yields it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

from wsgipool import protocol as p
from wsgipool.worker.channel import BlockingChannel
from wsgipool.wsgicall import HOP_BY_HOP, SERVER_HEADER, ResponseOutput

__all__ = ["FrameOutput", "RawHead"]

_HOLD_LIMIT = 64 * 1024


class RawHead:
    """What a worker needs to serialise a response head itself: the request's version and method."""

    __slots__ = ("head_request", "version")

    def __init__(self, version: str, head_request: bool) -> None:
        self.version = version
        self.head_request = head_request


class _DateLine:
    """The Date header line, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._line = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n"
        return self._line


_date_line = _DateLine()


def serialise(
    raw: RawHead, status: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[bytes, bytes] | None:
    """(head, body) of a whole response, or None when it needs the main process's care.

    That is a body shorter than the Content-Length the app declared: the
    client must see the connection close after it, which the streamed path does.
    """
    code = int(status[:3])
    lines = [f"HTTP/{raw.version} {status}\r\n"]
    declared: int | None = None
    server = date = False
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == "content-length":
            declared = int(value.strip())
            continue
        if lower == "server":
            server = True
        elif lower == "date":
            date = True
        lines.append(f"{name}: {value}\r\n")
    if code in (204, 304):
        body = b""
    else:
        if declared is not None:
            if len(body) < declared and not raw.head_request:
                return None
            body = body[:declared]
        length = len(body) if declared is None else declared
        lines.append(f"Content-Length: {length}\r\n")
        if raw.head_request:
            body = b""
    if not server:
        lines.append(f"Server: {SERVER_HEADER}\r\n")
    if not date:
        lines.append(_date_line())
    lines.append("\r\n")
    return "".join(lines).encode("latin-1"), body


class FrameOutput(ResponseOutput):
    __slots__ = ("_before_end", "_channel", "_held", "_held_size", "_raw", "_rid", "_start")

    def __init__(
        self,
        channel: BlockingChannel,
        request_id: int,
        credit: int,
        before_end: Callable[[], bytes],
        raw: RawHead | None = None,
    ) -> None:
        super().__init__(credit)
        self._channel = channel
        self._rid = request_id
        self._start: tuple[str, list[tuple[str, str]]] | None = None  # not sent yet
        self._held: list[bytes] = []  # body chunks not sent yet
        self._held_size = 0
        self._before_end = before_end
        self._raw = raw

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
            whole = serialise(self._raw, start[0], start[1], body) if self._raw else None
            if whole is not None:
                frame = p.frame(p.RAW, self._rid, p.encode_raw(*whole))
            else:
                frame = p.frame(p.RESPONSE, self._rid, p.encode_response(start[0], start[1], body))
            self._channel.send([report, frame])
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
