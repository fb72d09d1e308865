"""What the main process collects of an aiohttp request to build its environ elsewhere.

The environ itself is built by `wsgipool.cgi` where the app runs (a worker, or
the app's thread), from these raw facts: the event loop, which every request
passes through, only reads what aiohttp already parsed, as the bytes the
REQUEST frame carries (protocol.REQUEST_FIELDS).  A connection's addresses are
encoded once and kept on its protocol object where that can hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Collected", "collect"]

_VERSIONS = {(1, 1): b"1.1", (1, 0): b"1.0"}
_NO_CONNECTION = (b"http", b"", b"", b"", b"")


class Collected:
    """The facts of one request: fixed fields, header bytes as parsed, keep-alive."""

    __slots__ = ("fields", "headers", "keep_alive")

    def __init__(
        self, fields: list[bytes], headers: Sequence[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self.fields = fields
        self.headers = headers
        self.keep_alive = keep_alive

    @property
    def method(self) -> bytes:
        return self.fields[0]

    def request_line(self) -> str:
        """ "METHOD /target", for log lines."""
        return f"{self.fields[0].decode('latin-1')} {self.fields[1].decode('latin-1')}"


def collect(request: web.BaseRequest, content_length: int) -> Collected:
    """The facts of `request`, whose body turned out to have `content_length` bytes.

    A request without a body and without a Content-Length header has no
    CONTENT_LENGTH (an empty field); ``Content-Length: 0`` and an empty chunked
    body have "0".
    """
    scheme, server_name, server_port, remote_addr, remote_port = _connection(request)
    version = request.version
    fields = [
        request.method.encode("latin-1"),
        request.raw_path.encode("utf-8", "surrogateescape"),
        _VERSIONS.get(version) or f"{version[0]}.{version[1]}".encode("ascii"),
        scheme,
        server_name,
        server_port,
        remote_addr,
        remote_port,
        _route_prefix(request),
        b"%d" % content_length
        if content_length or request.body_exists or "Content-Length" in request.headers
        else b"",
    ]
    return Collected(fields, request.raw_headers, request.keep_alive)


def collect_message(message: Any, connection: tuple[bytes, ...], length: int = 0) -> Collected:
    """The facts of a request with a body of `length` bytes in hand, from aiohttp's parsed
    message (fastpath.py): what `collect` gives for the request aiohttp would make of it."""
    version = message.version
    fields = [
        message.method.encode("latin-1"),
        message.path.encode("utf-8", "surrogateescape"),
        _VERSIONS.get(version) or f"{version[0]}.{version[1]}".encode("ascii"),
        *connection,
        b"",  # no router: no prefix
        b"%d" % length if length or "Content-Length" in message.headers else b"",
    ]
    return Collected(fields, message.raw_headers, not message.should_close)


def _connection(request: web.BaseRequest) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(scheme, server name, server port, remote address, remote port) of the connection."""
    return connection_of(request.protocol, request.transport)  # type: ignore[return-value]


def connection_of(protocol: Any, transport: Any) -> tuple[bytes, ...]:
    """The encoded addresses of a connection, kept on its protocol where it has room."""
    cached = getattr(protocol, "wsgi_connection", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    if transport is None:
        return _NO_CONNECTION
    server_name, server_port = _parse_sockname(transport.get_extra_info("sockname"))
    remote_addr, remote_port = _parse_sockname(transport.get_extra_info("peername"))
    scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
    connection = tuple(
        text.encode("latin-1")
        for text in (scheme, server_name, server_port, remote_addr, remote_port)
    )
    try:
        protocol.wsgi_connection = connection  # our request handler keeps it (limits.py)
    except AttributeError:
        pass  # aiohttp's own request handler (embedded use) has no room for it
    return connection


def _route_prefix(request: web.BaseRequest) -> bytes:
    """What a router matched before ``path_info``: the app's SCRIPT_NAME.

    Empty without a router (aiohttp's low-level server), where the handler's
    own ``script_name`` mount applies.
    """
    match_info: Any = getattr(request, "match_info", None)
    tail = match_info.get("path_info") if match_info is not None else None
    if tail is None:
        return b""
    decoded = request.path
    prefix = decoded[: len(decoded) - len(tail)] if tail else decoded
    if prefix.endswith("/"):
        prefix = prefix[:-1]
    return prefix.encode("utf-8")


def _parse_sockname(sockname: object) -> tuple[str, str]:
    """(host, port) of a socket address; unix sockets read as ("unix", path) like aiohttp-wsgi."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = str(sockname[0])
        if host.startswith("::ffff:") and "." in host:  # an IPv4 client on a dual-stack socket
            host = host[7:]
        return host, str(sockname[1])
    if isinstance(sockname, bytes):
        return "unix", sockname.decode("latin-1")
    if isinstance(sockname, str):
        return "unix", sockname
    return "", ""
