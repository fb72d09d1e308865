"""What the main process collects of an aiohttp request to build its environ elsewhere.

The environ itself is built by `wsgipool.cgi` where the app runs (a worker, or
the app's thread), from these raw facts: the event loop, which every request
passes through, only reads what aiohttp already parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsgipool.cgi import RequestFacts

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["request_facts"]

_VERSIONS = {(1, 1): "1.1", (1, 0): "1.0"}


def request_facts(request: web.BaseRequest, content_length: int) -> RequestFacts:
    """The facts of `request`, whose body turned out to have `content_length` bytes."""
    transport = request.transport
    if transport is not None:
        server_name, server_port = _parse_sockname(transport.get_extra_info("sockname"))
        remote_addr, remote_port = _parse_sockname(transport.get_extra_info("peername"))
        scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
    else:
        server_name = server_port = remote_addr = remote_port = ""
        scheme = "http"
    version = request.version
    return RequestFacts(
        request.method,
        request.raw_path.encode("utf-8", "surrogateescape"),
        _VERSIONS.get(version) or f"{version[0]}.{version[1]}",
        scheme,
        server_name,
        server_port,
        remote_addr,
        remote_port,
        _route_prefix(request),
        content_length,
        request.keep_alive,
        request.raw_headers,
    )


def _route_prefix(request: web.BaseRequest) -> bytes | None:
    """What a router matched before ``path_info``: the app's SCRIPT_NAME.

    None without a router (aiohttp's low-level server), where the handler's
    own ``script_name`` mount applies.
    """
    match_info: Any = getattr(request, "match_info", None)
    tail = match_info.get("path_info") if match_info is not None else None
    if tail is None:
        return None
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
