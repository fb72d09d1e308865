"""Bytes after a request that asked for an Upgrade nobody grants are the next request.

aiohttp's C parser (llhttp) stops at the end of a request that carries
``Connection: upgrade`` and an ``Upgrade`` header, since what follows may be in
the new protocol.  For ``Upgrade: websocket`` aiohttp keeps those bytes and
parses them as HTTP again if the handler does not upgrade; for any other
protocol (``h2c``, which curl sends) it drops the rest of the packet: a request
pipelined behind it is never answered.  A WSGI app upgrades nothing, so
`UpgradeSafeParser` feeds the parser in pieces that end where such a request
may end: at the end of its head, then after its Content-Length body.  Packets
without the word "upgrade" in any case (header names are case-insensitive:
llhttp takes "UpGrade" for "Upgrade") go to the parser whole, as before.  Such
a request with a Transfer-Encoding is a 400 (no client sends one; llhttp reads
``Transfer-Encoding: gzip`` there as no body, and what follows as requests).

A request with a chunked body is marked to close its connection after its
response (its message's ``should_close``): aiohttp's C parser keeps the last
trailer field of a chunked body and adds it to the next request's headers.

Looking for the word costs about 33 µs per 64 KiB of random bytes, so only
bytes that can hold a head are searched: a packet that is all body of a request
with a Content-Length (`_Body`: how much of it the parser has had) is not, and
in a large packet only the first head is (a later head in the same large packet,
behind a body of more than `SCAN_ALL` bytes, goes unsearched).

An absolute-form target of another scheme than http(s) is refused as well
(`_refuse_foreign_targets`: 400).

The same search refuses a request line that ends in ``RTSP/1.0``, which llhttp
takes for HTTP/1.0 (`_refuse_rtsp`: 400).  Both look within one packet: a word
split over two packets is not seen.

Pipelined requests in one packet are fed to the parser one by one
(`_pipelined`): llhttp stops at the first bad request in a packet and aiohttp
answers the whole packet with 400, so the good requests before it were lost
with it.  Fed apart, each request before the bad one is answered, then the
400 (and the connection closes).  The same goes for bytes after a request that
ends the connection (``Connection: close``, or HTTP/1.0 without keep-alive),
which llhttp refuses ("Data after `Connection: close`"): that request is
answered and what follows it never runs (RFC 9112 section 9.6).  Only packets
of at most `SCAN_ALL` bytes with bytes after their first request are looked at.
"""

from __future__ import annotations

import re
from typing import Any, Final

from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo

__all__ = ["UpgradeSafeParser"]

#: A packet (past any body it continues) up to this size is searched whole.
SCAN_ALL: Final = 8192

_MARK = b"upgrade"  # looked for in lowercased bytes
_RTSP = b" RTSP/"  # llhttp reads "GET / RTSP/1.0" as HTTP/1.0 (see `_refuse_rtsp`)
_HEAD_END = b"\r\n\r\n"
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ (HTTP/1\.[01])\r\n")
#: Requests cut apart in one packet at most; what follows them is one more piece.
_PIPELINED_MAX: Final = 64


def _mark(data: bytes, start: int) -> int:
    """Where the word "upgrade" first appears in `data` from `start`, in any case; or -1."""
    found = data[start:].lower().find(_MARK)
    return start + found if found >= 0 else -1


class UpgradeSafeParser:
    """Wraps aiohttp's request parser; everything but `feed_data` is the parser's."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        # Called once per request (fastpath.py): found here, not through __getattr__.
        self.message_consumed = parser.message_consumed
        self._in_head = False  # a head with the mark is not complete yet
        self._carry = b""  # the last bytes of a careful packet (a head end may straddle)
        self._body_left = 0  # body bytes of a non-upgraded upgrade request still to come
        # The last request's body still arriving: (its payload, its Content-Length).
        self._body: tuple[Any, int] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def feed_data(self, data: bytes) -> tuple[Any, bool, bytes]:
        result = self._feed_data(data)
        messages = result[0]
        foreign = False
        for index, (message, payload) in enumerate(messages):
            if type(message) is not RawRequestMessage:
                continue
            if message.path[:1] != "/":
                foreign = True
            if message.chunked and not message.should_close:
                # aiohttp's C parser keeps a chunked body's last trailer field and adds it
                # to the next request's headers on this connection: there is none.
                messages[index] = (message._replace(should_close=True), payload)
        return _refuse_foreign_targets(result) if foreign else result

    def _feed_data(self, data: bytes) -> tuple[Any, bool, bytes]:
        if not data:
            return self._parser.feed_data(data)  # type: ignore[no-any-return]
        if self._in_head or self._body_left:
            self._body = None
            return _refuse_rtsp(data, self._feed_carefully(bytes(data)), _RTSP in data)
        region = self._head_region(data)
        if region is None:  # all body of the last request
            return self._parser.feed_data(data)  # type: ignore[no-any-return]
        start, end = region
        rtsp = data.find(_RTSP, start, end) >= 0
        lowered = data[start:end].lower()
        if _MARK in lowered:
            self._body = None
            return _refuse_rtsp(data, self._feed_carefully(bytes(data)), rtsp)
        pieces = _pipelined(data, start)
        result = self._parser.feed_data(data) if pieces is None else self._feed_pieces(pieces)
        messages = result[0]
        if messages:
            message, payload = messages[-1]
            self._body = None
            if payload is not EMPTY_PAYLOAD and not payload.is_eof():
                length = message.headers.get("Content-Length", "")
                if length.isdigit():
                    self._body = (payload, int(length))
        return _refuse_rtsp(data, result, rtsp)

    def _feed_pieces(self, pieces: list[bytes]) -> tuple[Any, bool, bytes]:
        """Each request of a pipelined packet on its own (see the module's docstring)."""
        messages: list[Any] = []
        for index, piece in enumerate(pieces):
            try:
                new, upgraded, tail = self._parser.feed_data(piece)
            except HttpProcessingError as exc:
                if not messages:
                    raise  # aiohttp answers it as it always did
                messages.append(_bad_request(exc))
                return messages, False, b""  # the stream cannot be trusted past it
            messages.extend(new)
            if upgraded:  # CONNECT: aiohttp keeps the tail itself
                return messages, True, tail + b"".join(pieces[index + 1 :])
        return messages, False, b""

    def _head_region(self, data: bytes) -> tuple[int, int] | None:
        """The part of `data` that may hold a head (see the module's docstring), or None."""
        start = 0
        body = self._body
        if body is not None:
            payload, length = body
            left = length - payload.total_bytes  # what the parser has not had of it yet
            if left >= len(data):
                return None  # all body
            self._body = None
            start = max(0, left)
        end = len(data)
        if end - start > SCAN_ALL:
            head_end = data.find(_HEAD_END, start)
            if head_end >= 0:
                end = head_end
        return start, end

    def _feed_carefully(self, data: bytes) -> tuple[Any, bool, bytes]:
        messages: list[Any] = []
        size = len(data)
        pos = 0
        while pos < size:
            end = size
            head_done = False
            if self._body_left:
                end = min(size, pos + self._body_left)
                self._body_left -= end - pos
            else:
                if not self._in_head:
                    mark = _mark(data, pos)
                    if mark < 0:
                        end = size
                    else:
                        self._in_head = True
                        self._carry = b""
                if self._in_head:
                    head_end = self._head_end(data, pos)
                    if head_end >= 0:
                        end = head_end
                        head_done = True
            result = self._parser.feed_data(data[pos:end])
            new, upgraded, tail = result
            messages.extend(new)
            if upgraded:  # a websocket upgrade: aiohttp keeps the tail itself
                self._in_head = False
                return messages, True, tail + data[end:]
            if head_done:
                self._in_head = False
                refused = self._after_head(new)
                if refused is not None:
                    messages[-1] = refused
                    return messages, False, b""  # the connection ends with its 400
            elif self._in_head:
                self._carry = (self._carry + data[pos:end])[-3:]
            pos = end
        return messages, False, b""

    def _head_end(self, data: bytes, pos: int) -> int:
        """Where the pending head ends in `data` (after its blank line), or -1."""
        carry = self._carry
        if carry:
            window = carry + data[pos : pos + 3]
            found = window.find(_HEAD_END)
            if found >= 0:
                return pos + found + 4 - len(carry)
        found = data.find(_HEAD_END, pos)
        return found + 4 if found >= 0 else -1

    def _after_head(self, new: list[Any]) -> tuple[_ErrInfo, Any] | None:
        """A head with the mark ended: if it asked for an upgrade, mind its body; the
        400 of one whose body is framed by Transfer-Encoding (llhttp takes "gzip" for no
        body at all there, and the rest of a chunked one cannot be found cheaply)."""
        if not new:
            return None
        message = new[-1][0]
        if not getattr(message, "upgrade", False):
            return None
        if "Transfer-Encoding" in message.headers:
            exc = BadHttpMessage("Transfer-Encoding on a request that asks for an Upgrade")
            return _bad_request(exc)
        length = message.headers.get("Content-Length", "")
        if length.isdigit():
            self._body_left = int(length)
        return None


def _pipelined(data: bytes, start: int) -> list[bytes] | None:
    """`data` cut into its requests if it holds more than one; None to feed it whole.

    Requests are stepped over by their heads and Content-Length; a chunked
    body, a bad Content-Length, a head not whole or without a request line, and
    what follows it are one last piece. After a request that ends the
    connection the rest is dropped. Bytes after a request's body that hold no
    request line (a body longer than its Content-Length, one on a GET) are a
    bad request of their own: the one before them is answered first.
    """
    size = len(data)
    head_end = data.find(_HEAD_END, start)
    if head_end < 0 or head_end + 4 == size or size - start > SCAN_ALL:
        return None  # one request without a body (the common packet), or a large one
    pieces: list[bytes] = [data[:start]] if start else []
    at = start
    for _ in range(_PIPELINED_MAX):
        line = _REQUEST_LINE.match(data, at)
        if line is None or head_end < 0:
            break
        head = data[line.end() : head_end + 2].lower()
        closes = keep = False
        length = 0
        if b"connection" in head or b"content-length" in head or b"transfer-encoding" in head:
            for field in head.split(b"\r\n"):
                name, _, value = field.partition(b":")
                if name == b"connection":
                    tokens = [token.strip() for token in value.split(b",")]
                    closes = closes or b"close" in tokens
                    keep = keep or b"keep-alive" in tokens
                elif name == b"content-length":
                    value = value.strip()
                    length = int(value) if value.isdigit() else -1  # the parser's 400
                elif name == b"transfer-encoding":
                    length = -1
        if length < 0:
            break  # a chunked body, or a bad length: left to the parser
        end = head_end + 4 + length
        if end >= size:
            break
        pieces.append(data[at:end])
        at = end
        if closes or (line.group(1) == b"HTTP/1.0" and not keep):
            return pieces  # nothing after it runs
        head_end = data.find(_HEAD_END, at)
    if at == start:
        return None  # one request after all
    pieces.append(data[at:])
    return pieces


def _refuse_rtsp(
    data: bytes, result: tuple[Any, bool, bytes], found: bool
) -> tuple[Any, bool, bytes]:
    """The parser's result, with a request whose line ends in ``RTSP/x.y`` made a 400.

    llhttp takes ``GET / RTSP/1.0`` for a request of version 1.0 and aiohttp
    cannot tell it from HTTP/1.0 afterwards; its Python parser refuses it, as
    every other protocol name.  The request is found by its line in `data`: its
    method, target and the protocol at the start of a line, which is no header
    line.  It and what followed it in the packet become one parse error (400;
    the connection closes after it), the requests before it stand.
    """
    if not found:
        return result
    messages, _upgraded, _tail = result
    for index, (message, _payload) in enumerate(messages):
        if not isinstance(message, RawRequestMessage):
            continue
        line = f"{message.method} {message.path}".encode("utf-8", "surrogateescape")
        if _starts_a_line(data, line + _RTSP):
            exc = BadHttpMessage("RTSP is not HTTP: the request line must end in HTTP/1.x")
            return [*messages[:index], _bad_request(exc)], False, b""
    return result


def _refuse_foreign_targets(result: tuple[Any, bool, bytes]) -> tuple[Any, bool, bytes]:
    """The parser's result, with a request for another kind of URI made a 400.

    An absolute-form target (``GET http://host/path``) names an HTTP server's
    resource only with the http or https scheme (RFC 9110, section 4.2):
    ``ftp://host/`` is refused like any bad request (the requests before it in
    the packet stand). Userinfo (``http://user@host/``) is accepted, as in
    gunicorn's corpus of valid requests, and is no part of HTTP_HOST (cgi.py).
    ``*`` (OPTIONS) and CONNECT's authority-form are left as they are.
    """
    messages, _upgraded, _tail = result
    for index, (message, _payload) in enumerate(messages):
        if type(message) is not RawRequestMessage or message.method == "CONNECT":
            continue
        path: str = message.path
        if path[:1] == "/" or path == "*":
            continue
        scheme, sep, _rest = path.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            continue
        exc = BadHttpMessage("the request target must be a path or an http(s) URI")
        return [*messages[:index], _bad_request(exc)], False, b""
    return result


def _bad_request(exc: HttpProcessingError) -> tuple[_ErrInfo, Any]:
    """The message aiohttp queues for a parse error: its handler answers 400 (or
    what limits.py makes of `exc`) and closes the connection."""
    return _ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD


def _starts_a_line(data: bytes, text: bytes) -> bool:
    at = data.find(text)
    while at > 0 and data[at - 1] != 0x0A:  # not after a line feed: a header's value
        at = data.find(text, at + 1)
    return at >= 0
