"""The per-request guard (wsgipool/supervisor/guard.py), in milliseconds.

A table of legal and illegal frame sequences; hypothesis playing the real
worker's `FrameOutput` (every sequence it produces must pass); and hypothesis
playing a hostile worker (whatever passes must be something the handler can
consume, within credit).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgipool import exchange as ev
from wsgipool import protocol as p
from wsgipool.supervisor.guard import PROGRESS, RequestGuard
from wsgipool.worker.output import FrameOutput, RawHead

WINDOW = 1024 * 1024
CHUNK = p.DATA_CHUNK

START = (p.START, p.encode_start("200 OK", [("Content-Type", "text/plain")]))
RSS = p.encode_rss(None)  # the trailer of every final frame but ERROR
END = (p.END, RSS)
ERROR = (p.ERROR, b"boom")
TAKEOVER = (p.TAKEOVER, b"")
PROGRESS_FRAME = (p.PROGRESS, b"")
# A whole write's first PROGRESS: the socket's byte count before it, its size, its status.
PROGRESS_INTENT = (p.PROGRESS, p.encode_progress(0, 40, 200))
DONE = (p.DONE, p.encode_done(10, 200, True, 10) + RSS)
# A whole write's DONE with the 5 bytes the client's socket did not take at once.
DONE_REST = (p.DONE, p.encode_done(10, 200, True, 5, b"hello") + RSS)
FILE = (p.FILE, p.encode_file(0, None))
RESPONSE = (p.RESPONSE, p.encode_response("200 OK", [], b"hi") + RSS)
RAW = (p.RAW, p.encode_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"hi") + RSS)
RAW_TO_HEAD = (
    p.RAW,
    p.encode_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"") + RSS,
)


def data(size: int) -> tuple[int, bytes]:
    return p.DATA, b"x" * size


def play(guard: RequestGuard, steps: list[Any]) -> list[int]:
    """Feed frames (kind, payload) and main-process actions; the event kinds out."""
    events = []
    for step in steps:
        if step == "cancel":
            guard.cancel()
        elif step == "hand":
            guard.answer(True)
        elif step == "decline":
            guard.answer(False)
        elif isinstance(step, tuple) and step[0] == "grant":
            guard.grant(step[1])
        else:
            events.append(guard.on_frame(*step)[0])
    return events


# (steps, raw_ok, HEAD request)
LEGAL = [
    ([RAW], True, False),
    ([RESPONSE], False, False),
    ([ERROR], False, False),
    ([START, END], False, False),
    ([START, data(1), data(CHUNK), END], False, False),
    ([START, data(CHUNK), ERROR], False, False),
    ([START, data(5), FILE, END], False, False),
    ([START, FILE, ERROR], False, False),
    (["cancel", END], False, False),
    ([TAKEOVER, "hand", PROGRESS_FRAME, PROGRESS_FRAME, DONE], True, False),
    ([TAKEOVER, "hand", DONE], True, False),
    ([TAKEOVER, "hand", ERROR], True, False),
    ([TAKEOVER, "hand", "cancel", START, data(3), END], True, False),  # cancelled while asking
    ([TAKEOVER, "decline", START, data(CHUNK), END], True, False),
    ([TAKEOVER, START, END], True, False),  # cancelled before the handler saw TAKEOVER
    ([TAKEOVER, ERROR], True, False),
    ([RAW_TO_HEAD], True, True),
    # Credit: spent to the last byte and less than a chunk beyond, refilled by grants.
    ([START] + [data(CHUNK)] * 3 + [data(1), data(CHUNK), END], False, False),
    ([START] + [data(CHUNK)] * 4 + [("grant", 1), data(CHUNK), END], False, False),
    (
        [START, *[data(CHUNK)] * 4, ("grant", 1), data(CHUNK), ("grant", CHUNK), data(1), END],
        False,
        False,
    ),
]

# (steps before, the frame refused, raw_ok, HEAD request, words of the message)
ILLEGAL = [
    ([], DONE, True, False, "DONE before its response"),
    ([TAKEOVER, "decline"], DONE, True, False, "DONE after TAKEOVER (not handed"),
    ([TAKEOVER], PROGRESS_FRAME, True, False, "PROGRESS after TAKEOVER (not handed"),
    ([START], START, False, False, "START while streaming"),
    ([], TAKEOVER, False, False, "did not allow it"),
    ([], TAKEOVER, True, True, "did not allow it"),
    ([], RAW, False, False, "did not allow it"),
    ([START], RAW, True, False, "RAW while streaming"),
    ([START], RESPONSE, False, False, "RESPONSE while streaming"),
    ([START], TAKEOVER, True, False, "TAKEOVER while streaming"),
    ([TAKEOVER], TAKEOVER, True, False, "TAKEOVER after TAKEOVER"),
    ([TAKEOVER, "hand", PROGRESS_FRAME], START, True, False, "START during a direct write"),
    ([], data(1), False, False, "DATA before its response"),
    ([], FILE, False, False, "FILE before its response"),
    ([START, FILE], FILE, False, False, "FILE after FILE"),
    ([START, FILE], data(1), False, False, "DATA after FILE"),
    ([], END, False, False, "END before its response"),
    ([TAKEOVER, "hand"], END, True, False, "END after TAKEOVER"),
    ([START], (p.END, b"x" + RSS), False, False, "END with a payload"),
    ([], (p.TAKEOVER, b"x"), True, False, "TAKEOVER with a payload"),
    ([START], data(0), False, False, "empty DATA"),
    ([START], data(CHUNK + 1), False, False, "at most 262144"),
    ([START] + [data(CHUNK)] * 4, data(CHUNK), False, False, "0 of credit left"),
    ([START, *[data(CHUNK)] * 3, data(1), data(CHUNK)], data(1), False, False, "credit left"),
    (
        [],
        (p.RESPONSE, p.encode_response("200 OK", [], b"x" * (WINDOW + CHUNK)) + RSS),
        False,
        False,
        "credit left",
    ),
    ([START, END], ERROR, False, False, "ERROR after the response ended"),
    ([RAW], RAW, True, False, "RAW after the response ended"),
    ([], (p.STACK, b"x"), False, False, "not a frame about a request"),
    ([], (p.HELLO, p.encode_hello(1, 1)), False, False, "not a frame about a request"),
    ([], (p.RAW, p.encode_raw(b"HTTP/2.0 200 OK\r\n\r\n", b"") + RSS), True, False, "well-formed"),
]


# A REQUEST that carried the client socket (worker/whole.py): (steps, HEAD request).
LEGAL_WITH_CLIENT = [
    ([PROGRESS_FRAME, DONE], False),
    ([PROGRESS_FRAME, DONE], True),
    ([PROGRESS_FRAME, PROGRESS_FRAME, DONE], False),
    ([PROGRESS_FRAME, ERROR], False),
    ([RAW], False),  # not written there: the socket was let go
    ([START, data(1), END], False),
    (["cancel", END], False),
    ([TAKEOVER, "hand", PROGRESS_FRAME, DONE], False),
    ([PROGRESS_FRAME, DONE_REST], False),
    ([PROGRESS_INTENT, DONE_REST], False),
    ([PROGRESS_INTENT, PROGRESS_FRAME, DONE], False),
]
# (steps before, the frame refused, words of the message)
ILLEGAL_WITH_CLIENT = [
    ([], DONE, "DONE before its response"),
    ([PROGRESS_FRAME], RAW, "RAW during a direct write"),
    ([PROGRESS_FRAME], START, "START during a direct write"),
    ([PROGRESS_FRAME], END, "END during a direct write"),
    ([PROGRESS_FRAME, DONE], PROGRESS_FRAME, "PROGRESS after the response ended"),
    ([RAW], PROGRESS_FRAME, "PROGRESS after the response ended"),
    ([TAKEOVER, "hand", PROGRESS_FRAME], DONE_REST, "after a streamed direct write"),
    ([PROGRESS_FRAME], PROGRESS_INTENT, "PROGRESS with a payload after the first"),
    ([TAKEOVER, "hand"], PROGRESS_INTENT, "PROGRESS with a payload after the first"),
    ([], (p.PROGRESS, b"xx"), "PROGRESS payload must be 18 bytes"),
    ([], (p.PROGRESS, p.encode_progress(-2, 1, 200)), "PROGRESS with count -2"),
    (
        [PROGRESS_FRAME],
        (p.DONE, p.encode_done(0, 200, True, 0, b"x" * (WINDOW + CHUNK)) + RSS),
        "credit left",
    ),
]


@pytest.mark.parametrize(("steps", "head"), LEGAL_WITH_CLIENT)
def test_legal_sequences_with_the_client_socket_pass(steps: list[Any], head: bool) -> None:
    events = play(RequestGuard(WINDOW, True, head, client_socket=True), steps)
    assert events[-1] >= ev.END


@pytest.mark.parametrize(("before", "refused", "words"), ILLEGAL_WITH_CLIENT)
def test_illegal_frames_with_the_client_socket_are_refused(
    before: list[Any], refused: tuple[int, bytes], words: str
) -> None:
    guard = RequestGuard(WINDOW, True, False, client_socket=True)
    play(guard, before)
    with pytest.raises(p.ProtocolError, match=words):
        guard.on_frame(*refused)


def test_progress_first_only_with_the_client_socket() -> None:
    """Without the socket in the REQUEST, PROGRESS before anything is a violation."""
    with pytest.raises(p.ProtocolError, match="PROGRESS before its response"):
        RequestGuard(WINDOW, True, False).on_frame(*PROGRESS_FRAME)


@pytest.mark.parametrize(("steps", "raw_ok", "head"), LEGAL)
def test_legal_sequences_pass(steps: list[Any], raw_ok: bool, head: bool) -> None:
    events = play(RequestGuard(WINDOW, raw_ok, head), steps)
    assert events[-1] >= ev.END  # every legal sequence here ends the request


@pytest.mark.parametrize(("before", "refused", "raw_ok", "head", "words"), ILLEGAL)
def test_illegal_frames_are_refused(
    before: list[Any], refused: tuple[int, bytes], raw_ok: bool, head: bool, words: str
) -> None:
    guard = RequestGuard(WINDOW, raw_ok, head)
    play(guard, before)  # legal so far
    with pytest.raises(p.ProtocolError, match=words.replace("(", r"\(")):
        guard.on_frame(*refused)


def test_progress_is_its_own_event_and_file_carries_offset_and_count() -> None:
    guard = RequestGuard(WINDOW, True, False)
    guard.on_frame(*TAKEOVER)
    guard.answer(True)
    assert guard.on_frame(*PROGRESS_FRAME) == (PROGRESS, None)
    other = RequestGuard(WINDOW, False, False)
    other.on_frame(*START)
    assert other.on_frame(p.FILE, p.encode_file(7, 9)) == (ev.FILE, (7, 9))


# -- the real worker's output always passes -------------------------------------------------


class _Recorder:
    """A BlockingChannel stand-in: the frames a FrameOutput sends, and the main process's
    answers (credit, cancel, decline) in the order they happened."""

    def __init__(self) -> None:
        self.trace: list[Any] = []
        self._decoder = p.FrameDecoder(p.FROM_WORKER)

    def send(self, parts: list[bytes], fd: int | None = None) -> None:
        for kind, _rid, payload in self._decoder.feed(b"".join(parts)):
            self.trace.append((kind, payload))


APP_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("body"), st.integers(1, 2 * CHUNK + 1), st.booleans()),
        st.tuples(st.just("cancel")),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    raw=st.booleans(),
    head=st.booleans(),
    started=st.booleans(),
    steps=APP_STEPS,
    ending=st.sampled_from(["end", "fail", "file"]),
    takeover_answer=st.sampled_from(["decline", "cancel"]),
    grant=st.integers(1, 2 * CHUNK),
    client=st.booleans(),
)
def test_whatever_the_real_worker_output_sends_passes(
    raw: bool,
    head: bool,
    started: bool,
    steps: list[tuple[Any, ...]],
    ending: str,
    takeover_answer: str,
    grant: int,
    client: bool,
) -> None:
    """`client`: the REQUEST carried the client socket (here a socketpair's end), which
    a whole response is written to (worker/whole.py)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        _play_output(raw, head, started, steps, ending, takeover_answer, grant, client, ours)
        ours.close()
        # Whatever it did, the output let go of its copy: the other end sees EOF.
        theirs.settimeout(5)
        written = b""
        while chunk := theirs.recv(1 << 20):
            written += chunk
        assert not written or written.startswith(b"HTTP/1.1 ")
    finally:
        ours.close()
        theirs.close()


def _play_output(
    raw: bool,
    head: bool,
    started: bool,
    steps: list[tuple[Any, ...]],
    ending: str,
    takeover_answer: str,
    grant: int,
    client: bool,
    sock: socket.socket,
) -> None:
    recorder = _Recorder()
    output: FrameOutput

    def waiter(cond: Any, ready: Any) -> None:  # the main process, when the worker waits
        while not ready():
            if recorder.trace and recorder.trace[-1] == TAKEOVER:
                if takeover_answer == "decline":
                    recorder.trace.append("decline")
                    output.answer(-1, False)
                else:
                    recorder.trace.append("cancel")
                    output.cancel()
            else:
                recorder.trace.append(("grant", grant))
                output.grant(grant)

    fd = os.dup(sock.fileno()) if client and raw else -1
    raw_head = RawHead("1.1", head, fd, True) if raw else None
    output = FrameOutput(recorder, 9, WINDOW, lambda: b"", raw_head, waiter)  # type: ignore[arg-type]
    if started:
        output.start("200 OK", [("Content-Type", "text/plain")])
        for step in steps:
            if step[0] == "cancel":
                recorder.trace.append("cancel")
                output.cancel()
            elif not output.cancelled:
                output.body(b"b" * step[1], step[2])
    if ending == "file" and started and not output.cancelled:
        output.send_file(0, 0, None)
        output.end()
    elif ending == "fail" or (not started and not output.cancelled):
        output.fail("boom")
    else:
        output.end()
    guard = RequestGuard(WINDOW, raw, head, client_socket=fd >= 0)
    events = play(guard, recorder.trace)
    assert events and events[-1] >= ev.END


# -- a hostile worker: whatever passes, the handler can consume ------------------------------

HOSTILE_FRAMES = st.sampled_from(
    [
        START,
        END,
        ERROR,
        TAKEOVER,
        PROGRESS_FRAME,
        DONE,
        DONE_REST,
        PROGRESS_INTENT,
        FILE,
        RESPONSE,
        RAW,
        data(1),
        data(CHUNK),
        data(CHUNK + 1),
        data(0),
        (p.END, b"x" + RSS),
        (p.STACK, b"x"),
        (p.STATUS, p.encode_status(1, 1, 0)),
    ]
)
ACTIONS = st.sampled_from(["cancel", "hand", "decline", ("grant", 1000), ("grant", CHUNK)])


@settings(max_examples=300, deadline=None)
@given(
    raw=st.booleans(),
    head=st.booleans(),
    steps=st.lists(st.one_of(HOSTILE_FRAMES, HOSTILE_FRAMES, ACTIONS), max_size=30),
    client=st.booleans(),
)
def test_what_a_hostile_worker_gets_through_is_consumable_and_within_credit(
    raw: bool, head: bool, steps: list[Any], client: bool
) -> None:
    """`client`: the REQUEST carried the client socket (a whole write may begin at once)."""
    guard = RequestGuard(WINDOW, raw, head, client_socket=client)
    granted = WINDOW
    body = 0
    kinds: list[int] = []
    handed = cancelled = False
    for step in steps:
        if step == "cancel":
            cancelled = True
        if step == "hand" and kinds[-1:] == [ev.TAKEOVER]:
            handed = True
        if isinstance(step, tuple) and step[0] == "grant":
            granted += step[1]
        if isinstance(step, str) or step[0] == "grant":
            play(guard, [step])
            continue
        try:
            kind, value = guard.on_frame(*step)
        except p.ProtocolError:
            return  # the worker is killed here: nothing after this reaches the handler
        # What the handler's write_response can take, in this order:
        assert not kinds or kinds[-1] < ev.END, "nothing after a final event"
        first = not kinds or kinds == [ev.TAKEOVER]
        if kind == ev.RAW:
            assert raw and not kinds
            body += len(value[2]) - value[1]
        elif kind == ev.RESPONSE:
            assert not kinds
            body += len(value[3])
        elif kind == ev.TAKEOVER:
            assert raw and not head and not kinds
        elif kind == ev.START:
            assert first
        elif kind in (ev.DATA, ev.FILE):
            assert kinds[-1:] in ([ev.START], [ev.DATA]) and ev.FILE not in kinds
            body += len(value) if kind == ev.DATA else 0
        elif kind in (PROGRESS, ev.DONE):
            whole = client and set(kinds) <= {PROGRESS}  # the whole write's frames only
            assert (handed or whole) and ev.START not in kinds
            if kind == ev.DONE:
                assert not value[4] or (whole and not handed), "a rest only after a whole write"
                body += len(value[4])
        elif kind == ev.END:
            assert ev.START in kinds or (not kinds and cancelled)
        assert body < granted + CHUNK
        kinds.append(kind)


def test_a_whole_writes_first_progress_says_what_it_is_about_to_write() -> None:
    """(count before, size, status): what the lane reads the socket against if the
    worker dies before DONE (fastpath.py)."""
    guard = RequestGuard(WINDOW, True, False, client_socket=True)
    assert guard.on_frame(*PROGRESS_INTENT) == (PROGRESS, (0, 40, 200))
    assert guard.on_frame(*PROGRESS_FRAME) == (PROGRESS, None)
