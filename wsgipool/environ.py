"""The PEP 3333 environ of an aiohttp request.

`EnvironBuilder` produces the str-valued CGI part; the in-process executor adds
the ``wsgi.*`` objects to it, the process executor sends it to a worker that
adds its own.  Paths follow PEP 3333, not aiohttp: PATH_INFO and SCRIPT_NAME are
the percent-decoded bytes of the request target read as latin-1, so /café
reaches Django as the UTF-8 bytes it expects to re-decode.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

from wsgipool import __version__

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["SERVER_SOFTWARE", "EnvironBuilder", "NotMounted", "http_key"]

SERVER_SOFTWARE = f"wsgipool/{__version__}"
_SCHEMES = frozenset({"http", "https"})


@lru_cache(maxsize=512)
def http_key(name: bytes) -> str | None:
    """HTTP_* key for a request header name; None for names dropped or mapped elsewhere.

    A name with an underscore is dropped: after the CGI mapping it would be
    indistinguishable from its dashed twin, and could impersonate it.
    """
    if b"_" in name:
        return None
    key = name.decode("latin-1").upper().replace("-", "_")
    if key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        return ""
    return "HTTP_" + key


class NotMounted(Exception):
    """The path is outside the prefix the app is mounted under (404)."""


class TrustedPeers:
    """Which peers may tell us the client's address and scheme (forwarded_allow_ips)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        items = tuple(allowed)
        self.any = "*" in items
        self._exact = frozenset(i for i in items if i != "*" and "/" not in i)
        self._networks = tuple(ipaddress.ip_network(i, strict=False) for i in items if "/" in i)

    def __contains__(self, address: object) -> bool:
        if self.any:
            return True
        if not isinstance(address, str) or not address:
            return False
        if address in self._exact:
            return True
        if not self._networks:
            return False
        return _in_networks(address, self._networks)


@lru_cache(maxsize=1024)
def _in_networks(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class EnvironBuilder:
    """Builds the CGI variables of one request; configured once per handler."""

    def __init__(
        self,
        *,
        url_scheme: str | None = None,
        forwarded_allow_ips: Iterable[str] = ("127.0.0.1", "::1"),
        script_name: str = "",
    ) -> None:
        self._url_scheme = url_scheme
        self._trusted = TrustedPeers(forwarded_allow_ips)
        self._mount = script_name.rstrip("/").encode("utf-8")

    def build(self, request: web.BaseRequest, content_length: int) -> tuple[dict[str, str], str]:
        """(CGI environ, wsgi.url_scheme) for `request` whose body has `content_length` bytes."""
        target = request.raw_path
        raw = target.encode("utf-8", "surrogateescape")
        path, _, query = raw.partition(b"?")
        if not path.startswith(b"/"):
            path = _origin_path(path)
        if b"#" in path:
            path = path.partition(b"#")[0]
        path_bytes = unquote_to_bytes(path) if b"%" in path else path
        if path == b"*":  # OPTIONS *: about the server, no path at all
            script_name, path_info = "", ""
        elif self._mount:
            script_name, path_info = _split_mount(self._mount, path_bytes)
        else:
            script_name, path_info = _split_script_name(request, path_bytes)

        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        peername = transport.get_extra_info("peername") if transport is not None else None
        server_name, server_port = _parse_sockname(sockname)
        remote_addr, remote_port = _parse_sockname(peername)
        version = request.version

        environ: dict[str, str] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": script_name,
            "PATH_INFO": path_info,
            "QUERY_STRING": query.decode("latin-1"),
            "REQUEST_URI": raw.decode("latin-1"),
            "RAW_URI": raw.decode("latin-1"),
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "REMOTE_ADDR": remote_addr,
            "REMOTE_HOST": remote_addr,
            "REMOTE_PORT": remote_port,
            "SERVER_PROTOCOL": f"HTTP/{version[0]}.{version[1]}",
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "CONTENT_LENGTH": str(content_length),
        }
        for name, value in request.raw_headers:
            key = http_key(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if not key:
                if len(name) == 12:  # Content-Type; Content-Length is what was received
                    environ["CONTENT_TYPE"] = text
                continue
            if key in environ:
                separator = "; " if key == "HTTP_COOKIE" else ", "
                environ[key] += separator + text
            else:
                environ[key] = text

        scheme = self._url_scheme
        if scheme is None:
            scheme = "https" if _is_tls(transport) else "http"
        if remote_addr in self._trusted:
            forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
            if forwarded_for:
                client = self._client_address(forwarded_for)
                if client:
                    environ["REMOTE_ADDR"] = environ["REMOTE_HOST"] = client
                    environ["REMOTE_PORT"] = "0"
            proto = environ.get("HTTP_X_FORWARDED_PROTO")
            if proto and self._url_scheme is None:
                first = proto.split(",")[0].strip().lower()
                if first in _SCHEMES:
                    scheme = first
        return environ, scheme

    def _client_address(self, header: str) -> str:
        """The nearest address in X-Forwarded-For that is not one of our own proxies."""
        hops = [hop.strip() for hop in header.split(",") if hop.strip()]
        for hop in reversed(hops):
            if hop not in self._trusted:
                return _strip_port(hop)
        return _strip_port(hops[0]) if hops else ""


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [v6]:port
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:  # v4:port
        return hop.partition(":")[0]
    return hop


def _origin_path(target: bytes) -> bytes:
    """The path of an absolute-form target (``GET http://host/path``)."""
    try:
        parts = urlsplit(target.decode("latin-1"))
    except ValueError:
        return b"/"
    return (parts.path or "/").encode("latin-1")


def _split_mount(mount: bytes, path: bytes) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO under a fixed mount prefix; NotMounted outside it."""
    size = len(mount)
    if path.startswith(mount) and (len(path) == size or path[size] == 0x2F):
        return mount.decode("latin-1"), path[size:].decode("latin-1")
    raise NotMounted(path)


def _split_script_name(request: web.BaseRequest, path: bytes) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO from the route's ``path_info`` match.

    The prefix is whatever the route matched before ``path_info``; only a
    prefix that ends at a path segment boundary counts, so an app mounted at
    /foo never sees /foobar as its own.
    """
    match_info: Any = getattr(request, "match_info", None)
    tail = match_info.get("path_info") if match_info is not None else None
    if tail is None:
        return "", path.decode("latin-1")
    decoded = request.path
    prefix = decoded[: len(decoded) - len(tail)] if tail else decoded
    if prefix.endswith("/"):
        prefix = prefix[:-1]
    if not prefix:
        return "", path.decode("latin-1")
    prefix_bytes = prefix.encode("utf-8")
    size = len(prefix_bytes)
    if path.startswith(prefix_bytes) and (len(path) == size or path[size] == 0x2F):
        return prefix_bytes.decode("latin-1"), path[size:].decode("latin-1")
    return "", path.decode("latin-1")


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


def _is_tls(transport: Any) -> bool:
    return transport is not None and transport.get_extra_info("sslcontext") is not None
