"""The pure parts of the logs: escaping, the access format compiler, the RSS trailer,
and when the access file is flushed."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgipool import protocol as p
from wsgipool.logs import setup
from wsgipool.logs.atoms import DEFAULT_FORMAT, FormatError, compile_format
from wsgipool.logs.escape import escape

_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt\\])")


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}.get(code) or chr(int(code[1:], 16))

    return _UNESCAPE.sub(replace, text)


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("/plain/path?q=1", "/plain/path?q=1"),
        ("/a\nFORGED", "/a\\nFORGED"),
        ("\r\t\x00\x1b[31m", "\\r\\t\\x00\\x1b[31m"),
        ("del\x7f c1\x85\x9b", "del\\x7f c1\\x85\\x9b"),
        ("back\\slash", "back\\\\slash"),
        ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),
        ("lone\udcff", "lone\\udcff"),
        (b"GET /\xff\x85", "GET /\u00ff\\x85"),
    ],
)
def test_escape(raw: str | bytes, logged: str) -> None:
    assert escape(raw) == logged


@given(st.text())
def test_escape_is_one_line_and_reversible(text: str) -> None:
    logged = escape(text)
    assert re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff]", logged) is None
    assert _unescape(logged) == text


def test_default_format_compiles_to_few_parts() -> None:
    parts = compile_format(DEFAULT_FORMAT)
    assert sum(isinstance(part, str) for part in parts) <= len(parts) // 2 + 1
    assert compile_format(DEFAULT_FORMAT) is parts  # compiled once


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%(zz)s", "unknown atom %(zz)s"),
        ("%(h)d", "starts no atom"),
        ("100%", "starts no atom"),
        ("%({ }i)s", "empty header name"),
    ],
)
def test_bad_formats(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=re.escape(message)):
        compile_format(text)


def test_percent_and_header_atoms() -> None:
    parts = compile_format("100%% %({X-Id}i)s %({Server}o)s")
    assert parts[0] == "100% "


@pytest.mark.parametrize("kib", [None, 0, 1, -1, 123456, -(1 << 40), 1 << 40])
def test_rss_trailer_round_trip(kib: int | None) -> None:
    payload = b"something" + p.encode_rss(kib)
    got = p.decode_rss(payload, p.END)
    if kib is None:
        assert got is None
    else:
        assert got == max(p.RSS_UNKNOWN + 1, min(kib, (1 << 31) - 1))


def test_rss_trailer_missing() -> None:
    with pytest.raises(p.ProtocolError, match="no RSS trailer"):
        p.decode_rss(b"abc", p.END)


def test_raw_frame_with_trailer() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    frame = b"".join(p.raw_frame(3, head, b"hello", p.encode_rss(42)))
    [(kind, rid, payload)] = p.FrameDecoder(p.FROM_WORKER).feed(frame)
    assert (kind, rid) == (p.RAW, 3)
    assert p.decode_rss(payload, p.RAW) == 42
    code, head_size, data = p.decode_raw(payload[:-4], head_request=False)
    assert (code, head_size, bytes(data)) == (200, len(head), head + b"hello")


def test_access_file_is_flushed_once_per_loop_iteration(tmp_path: Path) -> None:
    """The access log's file handler: lines written in one iteration of the event loop
    reach the file at its end, in one flush; at once off the loop and after a stop."""
    path = tmp_path / "access.log"
    handler = setup._ReopeningFileHandler(str(path), mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger("test.access")
    logger.addHandler(handler)
    flushes: list[int] = []
    real_flush = handler.stream.flush
    handler.stream.flush = lambda: (flushes.append(1), real_flush())[1]  # type: ignore[method-assign]

    async def serve() -> None:
        handler.flush_on(asyncio.get_running_loop())
        logger.info("one")
        logger.info("two")
        assert path.read_text() == ""  # not yet: at the end of this iteration
        await asyncio.sleep(0)
        assert path.read_text() == "one\ntwo\n"
        assert len(flushes) == 1
        logger.info("three")
        handler.flush_on(None)  # the stop: flushed now, and at once from then on
        assert path.read_text() == "one\ntwo\nthree\n"

    asyncio.run(serve())
    logger.info("four")
    assert path.read_text().endswith("three\nfour\n")
    handler.close()


def test_access_line_flushed_when_its_loop_is_gone(tmp_path: Path) -> None:
    """A line whose flush was scheduled on a loop that then closed is still written."""
    path = tmp_path / "access.log"
    handler = setup._ReopeningFileHandler(str(path), mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger("test.access")
    logger.addHandler(handler)
    loop = asyncio.new_event_loop()
    handler.flush_on(loop)
    loop.call_soon(logger.info, "last")
    loop.call_soon(loop.stop)
    loop.run_forever()  # the flush was scheduled after stop(): it never ran
    loop.close()
    logger.info("after")  # the loop is closed: at once, with what was pending
    assert path.read_text() == "last\nafter\n"
    handler.close()
