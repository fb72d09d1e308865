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
from collections.abc import Iterable, Sequence
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

# Main process -> worker.
REQUEST: Final = 1
CREDIT: Final = 2
CANCEL: Final = 3
STOP: Final = 4
DUMP: Final = 5
# Worker -> main process.
HELLO: Final = 16
START: Final = 17
DATA: Final = 18
FILE: Final = 19
END: Final = 20
ERROR: Final = 21
STACK: Final = 22
STATUS: Final = 23
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
    HELLO: "HELLO",
    START: "START",
    DATA: "DATA",
    FILE: "FILE",
    END: "END",
    ERROR: "ERROR",
    STACK: "STACK",
    STATUS: "STATUS",
    SPAWN: "SPAWN",
    SPAWNED: "SPAWNED",
    EXITED: "EXITED",
    READY: "READY",
    FAILED: "FAILED",
    SHUTDOWN: "SHUTDOWN",
}

TO_WORKER: Final = frozenset({REQUEST, CREDIT, CANCEL, STOP, DUMP})
FROM_WORKER: Final = frozenset({HELLO, START, DATA, FILE, END, ERROR, STACK, STATUS})
TO_TEMPLATE: Final = frozenset({SPAWN, SHUTDOWN})
FROM_TEMPLATE: Final = frozenset({SPAWNED, EXITED, READY, FAILED})

#: REQUEST flag: the body is a file descriptor sent with this frame (SCM_RIGHTS).
FLAG_BODY_FD: Final = 1
#: STATUS flags: the worker is over its soft / hard memory limit.
FLAG_OVER_RSS: Final = 1
FLAG_OVER_RSS_HARD: Final = 2
#: EXITED kinds.
EXIT_CODE: Final = 0
EXIT_SIGNAL: Final = 1

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_PAIR = struct.Struct("!HI")
_REQUEST_HEAD = struct.Struct("!IBH")
_START_HEAD = struct.Struct("!HH")
_FILE = struct.Struct("!QQ")
_STATUS = struct.Struct("!QIB")
_HELLO = struct.Struct("!IH")
_EXITED = struct.Struct("!IBi")
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

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Whole frames in `data` and what was buffered before, as (type, id, payload)."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        frames: list[tuple[int, int, bytes]] = []
        offset = 0
        end = len(view)
        unpack = HEADER.unpack_from
        while end - offset >= HEADER_SIZE:
            version, kind, request_id, length = unpack(view, offset)
            if version != VERSION:
                raise ProtocolError(f"unsupported protocol version {version} (expected {VERSION})")
            if kind not in self._accept:
                raise ProtocolError(f"unexpected frame type {NAMES.get(kind, kind)}")
            if length > self._max_payload:
                raise ProtocolError(
                    f"{NAMES[kind]} frame of {length} bytes exceeds the maximum {self._max_payload}"
                )
            stop = offset + HEADER_SIZE + length
            if stop > end:
                break
            frames.append((kind, request_id, bytes(view[offset + HEADER_SIZE : stop])))
            offset = stop
        if buffer:
            del buffer[:offset]
        elif offset < end:
            buffer += view[offset:]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# -- validation of what an app returns ---------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
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


def encode_request(
    request_id: int,
    credit: int,
    environ: Iterable[tuple[str, str]],
    body: bytes = b"",
    body_fd: bool = False,
) -> bytes:
    """A REQUEST frame: the str-valued environ and, when small, the body inline."""
    parts: list[bytes] = []
    append = parts.append
    pack = _PAIR.pack
    count = 0
    for key, value in environ:
        k = key.encode("latin-1")
        v = value.encode("latin-1")
        append(pack(len(k), len(v)))
        append(k)
        append(v)
        count += 1
    head = _REQUEST_HEAD.pack(credit, FLAG_BODY_FD if body_fd else 0, count)
    payload = b"".join((head, *parts, body))
    return HEADER.pack(VERSION, REQUEST, request_id, len(payload)) + payload


def decode_request(payload: bytes) -> tuple[int, int, dict[str, str], bytes]:
    """(credit, flags, environ, inline body) from a REQUEST payload."""
    size = len(payload)
    if size < _REQUEST_HEAD.size:
        raise ProtocolError("REQUEST payload too short")
    credit, flags, count = _REQUEST_HEAD.unpack_from(payload, 0)
    offset = _REQUEST_HEAD.size
    environ: dict[str, str] = {}
    unpack = _PAIR.unpack_from
    pair_size = _PAIR.size
    for _ in range(count):
        if offset + pair_size > size:
            raise ProtocolError("REQUEST environ truncated")
        klen, vlen = unpack(payload, offset)
        offset += pair_size
        stop = offset + klen + vlen
        if stop > size:
            raise ProtocolError("REQUEST environ entry runs past the payload")
        key = payload[offset : offset + klen].decode("latin-1")
        environ[key] = payload[offset + klen : stop].decode("latin-1")
        offset = stop
    return credit, flags, environ, payload[offset:]


def encode_start(status: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """START payload: the status line and the headers, latin-1, length-prefixed."""
    status_bytes = status.encode("latin-1")
    parts = [_START_HEAD.pack(len(status_bytes), len(headers)), status_bytes]
    pack = _PAIR.pack
    for name, value in headers:
        n = name.encode("latin-1")
        v = value.encode("latin-1")
        parts += (pack(len(n), len(v)), n, v)
    return b"".join(parts)


def decode_start(payload: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """(code, reason, headers) from a START payload, validated as if for the wire."""
    size = len(payload)
    if size < _START_HEAD.size:
        raise ProtocolError("START payload too short")
    status_len, count = _START_HEAD.unpack_from(payload, 0)
    offset = _START_HEAD.size + status_len
    if offset > size:
        raise ProtocolError("START status line truncated")
    status = payload[_START_HEAD.size : offset].decode("latin-1")
    try:
        code, reason = validate_status(status)
    except ValueError as exc:
        raise ProtocolError(f"START: {exc}") from None
    headers: list[tuple[str, str]] = []
    unpack = _PAIR.unpack_from
    pair_size = _PAIR.size
    for _ in range(count):
        if offset + pair_size > size:
            raise ProtocolError("START headers truncated")
        nlen, vlen = unpack(payload, offset)
        offset += pair_size
        stop = offset + nlen + vlen
        if stop > size:
            raise ProtocolError("START header runs past the payload")
        name = payload[offset : offset + nlen].decode("latin-1")
        value = payload[offset + nlen : stop].decode("latin-1")
        offset = stop
        try:
            validate_header(name, value)
        except ValueError as exc:
            raise ProtocolError(f"START: {exc}") from None
        headers.append((name, value))
    if offset != size:
        raise ProtocolError("START payload has trailing bytes")
    return code, reason, headers


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(payload: bytes, what: str) -> int:
    if len(payload) != _U32.size:
        raise ProtocolError(f"{what} payload must be 4 bytes, got {len(payload)}")
    value: int = _U32.unpack(payload)[0]
    return value


def encode_file(offset: int, count: int | None) -> bytes:
    return _FILE.pack(offset, _NO_COUNT if count is None else count)


def decode_file(payload: bytes) -> tuple[int, int | None]:
    if len(payload) != _FILE.size:
        raise ProtocolError(f"FILE payload must be {_FILE.size} bytes, got {len(payload)}")
    offset, count = _FILE.unpack(payload)
    return offset, None if count == _NO_COUNT else count


def encode_status(rss: int, served: int, flags: int) -> bytes:
    return _STATUS.pack(rss, served, flags)


def decode_status(payload: bytes) -> tuple[int, int, int]:
    if len(payload) != _STATUS.size:
        raise ProtocolError(f"STATUS payload must be {_STATUS.size} bytes, got {len(payload)}")
    rss, served, flags = _STATUS.unpack(payload)
    if flags & ~(FLAG_OVER_RSS | FLAG_OVER_RSS_HARD):
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
