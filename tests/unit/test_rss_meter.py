"""A worker's per-request RSS change (wsgipool/worker/rss.py): one read per request.

A scripted probe stands in for /proc/self/statm, so the tests see every read:
requests that follow one another read once each (the end of one is the start of
the next), a request that starts while another runs reads its own start, and a
request that ends in an error leaves the next one to read its own start.  The
real probe and the real `FrameOutput` are checked too: the change travels in the
RSS trailer of the frame that ends the request.
"""

from __future__ import annotations

from typing import Any

from wsgipool import protocol as p
from wsgipool.worker.output import FrameOutput, RawHead
from wsgipool.worker.rss import RssMeter, RssProbe

KIB = 1024


class _Script(RssProbe):
    """RSS readings from a list, in KiB; counts the reads."""

    def __init__(self, *kib: int) -> None:
        self.values = [k * KIB for k in kib]
        self.reads = 0

    def read(self) -> int:
        value = self.values[self.reads]
        self.reads += 1
        return value


def test_requests_one_after_another_read_once_each_and_tile() -> None:
    probe = _Script(100, 110, 110, 150)
    meter = RssMeter(probe)
    meter.prime()  # 100
    changes = []
    for _ in range(3):
        start = meter.start()
        changes.append(meter.end(start))
    assert changes == [10, 0, 40]
    assert probe.reads == 4, "the prime, then one read per request"


def test_a_request_that_starts_while_another_runs_reads_its_own_start() -> None:
    probe = _Script(100, 120, 130, 170, 175)
    meter = RssMeter(probe)
    meter.prime()  # 100
    a = meter.start()  # the idle reading: 100, no read
    b = meter.start()  # a runs: reads 120
    assert (a, b) == (100 * KIB, 120 * KIB)
    assert meter.end(b) == 10  # 130 - 120: what b's window saw, not a's start
    assert meter.end(a) == 70  # 170 - 100
    c = meter.start()  # a left the worker idle at 170: no read
    assert meter.end(c) == 5
    assert probe.reads == 5


def test_after_an_unmeasured_end_the_next_request_reads_its_start() -> None:
    probe = _Script(100, 300, 310)
    meter = RssMeter(probe)
    meter.prime()
    meter.start()
    meter.abandon()  # an ERROR frame: no trailer, no reading
    start = meter.start()  # reads 300: the error's growth is nobody's
    assert meter.end(start) == 10


def test_the_real_probe_reads_this_process_rss() -> None:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    expected = int(line.split()[1]) * KIB
    assert abs(RssProbe().read() - expected) < 16 * 1024 * KIB


class _Recorder:
    """A BlockingChannel stand-in: the frames a FrameOutput sends."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self._decoder = p.FrameDecoder(p.FROM_WORKER)

    def send(self, parts: list[bytes], fd: int | None = None) -> None:
        for kind, _rid, payload in self._decoder.feed(b"".join(parts)):
            self.frames.append((kind, payload))


def _output(meter: RssMeter, recorder: _Recorder, rid: int) -> FrameOutput:
    channel: Any = recorder
    return FrameOutput(channel, rid, 1 << 20, lambda: b"", RawHead("1.1", False), rss_meter=meter)


def test_frame_output_carries_the_change_and_an_error_ends_the_window() -> None:
    probe = _Script(100, 164, 200, 201)
    meter = RssMeter(probe)
    meter.prime()
    recorder = _Recorder()

    first = _output(meter, recorder, 1)
    first.mark_rss()
    first.start("200 OK", [("Content-Length", "2")])
    first.body(b"ok", False)
    first.end()
    kind, payload = recorder.frames[-1]
    assert kind == p.RAW and p.decode_rss(payload, p.RAW) == 64

    failed = _output(meter, recorder, 2)
    failed.mark_rss()  # the idle reading, 164
    failed.fail("boom")  # ERROR carries no trailer
    assert recorder.frames[-1][0] == p.ERROR

    third = _output(meter, recorder, 3)
    third.mark_rss()  # reads 200 itself
    third.start("200 OK", [])
    third.body(b"streamed", True)
    third.end()
    kind, payload = recorder.frames[-1]
    assert kind == p.END and p.decode_rss(payload, p.END) == 1
    assert probe.reads == 4


def test_a_request_never_started_reports_no_change() -> None:
    meter = RssMeter(_Script(100))
    meter.prime()
    recorder = _Recorder()
    output = _output(meter, recorder, 4)
    output.end()  # cancelled while queued: the app never ran
    kind, payload = recorder.frames[-1]
    assert kind == p.END and p.decode_rss(payload, p.END) is None
