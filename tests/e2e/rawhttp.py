"""Small real HTTP clients for the end-to-end tests: raw sockets and strict h11 parsing.

Raw sockets let a test send bytes http.client refuses (non-ASCII targets,
repeated or underscored headers, HTTP/1.0, pipelined requests) and see exactly
what the server wrote back, including where it cut the connection.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import h11

Address = tuple[str, int] | str


def connect(address: Address, timeout: float = 10.0) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_eof(sock: socket.socket, timeout: float = 10.0, limit: int = 64 << 20) -> bytes:
    """Everything the peer sends until it closes; raises TimeoutError if it never does."""
    deadline = time.monotonic() + timeout
    parts: list[bytes] = []
    size = 0
    while size < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no EOF within {timeout}s; got {b''.join(parts)[:300]!r}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise TimeoutError(
                f"no EOF within {timeout}s; got {len(b''.join(parts))} bytes: "
                f"{b''.join(parts)[:300]!r}"
            ) from None
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


def exchange(address: Address, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` (which should ask for Connection: close), return all bytes until EOF."""
    with connect(address, timeout) as sock:
        sock.sendall(data)
        return read_until_eof(sock, timeout)


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes = b""
    complete: bool = True
    rest: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        """The value of a header (repeated ones joined with ', '), or None."""
        key = name.lower().encode()
        values = [v.decode("latin-1") for k, v in self.headers if k.lower() == key]
        return ", ".join(values) if values else None

    def header_names(self) -> set[str]:
        return {k.decode("latin-1").lower() for k, _ in self.headers}


def parse_one(data: bytes, method: str = "GET") -> Response:
    """Parse one response from `data` (all bytes up to EOF); `complete` says if its body was."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete response head in {data[:300]!r}")
    lines = head.split(b"\r\n")
    _version, code, reason = [*lines[0].split(b" ", 2), b""][:3]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    response = Response(int(code), reason, headers, b"", raw_head=head)
    status = response.status
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        response.rest = rest
        return response
    te = (response.header("transfer-encoding") or "").lower()
    length = response.header("content-length")
    if "chunked" in te:
        body = bytearray()
        while True:
            size_line, sep, after = rest.partition(b"\r\n")
            if not sep:
                response.complete = False
                break
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                _trailers, sep, rest = after.partition(b"\r\n")
                response.complete = bool(sep)
                break
            if len(after) < size + 2:
                body += after[:size]
                response.complete = False
                rest = b""
                break
            body += after[:size]
            rest = after[size + 2 :]
        response.body = bytes(body)
        response.rest = rest
    elif length is not None:
        size = int(length)
        response.body = rest[:size]
        response.complete = len(response.body) == size
        response.rest = rest[size:]
    else:
        response.body = rest
        response.rest = b""
    return response


def read_response(sock: socket.socket, timeout: float = 10.0) -> Response:
    """One response with a Content-Length from `sock`, without waiting for the close."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                break
    assert data, "no response"
    return parse_one(data)


def request_bytes(
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "1.1",
    close: bool = True,
) -> bytes:
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [f"{method} ".encode() + target + f" HTTP/{version}".encode()]
    names = {name.lower() for name, _ in headers or []}
    if "host" not in names and version == "1.1":
        lines.append(b"Host: 127.0.0.1")
    for name, value in headers or []:
        lines.append(f"{name}: {value}".encode("latin-1"))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}".encode())
    if close and "connection" not in names:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(parts: list[bytes]) -> bytes:
    out = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p)
    return out + b"0\r\n\r\n"


# -- strict h11 over one connection --------------------------------------------------


@dataclass
class H11Response:
    status: int
    headers: dict[str, str]
    body: bytes
    #: False when the connection ended in the middle of the body (h11 saw the violation).
    complete: bool = True


class StrictPipeline:
    """Pipelined requests on one connection, responses parsed by h11 (client role).

    h11 cannot send a second request before the first response completes, so
    the requests are written by hand, all at once; for each response, the
    matching request is replayed into the h11 state machine (its bytes are
    discarded) so that h11 knows the method (HEAD) and checks the framing.
    """

    def __init__(self, address: Address, timeout: float = 10.0) -> None:
        self.sock = connect(address, timeout)
        self.timeout = timeout
        self.conn = h11.Connection(h11.CLIENT)
        #: The server closed the connection (EOF seen).
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def send(self, requests: list[tuple[str, str, bytes]]) -> None:
        """Write every request at once: (method, target, body)."""
        data = b""
        for method, target, body in requests:
            data += request_bytes(method, target, body=body, close=False)
        self.sock.sendall(data)

    @property
    def reusable(self) -> bool:
        """Both sides are done and nobody asked to close: the next cycle may start."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def next_response(self, method: str, target: str, body: bytes = b"") -> H11Response:
        """The next response.

        A response whose body the server cut short (EOF before its end) comes
        back with ``complete=False``; any other framing violation raises
        h11.RemoteProtocolError.
        """
        conn = self.conn
        if self.reusable:
            conn.start_next_cycle()
        headers = [("Host", "127.0.0.1")]
        if body:
            headers.append(("Content-Length", str(len(body))))
        conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            conn.send(h11.Data(data=body))
        conn.send(h11.EndOfMessage())
        status = 0
        received: dict[str, str] = {}
        data = bytearray()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                if self.eof and status:
                    return H11Response(status, received, bytes(data), complete=False)
                raise
            if event is h11.NEED_DATA:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no complete response to {method} {target}")
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    self.eof = True
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    received[key] = f"{received[key]}, {text}" if key in received else text
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return H11Response(status, received, bytes(data))
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError(f"connection closed, no response to {target}")
