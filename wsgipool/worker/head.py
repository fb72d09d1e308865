"""Response heads serialised in the worker: for RAW frames and for direct writes.

The app's status and headers were validated by start_response; what is added
here is the framing (Content-Length), Server and Date when the app did not set
them, and nothing hop-by-hop.
"""

from __future__ import annotations

import time
from email.utils import formatdate

from wsgipool.wsgicall import HOP_BY_HOP, SERVER_HEADER

__all__ = ["connection_line", "head_lines", "serialise"]


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


def head_lines(
    version: str, status: str, headers: list[tuple[str, str]]
) -> tuple[list[str], int | None]:
    """The head's lines but framing and the blank line, and the Content-Length declared."""
    # A status without a reason ("200") still needs the space (RFC 9112 section 4).
    lines = [f"HTTP/{version} {status}\r\n" if len(status) > 3 else f"HTTP/{version} {status} \r\n"]
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
    if not server:
        lines.append(f"Server: {SERVER_HEADER}\r\n")
    if not date:
        lines.append(_date_line())
    return lines, declared


def serialise(
    version: str, head_request: bool, status: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[bytes, bytes] | None:
    """(head, body) of a whole response for a RAW frame, or None when it needs more care.

    That is a body shorter than the Content-Length the app declared: the client
    must see the connection close after it, which the streamed path does. And
    HEAD with an empty body and no Content-Length (werkzeug's HEAD of a streamed
    or file-object response): GET's length is unknown, so the answer announces
    none, where a RAW head always has one (relay.py says it).
    """
    code = int(status[:3])
    lines, declared = head_lines(version, status, headers)
    if code in (204, 304):
        body = b""
    else:
        if declared is not None:
            if len(body) < declared and not head_request:
                return None
            body = body[:declared]
        elif head_request and not body:
            return None
        lines.append(f"Content-Length: {len(body) if declared is None else declared}\r\n")
        if head_request:
            body = b""
    lines.append("\r\n")
    return "".join(lines).encode("latin-1"), body


def connection_line(version: str, keep_alive: bool) -> bytes:
    """The Connection header a response needs to say `keep_alive` (empty if none), as
    aiohttp writes it: "close" on HTTP/1.1, "keep-alive" on HTTP/1.0, else nothing."""
    if version == "1.1":
        return b"" if keep_alive else b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if keep_alive else b""
