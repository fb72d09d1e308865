"""wsgipool/upgrade.py: requests pipelined behind an ungranted Upgrade reach the parser whole.

aiohttp's own C parser, wrapped, fed the same bytes split at every position:
every request must come out, in order, whatever the split.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from aiohttp.http_parser import HttpRequestParser

from wsgipool.upgrade import UpgradeSafeParser

NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
LAST = b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n"
UPGRADES = {
    "h2c": b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "h2c-body": b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"UPGRADE: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 11\r\n\r\n"
    b"hello\r\n\r\nup",
    "body-mentions-it": b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nupgrade!!",
    # Header names are case-insensitive, and llhttp reads these as an upgrade too.
    "mixed-case": b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: uPgRaDe\r\nUpGrAdE: h2c\r\n\r\n",
}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def parse(loop, packets: list[bytes]) -> tuple[list[str], list[bytes], list[object]]:
    protocol = mock.Mock()
    inner = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
    parser = UpgradeSafeParser(inner)
    paths: list[str] = []
    payloads = []
    messages_seen: list[object] = []
    for packet in packets:
        messages, upgraded, _tail = parser.feed_data(packet)
        assert not upgraded
        for message, payload in messages:
            paths.append(getattr(message, "path", "(error)"))
            payloads.append(payload)
            messages_seen.append(message)
    bodies = [b"".join(getattr(payload, "_buffer", ())) for payload in payloads]
    return paths, bodies, messages_seen


@pytest.mark.parametrize("name", list(UPGRADES))
def test_every_split_keeps_every_request(loop, name):
    data = NEXT + UPGRADES[name] + NEXT + LAST
    for cut in range(len(data) + 1):
        paths, bodies, _messages = parse(loop, [data[:cut], data[cut:]])
        assert paths == ["/next", "/up", "/next", "/last"], (name, cut)
        if name == "h2c-body":
            assert bodies[1] == b"hello\r\n\r\nup", cut


def test_the_unwrapped_parser_loses_them(loop):
    """What the wrapper is for: aiohttp alone drops the request after an h2c upgrade."""
    inner = HttpRequestParser(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
    messages, _upgraded, _tail = inner.feed_data(UPGRADES["h2c"] + NEXT)
    assert [m.path for m, _ in messages] == ["/up"]


@pytest.mark.parametrize("coding", [b"chunked", b"gzip", b"identity"])
def test_upgrade_request_with_transfer_encoding_is_a_bad_request(loop, coding):
    """llhttp reads Transfer-Encoding: gzip on an upgrade request as no body, and what
    follows as requests; the rest of a chunked one was never answered (a hang)."""
    data = (
        b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: " + coding + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + NEXT
    )
    for cut in (len(data), data.index(b"\r\n\r\n") + 2, 30):
        paths, _bodies, messages = parse(loop, [data[:cut], data[cut:]])
        assert paths == ["(error)"], (coding, cut, paths)
        assert "Transfer-Encoding" in messages[0].message


def test_a_chunked_request_closes_its_connection(loop):
    """aiohttp's C parser adds a chunked body's last trailer field to the next request's
    headers on the same connection: a chunked request is marked to be the last."""
    chunked = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nz\r\n0\r\nCookie: session=attacker\r\n\r\n"
    )
    paths, bodies, messages = parse(loop, [chunked, NEXT])
    assert paths == ["/a", "/next"]
    assert bodies[0] == b"z"
    assert messages[0].should_close and messages[0].chunked
    assert not messages[1].should_close
    # What the mark guards against: the next request on that parser has the trailer.
    assert "Cookie" in messages[1].headers


CLOSING = {
    "http/1.0": (b"GET /1 HTTP/1.0\r\n\r\n", ["/1"]),
    "connection-close": (
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: Close\r\n\r\nabc",
        ["/1", "/2"],
    ),
    "keep-alive-1.0-then-close": (
        b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: keep-alive, close\r\n\r\n",
        ["/1", "/2"],
    ),
}


def test_requests_before_a_bad_one_in_the_same_packet_are_kept(loop):
    """llhttp stops at the first bad request of a packet, and aiohttp answered the
    whole packet with 400: the good ones before it were lost."""
    bad = b"GET /bad HTTP/1.1\r\n\r\n"  # HTTP/1.1 without Host
    body = b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    protocol = mock.Mock()
    inner = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
    parser = UpgradeSafeParser(inner)
    messages, upgraded, _tail = parser.feed_data(NEXT + body + bad + LAST)
    assert not upgraded
    assert [getattr(m, "path", None) for m, _p in messages[:2]] == ["/next", "/post"]
    assert b"".join(messages[1][1]._buffer) == b"hello"
    assert len(messages) == 3 and type(messages[2][0]).__name__ == "_ErrInfo"
    assert "Host" in messages[2][0].message
    # A bad Content-Length further on: the requests before it stand too.
    inner = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
    parser = UpgradeSafeParser(inner)
    bad_length = b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\nz"
    messages, _upgraded, _tail = parser.feed_data(NEXT + bad_length + LAST)
    assert getattr(messages[0][0], "path", None) == "/next"
    assert len(messages) == 2 and type(messages[1][0]).__name__ == "_ErrInfo"


@pytest.mark.parametrize("name", list(CLOSING))
def test_requests_up_to_one_that_closes_are_kept_and_the_rest_dropped(loop, name):
    """llhttp refuses a whole packet with bytes after a request that ends the
    connection (400, losing the requests before it): the packet is cut after it."""
    data, expected = CLOSING[name]
    paths, _bodies, _messages = parse(loop, [data + NEXT + LAST])
    assert paths == expected


def test_a_packet_that_ends_with_the_closing_request_is_fed_whole(loop):
    data, expected = CLOSING["connection-close"]
    assert parse(loop, [data])[0] == expected
    assert parse(loop, [NEXT, data])[0] == ["/next", *expected]
