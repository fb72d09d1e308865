"""The frames exchanged between the main process and its worker processes.

Pure code: no sockets, no threads, nothing of the project.  Every frame is

    version (1 byte) | type (1 byte) | request id (4 bytes) | length (4 bytes) | payload

in network byte order.  docs/protocol.md has the payload layouts.  The main
process decodes what a worker sends with `FrameDecoder` and the ``decode_*``
functions, which raise `ProtocolError` on anything malformed; nothing from a
worker is ever unpickled.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from itertools import chain
from typing import Final

__all__ = [
    "HEADER",
    "MAX_PAYLOAD",
    "VERSION",
    "FrameDecoder",
    "ProtocolError",
]

VERSION: Final = 1
HEADER: Final = struct.Struct("!BBII")
HEADER_SIZE: Final = HEADER.size
#: Largest payload of one frame; larger response bodies are split into DATA frames.
MAX_PAYLOAD: Final = 16 * 1024 * 1024
#: Largest DATA payload a worker writes in one frame (keeps flow control fine-grained).
DATA_CHUNK: Final = 256 * 1024
#: The least credit a DATA frame (or, in thread mode, a body chunk) spends, however
#: small: a worker's frames in flight are bounded in number, not only in bytes (the
#: main process's memory and work per frame are a hundred bytes and more).
DATA_FRAME_COST: Final = 512


def data_cost(size: int) -> int:
    """The credit a chunk of `size` response bytes spends (worker, guard and relay alike)."""
    return size if size > DATA_FRAME_COST else DATA_FRAME_COST


# Main process -> worker.
REQUEST: Final = 1
CREDIT: Final = 2
CANCEL: Final = 3
STOP: Final = 4
DUMP: Final = 5
SOCKET: Final = 6
DECLINE: Final = 7
# Worker -> main process.
HELLO: Final = 16
START: Final = 17
DATA: Final = 18
FILE: Final = 19
END: Final = 20
ERROR: Final = 21
STACK: Final = 22
STATUS: Final = 23
RESPONSE: Final = 24
RAW: Final = 25
TAKEOVER: Final = 26
PROGRESS: Final = 27
DONE: Final = 28
# Main process <-> template process (control channel).
SPAWN: Final = 32
SPAWNED: Final = 33
EXITED: Final = 34
READY: Final = 35
FAILED: Final = 36
SHUTDOWN: Final = 37

NAMES: Final = {
    REQUEST: "REQUEST",
    CREDIT: "CREDIT",
    CANCEL: "CANCEL",
    STOP: "STOP",
    DUMP: "DUMP",
    SOCKET: "SOCKET",
    DECLINE: "DECLINE",
    HELLO: "HELLO",
    START: "START",
    DATA: "DATA",
    FILE: "FILE",
    END: "END",
    ERROR: "ERROR",
    STACK: "STACK",
    STATUS: "STATUS",
    RESPONSE: "RESPONSE",
    RAW: "RAW",
    TAKEOVER: "TAKEOVER",
    PROGRESS: "PROGRESS",
    DONE: "DONE",
    SPAWN: "SPAWN",
    SPAWNED: "SPAWNED",
    EXITED: "EXITED",
    READY: "READY",
    FAILED: "FAILED",
    SHUTDOWN: "SHUTDOWN",
}

TO_WORKER: Final = frozenset({REQUEST, CREDIT, CANCEL, STOP, DUMP, SOCKET, DECLINE})
FROM_WORKER: Final = frozenset(
    {HELLO, START, DATA, FILE, END, ERROR, STACK, STATUS, RESPONSE, RAW, TAKEOVER, PROGRESS, DONE}
)
TO_TEMPLATE: Final = frozenset({SPAWN, SHUTDOWN})
FROM_TEMPLATE: Final = frozenset({SPAWNED, EXITED, READY, FAILED})

#: REQUEST flags: the body is a file descriptor sent with this frame (SCM_RIGHTS);
#: the connection stays open after the response; the main process takes a whole
#: response as a serialised head (RAW).
FLAG_BODY_FD: Final = 1
FLAG_KEEP_ALIVE: Final = 2
FLAG_RAW_HEAD: Final = 8
#: REQUEST flag: a retry: the worker that ran this request first died before answering.
FLAG_RETRY: Final = 16
#: REQUEST flag: the client's socket travels with this frame (SCM_RIGHTS, after the
#: body's descriptor if both): the worker may write a small whole response to it
#: itself and report it with DONE (see docs/protocol.md).
FLAG_CLIENT_SOCKET: Final = 32
#: SOCKET flag: the connection may stay open after this response.
FLAG_SOCKET_KEEP_ALIVE: Final = 1
#: DONE flag: the response went out whole and framed, the connection may be reused.
FLAG_DONE_COMPLETE: Final = 1
#: STATUS flags: the worker is over its soft / hard memory limit.
FLAG_OVER_RSS: Final = 1
FLAG_OVER_RSS_HARD: Final = 2
#: STATUS flag: the worker got SIGTERM from outside (systemd's control-group kill, an
#: operator): replace it, then stop it, as a planned recycle.
FLAG_STOP_ASKED: Final = 4
#: EXITED kinds.
EXIT_CODE: Final = 0
EXIT_SIGNAL: Final = 1

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_REQUEST_HEAD = struct.Struct("!IBH")
_FILE = struct.Struct("!QQ")
_STATUS = struct.Struct("!QIB")
_HELLO = struct.Struct("!IH")
_EXITED = struct.Struct("!IBi")
_DONE = struct.Struct("!QHBQ")
_INTENT = struct.Struct("!qQH")
_SOCKET = struct.Struct("!BI")
_I32 = struct.Struct("!i")
_NO_COUNT: Final = (1 << 64) - 1


class ProtocolError(Exception):
    """A frame that does not follow the protocol; the peer cannot be trusted any more."""


# -- framing -----------------------------------------------------------------


def frame(kind: int, request_id: int, payload: bytes = b"") -> bytes:
    """One whole frame as bytes."""
    return HEADER.pack(VERSION, kind, request_id, len(payload)) + payload


def frame_header(kind: int, request_id: int, length: int) -> bytes:
    """Only the header, for scatter-gather writes of large payloads."""
    return HEADER.pack(VERSION, kind, request_id, length)


def unsent(parts: list[bytes], sent: int) -> list[bytes]:
    """What is left of a scatter-gather write of `parts` after `sent` bytes went out."""
    for index, part in enumerate(parts):
        size = len(part)
        if sent < size:
            if sent == 0:
                return parts[index:]
            return [memoryview(part)[sent:].tobytes(), *parts[index + 1 :]]
        sent -= size
    return []


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole frames back.

    It never buffers more than one maximum frame plus what was fed since the
    last call: a header announcing a payload over ``max_payload`` is rejected
    before any of that payload is read.
    """

    __slots__ = ("_accept", "_buffer", "_max_payload")

    def __init__(self, accept: frozenset[int], max_payload: int = MAX_PAYLOAD) -> None:
        self._accept = accept
        self._max_payload = max_payload
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, int, bytes]]:
        """Whole frames in `data` and what was buffered before, as (type, id, payload).

        `data` may be a view of a reused receive buffer: payloads are copied out.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            with memoryview(buffer) as view:
                frames, offset = self._parse(view)
            del buffer[:offset]
            return frames
        view = data if isinstance(data, memoryview) else memoryview(data)
        frames, offset = self._parse(view)
        if offset < len(view):
            buffer += view[offset:]
        return frames

    def _parse(self, view: memoryview) -> tuple[list[tuple[int, int, bytes]], int]:
        frames: list[tuple[int, int, bytes]] = []
        offset = 0
        end = len(view)
        unpack = HEADER.unpack_from
        accept = self._accept
        while end - offset >= HEADER_SIZE:
            version, kind, request_id, length = unpack(view, offset)
            if version != VERSION:
                raise ProtocolError(f"unsupported protocol version {version} (expected {VERSION})")
            if kind not in accept:
                raise ProtocolError(f"unexpected frame type {NAMES.get(kind, kind)}")
            if length > self._max_payload:
                raise ProtocolError(
                    f"{NAMES[kind]} frame of {length} bytes exceeds the maximum {self._max_payload}"
                )
            stop = offset + HEADER_SIZE + length
            if stop > end:
                break
            frames.append((kind, request_id, view[offset + HEADER_SIZE : stop].tobytes()))
            offset = stop
        return frames, offset

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# -- validation of what an app returns ---------------------------------------

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TCHAR + "+")
_TOKENS = re.compile(f"{_TCHAR}+(?:\n{_TCHAR}+)*")
_STATUS_LINE = re.compile(r"([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def validate_status(status: object) -> tuple[int, str]:
    """(code, reason) from a WSGI status line; ValueError names what is wrong."""
    if not isinstance(status, str):
        raise ValueError(f"status must be a str, got {type(status).__name__}")
    match = _STATUS_LINE.fullmatch(status)
    if match is None:
        raise ValueError(f"malformed status line {status!r}")
    code = int(match.group(1))
    if code < 200:
        raise ValueError(f"status {code} is informational, not a final response")
    reason = match.group(2) or ""
    try:
        reason.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"status reason {reason!r} is not latin-1") from None
    return code, reason


def validate_header(name: object, value: object) -> None:
    """Raise ValueError if (name, value) cannot go on the wire as it is."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError(
            f"header name and value must be str, got {type(name).__name__} "
            f"and {type(value).__name__}"
        )
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_VALUE.search(value) is not None:
        raise ValueError(f"header {name} has a control character (CR, LF, NUL) in {value!r}")
    if not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {name} value {value!r} is not latin-1") from None
    if len(name) == 14 and name.lower() == "content-length":
        stripped = value.strip()
        if not stripped.isdigit() or not stripped.isascii():
            raise ValueError(f"invalid Content-Length {value!r}")


# -- payloads ----------------------------------------------------------------


#: The fixed fields of a REQUEST, in order (see docs/protocol.md).
REQUEST_FIELDS: Final = (
    "method",
    "target",
    "version",
    "scheme",
    "server_name",
    "server_port",
    "remote_addr",
    "remote_port",
    "prefix",
    "content_length",
)


def encode_request(
    request_id: int,
    credit: int,
    flags: int,
    fields: Sequence[bytes],
    headers: Sequence[tuple[bytes, bytes]],
    body: Sequence[bytes] = (),
) -> list[bytes]:
    """A REQUEST frame, as parts to write in order: head, then the body's chunks.

    The fields and headers travel as one blob after a table of lengths, so
    encoding and decoding are a handful of C calls, not one per item, and
    nothing is decoded or re-encoded here: the worker makes the environ out of
    the bytes. The body's chunks are separate parts, for a scatter-gather write.
    """
    strings = [*fields, *chain.from_iterable(headers)]
    table = struct.pack(f"!IBH{len(strings)}I", credit, flags, len(headers), *map(len, strings))
    blob = b"".join(strings)
    size = len(table) + len(blob) + sum(map(len, body))
    return [b"".join((HEADER.pack(VERSION, REQUEST, request_id, size), table, blob)), *body]


def decode_request(
    payload: bytes,
) -> tuple[int, int, list[bytes], list[tuple[bytes, bytes]], bytes]:
    """(credit, flags, fixed fields, headers, inline body) from a REQUEST payload."""
    size = len(payload)
    if size < _REQUEST_HEAD.size:
        raise ProtocolError("REQUEST payload too short")
    credit, flags, pairs = _REQUEST_HEAD.unpack_from(payload, 0)
    count = len(REQUEST_FIELDS) + pairs * 2
    offset = _REQUEST_HEAD.size
    table_end = offset + 4 * count
    if table_end > size:
        raise ProtocolError("REQUEST length table truncated")
    lengths = struct.unpack_from(f"!{count}I", payload, offset)
    if table_end + sum(lengths) > size:
        raise ProtocolError("REQUEST fields run past the payload")
    strings: list[bytes] = []
    position = table_end
    for length in lengths:
        end = position + length
        strings.append(payload[position:end])
        position = end
    nfields = len(REQUEST_FIELDS)
    headers = list(zip(strings[nfields::2], strings[nfields + 1 :: 2], strict=True))
    return credit, flags, strings[:nfields], headers, payload[position:]


def encode_start(status: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """START payload: a header count, a table of lengths, then status and headers in latin-1."""
    strings = [status, *chain.from_iterable(headers)]
    table = struct.pack(f"!H{len(strings)}I", len(headers), *map(len, strings))
    return table + "".join(strings).encode("latin-1")


def encode_response(status: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """RESPONSE payload: a whole small response (START, DATA and END) in one frame."""
    return encode_start(status, headers) + body


def decode_start(payload: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """(code, reason, headers) from a START payload, validated as if for the wire."""
    code, reason, headers, end = decode_start_prefix(payload)
    if end != len(payload):
        raise ProtocolError("START payload has trailing bytes")
    return code, reason, headers


def decode_response(payload: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """(code, reason, headers, body) from a RESPONSE payload."""
    code, reason, headers, end = decode_start_prefix(payload)
    return code, reason, headers, payload[end:]


def decode_start_prefix(payload: bytes) -> tuple[int, str, list[tuple[str, str]], int]:
    """Decode and validate the status and headers at the start of `payload`.

    Validation is done in bulk: one scan for control characters over the status
    line, every name and every value, one match for all the names as tokens.
    """
    size = len(payload)
    if size < 2:
        raise ProtocolError("START payload too short")
    (count,) = struct.unpack_from("!H", payload, 0)
    strings = 1 + 2 * count
    table_end = 2 + 4 * strings
    if table_end > size:
        raise ProtocolError("START length table truncated")
    lengths = struct.unpack_from(f"!{strings}I", payload, 2)
    end = table_end + sum(lengths)
    if end > size:
        raise ProtocolError("START headers run past the payload")
    text = payload[table_end:end].decode("latin-1")
    if _BAD_VALUE.search(text) is not None:
        raise ProtocolError("START: a control character (CR, LF, NUL) in the status or headers")
    status_len = lengths[0]
    try:
        code, reason = validate_status(text[:status_len])
    except ValueError as exc:
        raise ProtocolError(f"START: {exc}") from None
    headers: list[tuple[str, str]] = []
    position = status_len
    it = iter(lengths[1:])
    for name_len in it:
        value_len = next(it)
        name_end = position + name_len
        value_end = name_end + value_len
        headers.append((text[position:name_end], text[name_end:value_end]))
        position = value_end
    if headers:
        if _TOKENS.fullmatch("\n".join([name for name, _ in headers])) is None:
            bad = next(name for name, _ in headers if _TOKEN.fullmatch(name) is None)
            raise ProtocolError(f"START: invalid header name {bad!r}")
        for name, value in headers:
            if len(name) == 14 and name.lower() == "content-length":
                stripped = value.strip()
                if not stripped.isdigit() or not stripped.isascii():
                    raise ProtocolError(f"START: invalid Content-Length {value!r}")
    return code, reason, headers, end


def encode_raw(head: bytes, body: bytes) -> bytes:
    """RAW payload: a whole response, its head already serialised by the worker."""
    return _U32.pack(len(head)) + head + body


def raw_frame(request_id: int, head: bytes, body: bytes, trailer: bytes = b"") -> list[bytes]:
    """A whole RAW frame as parts for a scatter-gather write: the body is not copied.

    `trailer` is the RSS trailer (`encode_rss`) that ends the payload of a final frame.
    """
    size = 4 + len(head) + len(body) + len(trailer)
    first = HEADER.pack(VERSION, RAW, request_id, size) + _U32.pack(len(head)) + head
    return [first, body, trailer] if trailer else [first, body]


_RAW_HEAD = re.compile(
    rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n"
)
# Every framing or hop-by-hop header line of a head, with its value.
_RAW_FRAMING = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|upgrade|te|trailers?"
    rb"|proxy-authenticate|proxy-authorization): ([^\r\n]*)(?=\r\n)",
    re.IGNORECASE,
)


def decode_raw(payload: bytes | memoryview, head_request: bool) -> tuple[int, int, memoryview]:
    """(status code, head size, bytes to write) from a RAW payload, validated like START.

    The head must be a well-formed HTTP/1.x head with no control characters,
    no hop-by-hop or framing headers other than one Content-Length, and that
    length must be the body's: a worker cannot make the client read this
    response as anything but one whole response.
    """
    if len(payload) < 4:
        raise ProtocolError("RAW payload too short")
    (head_size,) = _U32.unpack_from(payload, 0)
    if 4 + head_size > len(payload):
        raise ProtocolError("RAW head runs past the payload")
    data = memoryview(payload)[4:]  # written as it is: no copy
    head = payload[4 : 4 + head_size]
    match = _RAW_HEAD.fullmatch(head)
    if match is None:
        raise ProtocolError("RAW head is not a well-formed HTTP/1.x head")
    code = int(match.group(1))
    if code < 200:
        raise ProtocolError(f"RAW: status {code} is informational, not a final response")
    lengths = []
    for name, value in _RAW_FRAMING.findall(head):
        if len(name) != 14 or name.lower() != b"content-length" or not value.isdigit():
            raise ProtocolError("RAW head has a hop-by-hop or framing header")
        if len(value) > 19:  # int() refuses 4,300 digits and more with a ValueError
            raise ProtocolError(f"RAW Content-Length of {len(value)} digits")
        lengths.append(value)
    body_size = len(data) - head_size
    if code in (204, 304):
        if lengths or body_size:
            raise ProtocolError(f"RAW: a {code} response with a length or a body")
    elif len(lengths) != 1:
        raise ProtocolError("RAW head needs exactly one Content-Length")
    elif head_request:
        if body_size:
            raise ProtocolError("RAW: a body in the response to HEAD")
    elif int(lengths[0]) != body_size:
        raise ProtocolError(f"RAW: Content-Length {int(lengths[0])} but {body_size} body bytes")
    return code, head_size, data


#: The RSS trailer that ends END, DONE, RESPONSE and RAW payloads: an i32, the worker's
#: resident memory change over the request in KiB; this value when it was not measured.
RSS_UNKNOWN: Final = -(1 << 31)
RSS_TRAILER_SIZE: Final = 4


def encode_rss(kib: int | None) -> bytes:
    """The RSS trailer for a change of `kib` KiB (None: not measured); clamped to an i32."""
    if kib is None:
        return _I32.pack(RSS_UNKNOWN)
    return _I32.pack(max(RSS_UNKNOWN + 1, min(kib, (1 << 31) - 1)))


def decode_rss(payload: bytes, kind: int) -> int | None:
    """The RSS change from the trailer that ends `payload` (a `kind` frame); None if unknown."""
    if len(payload) < RSS_TRAILER_SIZE:
        raise ProtocolError(f"{NAMES.get(kind, kind)} payload has no RSS trailer")
    (kib,) = _I32.unpack_from(payload, len(payload) - RSS_TRAILER_SIZE)
    return None if kib == RSS_UNKNOWN else int(kib)


def encode_progress(before: int, size: int, status: int) -> bytes:
    """The first PROGRESS of a whole write: the client socket's byte count before it
    (-1: unknown), the bytes about to be written, and their status."""
    return _INTENT.pack(before, size, status)


def decode_progress(payload: bytes) -> tuple[int, int, int] | None:
    """(count before, size, status) from a whole write's first PROGRESS; None if empty."""
    if not payload:
        return None
    if len(payload) != _INTENT.size:
        raise ProtocolError(f"PROGRESS payload must be {_INTENT.size} bytes, got {len(payload)}")
    before, size, status = _INTENT.unpack(payload)
    if before < -1 or not 200 <= status <= 999:
        raise ProtocolError(f"PROGRESS with count {before} and status {status}")
    return before, size, status


def encode_done(written: int, status: int, complete: bool, body: int, rest: bytes = b"") -> bytes:
    """DONE payload: bytes the worker wrote to the client, the status, whether it ended
    well; then `rest`, the response's bytes it could not write at once (whole writes)."""
    return _DONE.pack(written, status, FLAG_DONE_COMPLETE if complete else 0, body) + rest


def decode_done(payload: bytes) -> tuple[int, int, bool, int, bytes]:
    """(bytes written, status, ended whole, body bytes written: for the access log,
    the rest of the response for the main process to write)."""
    if len(payload) < _DONE.size:
        raise ProtocolError(f"DONE payload must be at least {_DONE.size} bytes, got {len(payload)}")
    written, status, flags, body = _DONE.unpack_from(payload)
    if flags & ~FLAG_DONE_COMPLETE or not 200 <= status <= 999:
        raise ProtocolError(f"DONE with status {status} and flags {flags:#x}")
    if body > written:
        raise ProtocolError(f"DONE with {body} body bytes of {written} written")
    return written, status, bool(flags & FLAG_DONE_COMPLETE), body, payload[_DONE.size :]


def encode_socket(keep_alive: bool, send_timeout: float | None) -> bytes:
    """SOCKET: u8 flags, then u32 milliseconds the client may take no bytes (0: no limit)."""
    flags = FLAG_SOCKET_KEEP_ALIVE if keep_alive else 0
    millis = 0 if send_timeout is None else min(max(1, round(send_timeout * 1000)), 0xFFFFFFFF)
    return _SOCKET.pack(flags, millis)


def decode_socket(payload: bytes) -> tuple[bool, float | None]:
    """(keep-alive, send timeout in seconds or None) from a SOCKET payload."""
    if len(payload) != _SOCKET.size:
        raise ProtocolError(f"SOCKET payload must be {_SOCKET.size} bytes, got {len(payload)}")
    flags, millis = _SOCKET.unpack(payload)
    if flags & ~FLAG_SOCKET_KEEP_ALIVE:
        raise ProtocolError(f"SOCKET with flags {flags:#x}")
    return bool(flags & FLAG_SOCKET_KEEP_ALIVE), (millis / 1000.0 if millis else None)


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(payload: bytes, what: str) -> int:
    if len(payload) != _U32.size:
        raise ProtocolError(f"{what} payload must be 4 bytes, got {len(payload)}")
    value: int = _U32.unpack(payload)[0]
    return value


def encode_file(offset: int, count: int | None) -> bytes:
    return _FILE.pack(offset, _NO_COUNT if count is None else count)


#: The largest offset and count of a FILE frame (2^62: their sum stays a valid off_t).
FILE_LIMIT: Final = 1 << 62


def decode_file(payload: bytes) -> tuple[int, int | None]:
    if len(payload) != _FILE.size:
        raise ProtocolError(f"FILE payload must be {_FILE.size} bytes, got {len(payload)}")
    offset, count = _FILE.unpack(payload)
    if count == _NO_COUNT:
        count = None
    elif count > FILE_LIMIT:
        raise ProtocolError(f"FILE count {count} past {FILE_LIMIT}")
    if offset > FILE_LIMIT:  # sendfile(2) takes a signed offset; both together fit it
        raise ProtocolError(f"FILE offset {offset} past {FILE_LIMIT}")
    return offset, count


def encode_status(rss: int, served: int, flags: int) -> bytes:
    return _STATUS.pack(rss, served, flags)


def decode_status(payload: bytes) -> tuple[int, int, int]:
    if len(payload) != _STATUS.size:
        raise ProtocolError(f"STATUS payload must be {_STATUS.size} bytes, got {len(payload)}")
    rss, served, flags = _STATUS.unpack(payload)
    if flags & ~(FLAG_OVER_RSS | FLAG_OVER_RSS_HARD | FLAG_STOP_ASKED):
        raise ProtocolError(f"STATUS with unknown flags {flags:#x}")
    return rss, served, flags


def encode_hello(pid: int, threads: int) -> bytes:
    return _HELLO.pack(pid, threads)


def decode_hello(payload: bytes) -> tuple[int, int]:
    if len(payload) != _HELLO.size:
        raise ProtocolError(f"HELLO payload must be {_HELLO.size} bytes, got {len(payload)}")
    pid, threads = _HELLO.unpack(payload)
    if pid <= 0 or threads <= 0:
        raise ProtocolError(f"HELLO with pid {pid} and {threads} threads")
    return pid, threads


def encode_exited(pid: int, kind: int, code: int) -> bytes:
    return _EXITED.pack(pid, kind, code)


def decode_exited(payload: bytes) -> tuple[int, int, int]:
    if len(payload) != _EXITED.size:
        raise ProtocolError(f"EXITED payload must be {_EXITED.size} bytes, got {len(payload)}")
    pid, kind, code = _EXITED.unpack(payload)
    if kind not in (EXIT_CODE, EXIT_SIGNAL):
        raise ProtocolError(f"EXITED with unknown kind {kind}")
    return pid, kind, code


def decode_text(payload: bytes, limit: int = 64 * 1024) -> str:
    """A diagnostic text (ERROR, STACK, FAILED): UTF-8, bounded, never trusted for layout."""
    return payload[:limit].decode("utf-8", "replace")
