"""What the main process lets a worker say about one request: a state machine, no I/O.

A worker is untrusted.  Everything it sends about a request passes through
that request's `RequestGuard`, which knows what the worker may send next and
how many response bytes it may still send, and turns each frame into the
event the handler consumes (`exchange.py`).  Anything else raises
`ProtocolError`; the worker's handle then kills that worker, and every request
it had in flight (the offending one included) gets 502, or a cut connection
if its head went out.  So the handler only ever sees a legal sequence:

    RAW | RESPONSE | ERROR                      a whole response (or a failure)
    START (DATA)* [FILE] (END | ERROR)           a streamed one
    TAKEOVER, then, by the main process's answer:
        handed the socket:  (PROGRESS)* (DONE | ERROR), or START ... as streamed
        declined:           START ... as streamed, or ERROR
    PROGRESS (DONE | ERROR)                     written to the client socket the
                                                REQUEST carried (worker/whole.py); only
                                                this DONE may carry bytes for the main
                                                process to write (what the client did
                                                not take at once), within the credit
    END                                          only after the main process cancelled

Credit: the worker may send DATA only while it has credit left, each frame at
most `DATA_CHUNK` bytes, so it can overrun what the main process granted by
less than one chunk (it spends credit a chunk at a time, and checks only that
some is left). A frame spends at least `DATA_FRAME_COST` (`protocol.data_cost`):
a flood of one-byte frames is bounded in number as a large body is in bytes.
A whole response's body (RAW, RESPONSE) obeys the same bound.
The main process grants credit as it writes to the client, so a client that
reads nothing holds at most the first window plus one chunk of its response.

The handle owns the I/O (descriptors, the socket, the exchange); this module
only decides.  Tested in milliseconds: tests/unit/test_guard.py.
"""

from __future__ import annotations

from typing import Any, Final

from wsgipool import exchange as ev
from wsgipool import protocol as p

__all__ = ["NEW", "PROGRESS", "RequestGuard"]

#: The event for PROGRESS: the direct write is alive (not an exchange event).
PROGRESS: Final = -1
_PROGRESS_EVENT: Final = (PROGRESS, None)
_END_EVENT: Final = (ev.END, None)
_TAKEOVER_EVENT: Final = (ev.TAKEOVER, None)

# Module constants bound once: on_frame runs per frame, and each `p.X` is a lookup.
_DATA: Final = p.DATA
_RAW: Final = p.RAW
_START: Final = p.START
_END: Final = p.END
_DONE: Final = p.DONE
_PROGRESS: Final = p.PROGRESS
_CHUNK: Final = p.DATA_CHUNK
_DATA_EVENT: Final = ev.DATA

# Phases.
NEW: Final = 0  # nothing sent yet
STREAMING: Final = 1  # START sent: DATA, FILE, END, ERROR
FILED: Final = 2  # FILE sent: END or ERROR
OFFERED: Final = 3  # TAKEOVER sent, no answer from the main process (yet), or declined
HANDED: Final = 4  # TAKEOVER answered with the client socket
DIRECT: Final = 5  # the worker said it writes directly (PROGRESS): PROGRESS, DONE, ERROR
OVER: Final = 6  # a final frame was accepted: nothing more

_NAMES: Final = {
    NEW: "before its response",
    STREAMING: "while streaming",
    FILED: "after FILE",
    OFFERED: "after TAKEOVER (not handed the socket)",
    HANDED: "after TAKEOVER (handed the socket)",
    DIRECT: "during a direct write",
    OVER: "after the response ended",
}


class RequestGuard:
    """The legal frames from a worker for one request, and the credit it has left."""

    __slots__ = (
        "cancelled",
        "client_socket",
        "head_request",
        "left",
        "phase",
        "raw_ok",
        "rss_change",
        "whole_direct",
    )

    def __init__(
        self, credit: int, raw_ok: bool, head_request: bool, client_socket: bool = False
    ) -> None:
        #: Response bytes the worker may still send (may go below 0 by less than a chunk).
        self.left = credit
        self.phase = NEW
        #: The REQUEST allowed RAW and TAKEOVER.
        self.raw_ok = raw_ok
        self.head_request = head_request
        #: The REQUEST carried the client socket: PROGRESS may be the first frame, said
        #: before the worker writes a whole response to it (worker/whole.py).
        self.client_socket = client_socket
        #: It said that PROGRESS first: its DONE may carry the rest of the response.
        self.whole_direct = False
        #: The main process sent CANCEL: an END with nothing before it is legal now.
        self.cancelled = False
        #: The worker's RSS change over the request in KiB, from the final frame's trailer.
        self.rss_change: int | None = None

    # -- what the main process said --------------------------------------------

    def grant(self, amount: int) -> None:
        self.left += amount

    def cancel(self) -> None:
        self.cancelled = True

    def answer(self, handed: bool) -> None:
        """The main process answered TAKEOVER: with the client socket, or not."""
        if handed and self.phase == OFFERED:
            self.phase = HANDED

    # -- what the worker said -------------------------------------------------

    def on_frame(self, kind: int, payload: bytes) -> tuple[int, Any]:
        """The event for this frame, or ProtocolError if the worker may not send it now."""
        phase = self.phase
        if kind == _DATA:
            size = len(payload)
            if phase != STREAMING:
                raise self._out_of_order(kind)
            if self.left <= 0 or not 0 < size <= _CHUNK:
                raise self._over_credit(size)
            self.left -= p.data_cost(size)
            return _DATA_EVENT, payload
        # The frames of a whole write (every lane request's), then the rest.
        if kind == _PROGRESS:
            if phase not in (HANDED, DIRECT):
                if not (phase == NEW and self.client_socket):
                    raise self._out_of_order(kind)
                self.whole_direct = True
                self.phase = DIRECT
                return PROGRESS, p.decode_progress(payload)  # what it is about to write
            if payload:
                raise p.ProtocolError("PROGRESS with a payload after the first")
            self.phase = DIRECT
            return _PROGRESS_EVENT
        if kind == _DONE:
            if phase not in (HANDED, DIRECT):
                raise self._out_of_order(kind)
            done = p.decode_done(payload[: self._rss_trailer(payload, kind)])
            rest = len(done[4])
            if rest:  # the tail of a whole write, for the main process to write
                if not self.whole_direct:
                    raise p.ProtocolError("DONE with bytes to write after a streamed direct write")
                self._whole_body(rest)
            self.phase = OVER
            return ev.DONE, done
        if kind == _RAW:
            if phase != NEW or not self.raw_ok:
                raise self._out_of_order(kind)
            cut = self._rss_trailer(payload, kind)
            code, head_size, data = p.decode_raw(
                memoryview(payload)[:cut],
                self.head_request,
            )
            self._whole_body(len(data) - head_size)
            self.phase = OVER
            return ev.RAW, (code, head_size, data)
        if kind == _START:
            if phase not in (NEW, OFFERED, HANDED):
                raise self._out_of_order(kind)
            self.phase = STREAMING
            return ev.START, p.decode_start(payload)
        if kind == _END:
            if phase not in (STREAMING, FILED) and not (phase == NEW and self.cancelled):
                raise self._out_of_order(kind)
            if self._rss_trailer(payload, kind):
                raise p.ProtocolError("END with a payload besides its RSS trailer")
            self.phase = OVER
            return _END_EVENT
        if kind == p.ERROR:
            if phase == OVER:
                raise self._out_of_order(kind)
            self.phase = OVER
            return ev.ERROR, (500, p.decode_text(payload))
        if kind == p.RESPONSE:
            if phase != NEW:
                raise self._out_of_order(kind)
            response = p.decode_response(payload[: self._rss_trailer(payload, kind)])
            self._whole_body(len(response[3]))
            self.phase = OVER
            return ev.RESPONSE, response
        if kind == p.FILE:
            if phase != STREAMING:
                raise self._out_of_order(kind)
            file = p.decode_file(payload)
            self.phase = FILED
            return ev.FILE, file
        if kind == p.TAKEOVER:
            if phase != NEW or not self.raw_ok or self.head_request:
                raise self._out_of_order(kind)
            if payload:
                raise p.ProtocolError("TAKEOVER with a payload")
            self.phase = OFFERED
            return _TAKEOVER_EVENT
        raise p.ProtocolError(f"{p.NAMES.get(kind, kind)} is not a frame about a request")

    def _rss_trailer(self, payload: bytes, kind: int) -> int:
        """Read the RSS trailer that ends a final frame; the length of what precedes it."""
        self.rss_change = p.decode_rss(payload, kind)
        return len(payload) - p.RSS_TRAILER_SIZE

    def _whole_body(self, size: int) -> None:
        if size >= self.left + p.DATA_CHUNK:
            raise self._over_credit(size)
        self.left -= size

    def _out_of_order(self, kind: int) -> p.ProtocolError:
        name = p.NAMES.get(kind, str(kind))
        if kind in (p.RAW, p.TAKEOVER) and self.phase == NEW:
            return p.ProtocolError(f"{name} for a request that did not allow it")
        return p.ProtocolError(f"{name} {_NAMES[self.phase]}")

    def _over_credit(self, size: int) -> p.ProtocolError:
        if size == 0:
            return p.ProtocolError("empty DATA")
        return p.ProtocolError(
            f"{size} response bytes with {max(self.left, 0)} of credit left "
            f"(at most {p.DATA_CHUNK} per DATA frame)"
        )
