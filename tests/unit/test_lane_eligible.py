"""Which parsed requests the fast lane takes (fastpath.eligible), from aiohttp's own
C parser fed real bytes: a GET or HEAD without a body, or a body-carrying method
whose body arrived whole with its head, within the lane's limit."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser

from wsgipool import fastpath
from wsgipool.body import EMPTY


def _parsed(*packets: bytes):
    """(message, payload) of the first request in `packets`, fed one by one."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        messages = []
        for packet in packets:
            messages.extend(parser.feed_data(packet)[0])
        return messages[0]
    finally:
        loop.close()


def _request(method: str, body: bytes = b"", headers: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "PUT" else ""
    return f"{method} /p HTTP/1.1\r\nHost: t\r\n{length}{headers}\r\n".encode() + body


LIMIT = fastpath.BODY_MAX
CHUNKED = b"1\r\nx\r\n0\r\n\r\n"


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS", "POST"])
def test_a_request_without_a_body_takes_the_lane(method: str) -> None:
    assert fastpath.eligible(*_parsed(_request(method)), LIMIT) is EMPTY


def test_a_body_that_came_with_its_head_is_taken_as_it_is() -> None:
    body = bytes(range(256)) * 40
    taken = fastpath.eligible(*_parsed(_request("POST", body)), LIMIT)
    assert taken is not None
    assert taken.length == len(body)
    assert b"".join(taken.chunks) == body
    assert taken.file is None


def test_a_body_read_over_two_packets_is_taken_once_whole() -> None:
    data = _request("PUT", b"0123456789")
    taken = fastpath.eligible(*_parsed(data[:-4], data[-4:]), LIMIT)
    assert taken is not None and b"".join(taken.chunks) == b"0123456789"


def test_an_empty_put_is_taken_with_no_body() -> None:
    taken = fastpath.eligible(*_parsed(_request("PUT")), LIMIT)
    assert taken is EMPTY


@pytest.mark.parametrize(
    ("packets", "why"),
    [
        ((_request("POST", b"x" * 100)[:-50],), "its body is still arriving"),
        ((_request("POST", b"x" * (LIMIT + 1)),), "over the lane's limit"),
        ((_request("GET", b"a body"),), "a GET with a body: the handler's"),
        ((_request("POST", b"x", "Expect: 100-continue\r\n"),), "Expect: the handler answers it"),
        (
            (_request("POST", b"", "Transfer-Encoding: chunked\r\n") + b"1\r\nx\r\n0\r\n\r\n",),
            "chunked",
        ),
        ((b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",), "CONNECT: refused by the handler"),
        ((b"POST /p HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",), None),
    ],
)
def test_what_the_lane_leaves_to_aiohttp(packets: tuple[bytes, ...], why: str | None) -> None:
    taken = fastpath.eligible(*_parsed(*packets), LIMIT)
    if why is None:  # HTTP/1.0 with a whole body is the lane's as well
        assert taken is not None and taken.length == 1
    else:
        assert taken is None, why


def test_the_limit_is_the_handlers_in_memory_limit_when_smaller() -> None:
    data = _request("POST", b"x" * 1000)
    assert fastpath.eligible(*_parsed(data), 999) is None
    assert fastpath.eligible(*_parsed(data), 1000) is not None
