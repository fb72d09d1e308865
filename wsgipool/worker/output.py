"""A response leaving a worker, in as few writes as the app allows.

Headers wait for the first body chunk (PEP 3333 sends them with it), and a
chunk the app says is the last waits for the end.  A response that is whole
by then leaves as one frame in one sendmsg(): RAW (the head serialised here,
so the main process only checks it and writes it) when the main process
accepts that, else RESPONSE.  A streamed one leaves as START, DATA... and END,
each chunk flushed as soon as the app yields it; or, when it is large and the
main process agrees, it is written straight to the client (worker/direct.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from wsgipool import protocol as p
from wsgipool.clientsock import written_total
from wsgipool.worker.channel import BlockingChannel
from wsgipool.worker.direct import ClientGone, DirectWriter, SendTimedOut
from wsgipool.worker.head import serialise
from wsgipool.worker.rss import RssMeter
from wsgipool.worker.whole import connection_head, write_whole
from wsgipool.wsgicall import ResponseOutput

__all__ = ["FrameOutput", "RawHead"]

logger = logging.getLogger("wsgipool.worker")

_HOLD_LIMIT = 64 * 1024
#: A streamed response with this much ready at its first flush is written directly.
DIRECT_THRESHOLD = 64 * 1024

Waiter = Callable[[threading.Condition, Callable[[], bool]], None]


class RawHead:
    """What a worker needs to write a response head itself: the request's version and
    method, and, when the main process sent it with the request, the client's socket."""

    __slots__ = ("client", "head_request", "keep_alive", "version")

    def __init__(
        self, version: str, head_request: bool, client: int = -1, keep_alive: bool = False
    ) -> None:
        self.version = version
        self.head_request = head_request
        #: The client socket (a descriptor this worker owns) for a small whole response
        #: written here (worker/whole.py); -1 if none came, or once it is closed.
        self.client = client
        self.keep_alive = keep_alive

    def drop_client(self) -> None:
        """The response will not be written here: let go of the client socket."""
        if self.client >= 0:
            os.close(self.client)
            self.client = -1


class FrameOutput(ResponseOutput):
    __slots__ = (
        "_answer",
        "_before_end",
        "_channel",
        "_direct",
        "_held",
        "_held_size",
        "_raw",
        "_rid",
        "_rss_meter",
        "_rss_start",
        "_start",
        "_waiter",
    )

    def __init__(
        self,
        channel: BlockingChannel,
        request_id: int,
        credit: int,
        before_end: Callable[[], bytes],
        raw: RawHead | None = None,
        waiter: Waiter | None = None,
        rss_meter: RssMeter | None = None,
    ) -> None:
        super().__init__(credit)
        self._channel = channel
        self._rid = request_id
        self._start: tuple[str, list[tuple[str, str]]] | None = None  # not sent yet
        self._held: list[bytes] = []  # body chunks not sent yet
        self._held_size = 0
        self._before_end = before_end
        self._rss_meter = rss_meter  # set when %(M)s or the leak finder wants the change
        self._rss_start: int | None = None
        self._raw = raw  # the main process takes RAW heads and direct writes
        self._waiter = waiter
        # (client socket fd or -1, keep-alive, send timeout)
        self._answer: tuple[int, bool, float | None] | None = None
        self._direct: DirectWriter | None = None

    # -- what the reader delivers ---------------------------------------------

    def wait_until(self, ready: Callable[[], bool]) -> None:
        if self._waiter is None:
            super().wait_until(ready)
        else:  # reads the channel itself if nobody else does
            self._waiter(self._cond, ready)

    def answer(self, fd: int, keep_alive: bool, send_timeout: float | None = None) -> None:
        """The main process's answer to TAKEOVER: the client socket, or -1."""
        with self._cond:
            self._answer = (fd, keep_alive, send_timeout)
            self._cond.notify_all()

    # -- the response ---------------------------------------------------------

    def start(self, status: str, headers: list[tuple[str, str]]) -> None:
        self._start = (status, headers)

    def body(self, data: bytes, more: bool) -> None:
        direct = self._direct
        if direct is not None:
            self._write_direct(direct, [data])
            return
        size = len(data)
        offset = 0
        while offset < size:
            piece = data[offset : offset + p.DATA_CHUNK] if size > p.DATA_CHUNK else data
            offset += len(piece)
            if not self.take_credit(p.data_cost(len(piece))):
                self._held.clear()
                return
            self._held.append(piece)
            self._held_size += len(piece)
            if more or offset < size or self._held_size > _HOLD_LIMIT:
                if self._start is not None and self._held_size >= DIRECT_THRESHOLD:
                    if self._take_over():
                        if offset < size:
                            self.body(data[offset:], more)
                        return
                self._channel.send(self._take())

    def send_file(self, fd: int, offset: int, count: int | None) -> None:
        self._drop_client()
        parts = self._take()
        parts.append(p.frame(p.FILE, self._rid, p.encode_file(offset, count)))
        self._channel.send(parts, fd)

    def end(self) -> None:
        direct = self._direct
        if direct is not None:
            self._finish_direct(direct)
            return
        report = self._before_end()
        start = self._start
        if start is not None:  # nothing sent yet: the whole response in one frame
            self._start = None
            body = b"".join(self._held)
            self._held.clear()
            raw = self._raw
            whole = (
                serialise(raw.version, raw.head_request, start[0], start[1], body)
                if raw is not None
                else None
            )
            if raw is not None and raw.client >= 0:
                if whole is not None:
                    self._write_whole(raw, whole, start[0], report)
                    return
                raw.drop_client()
            trailer = self._rss_trailer()
            if whole is not None:
                self._channel.send([report, *p.raw_frame(self._rid, *whole, trailer)])
            else:
                payload = p.encode_response(start[0], start[1], body)
                size = len(payload) + len(trailer)
                header = p.frame_header(p.RESPONSE, self._rid, size)
                self._channel.send([report, header, payload, trailer])
            return
        parts = self._take()
        parts.append(report)
        parts.append(p.frame(p.END, self._rid, self._rss_trailer()))
        self._channel.send(parts)

    def _write_whole(
        self, raw: RawHead, whole: tuple[bytes, bytes], status: str, report: bytes
    ) -> None:
        """Write the whole response to the client socket (worker/whole.py), then DONE."""
        head, body = whole
        fd = raw.client
        raw.client = -1
        head = connection_head(head, raw.version, raw.keep_alive)
        code = int(status[:3])
        # PROGRESS is said before the first byte: a request whose worker dies before
        # the main process has read it may run again on another worker. It names the
        # socket's byte count and what follows, so that if this worker dies before
        # DONE (killed while it waits for the GIL, say) the main process can tell
        # from the socket whether none, all or a part was written. Under the lock
        # that CANCEL takes, so that once this worker has read a CANCEL (a timeout,
        # a client gone) it writes nothing: the main process may then answer itself.
        intent = p.encode_progress(written_total(fd), len(head) + len(body), code)
        with self._cond:
            cancelled = self.cancelled
            if not cancelled:
                self._progress(intent)
        if cancelled:  # nothing written, and END says so
            os.close(fd)
            self._channel.send([report, p.frame(p.END, self._rid, self._rss_trailer())])
            return
        try:
            written, rest = write_whole(fd, [head, body])
        finally:
            os.close(fd)  # before DONE: the main process may close the connection then
        body_sent = min(len(body), max(0, written - len(head)))
        # What the client did not take at once goes back with DONE: the main process
        # writes it under its send deadline, and no thread here waits for a reader.
        complete = rest is not None and raw.keep_alive
        done = p.encode_done(written, code, complete, body_sent, rest or b"")
        self._channel.send([report, p.frame(p.DONE, self._rid, done + self._rss_trailer())])

    def mark_rss(self) -> None:
        """The app starts now: the RSS change reported with the end counts from here."""
        if self._rss_meter is not None:
            self._rss_start = self._rss_meter.start()

    def _rss_trailer(self) -> bytes:
        start = self._rss_start
        if start is None or self._rss_meter is None:
            return p.encode_rss(None)
        self._rss_start = None
        return p.encode_rss(self._rss_meter.end(start))

    def fail(self, message: str) -> None:
        self._drop_client()
        # Headers not sent yet were never seen: drop them, so the answer is a clean 500.
        self._start = None
        if self._rss_start is not None and self._rss_meter is not None:
            self._rss_start = None
            self._rss_meter.abandon()  # ERROR has no RSS trailer
        self._held.clear()
        if self._direct is not None:  # the head is out: the client must see a cut response
            self._direct.close()
            self._direct = None
        report = self._before_end()
        self._channel.send(
            [report, p.frame(p.ERROR, self._rid, message.encode("utf-8", "replace"))]
        )

    # -- direct writes --------------------------------------------------------

    def _take_over(self) -> bool:
        """Ask for the client socket; True if the response is now written directly."""
        self._drop_client()
        raw = self._raw
        start = self._start
        if raw is None or raw.head_request or start is None or start[0][:3] in ("204", "304"):
            return False
        self._channel.send([p.frame(p.TAKEOVER, self._rid)])
        self.wait_until(self._answered)
        answer = self._answer
        if answer is None or answer[0] < 0:
            return False  # declined, or cancelled while asking
        self._start = None
        direct = DirectWriter(
            answer[0], raw.version, answer[1], start[0], start[1], self._progress, answer[2]
        )
        self._direct = direct
        held = self._held
        self._held = []
        self._held_size = 0
        self._write_direct(direct, held)
        return True

    def _answered(self) -> bool:
        return self._answer is not None or self.cancelled

    def _write_direct(self, direct: DirectWriter, chunks: list[bytes]) -> None:
        if self.cancelled:
            return
        try:
            direct.write(chunks)
        except ClientGone as exc:
            self._client_gone(exc)

    def _finish_direct(self, direct: DirectWriter) -> None:
        complete = False
        if not self.cancelled:
            try:
                complete = direct.finish()
            except ClientGone as exc:
                self._client_gone(exc)
        direct.close()
        self._direct = None
        report = self._before_end()
        # Body bytes are counted as they are handed over: a cut write counts whole.
        body = min(direct.body_written, direct.written)
        done = p.encode_done(direct.written, direct.status, complete and not self.cancelled, body)
        self._channel.send([report, p.frame(p.DONE, self._rid, done + self._rss_trailer())])

    def _client_gone(self, exc: ClientGone) -> None:
        """Stop the app: the client left, or took nothing for the send timeout (logged)."""
        if isinstance(exc, SendTimedOut):
            logger.warning("worker %d: %s", os.getpid(), exc)
        self.cancel()

    def _progress(self, payload: bytes = b"") -> None:
        self._channel.send([p.frame(p.PROGRESS, self._rid, payload)])

    def _drop_client(self) -> None:
        if self._raw is not None:
            self._raw.drop_client()

    def _take(self) -> list[bytes]:
        """Frames for what is held: START if it has not left yet, then the held chunks."""
        self._drop_client()
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
