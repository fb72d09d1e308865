"""The CGI variables of a PEP 3333 environ, from the raw facts of a request.

Pure code, no aiohttp: the main process only collects `RequestFacts` (the
target and header bytes as received, the addresses of the connection), and
the environ is built where the app runs, in the worker process or in the
app's thread, so the event loop does not spend its time on it.

Paths follow PEP 3333, not aiohttp: PATH_INFO and SCRIPT_NAME are the
percent-decoded bytes of the request target read as latin-1, so /café reaches
Django as the UTF-8 bytes it expects to re-decode.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote_to_bytes, urlsplit

from wsgipool import __version__

__all__ = [
    "SERVER_SOFTWARE",
    "EnvironOptions",
    "NotMounted",
    "RequestFacts",
    "build_environ",
    "facts_from_fields",
    "http_key",
]

SERVER_SOFTWARE = f"wsgipool/{__version__}"
UNIX_PEER = "unix"  # the remote address of a peer on a unix socket, as aiohttp-wsgi has it
_SCHEMES = frozenset({"http", "https"})


class NotMounted(Exception):
    """The path is outside the prefix the app is mounted under (404)."""


class RequestFacts:
    """What the main process knows of a request, before any WSGI interpretation."""

    __slots__ = (
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "prefix",
        "remote_addr",
        "remote_port",
        "scheme",
        "server_name",
        "server_port",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        version: str,
        scheme: str,
        server_name: str,
        server_port: str,
        remote_addr: str,
        remote_port: str,
        prefix: bytes | None,
        content_length: int | None,
        keep_alive: bool,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        self.target = target  # the request target as received
        self.version = version  # "1.1"
        self.scheme = scheme  # of the connection: "http" or "https"
        self.server_name = server_name
        self.server_port = server_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.prefix = prefix  # what a router matched before the app's path, if any
        self.content_length = content_length  # None: no body and no Content-Length
        self.keep_alive = keep_alive
        self.headers = headers  # (name, value) bytes, as received


def facts_from_fields(
    fields: Sequence[bytes], headers: Sequence[tuple[bytes, bytes]], keep_alive: bool
) -> RequestFacts:
    """RequestFacts from the fixed fields the main process collects (protocol.REQUEST_FIELDS)."""
    method, target, version, scheme, server_name, server_port, addr, port, prefix, length = fields
    return RequestFacts(
        method.decode("latin-1"),
        target,
        version.decode("latin-1"),
        scheme.decode("latin-1"),
        server_name.decode("latin-1"),
        server_port.decode("latin-1"),
        addr.decode("latin-1"),
        port.decode("latin-1"),
        prefix or None,
        int(length) if length.isdigit() else None,
        keep_alive,
        headers,
    )


class TrustedPeers:
    """Which peers may tell us the client's address and scheme (forwarded_allow_ips).

    ``*`` trusts whichever peer connects, ``unix`` trusts peers on a unix socket
    (whose address reads as "unix"), and addresses and networks trust those
    peers.  Only the addresses and networks name *proxies*: the hops of
    X-Forwarded-For are skipped from the right while they are listed there, so
    ``*`` never makes a client-written hop look like one of ours.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        items = tuple(allowed)
        self.any = "*" in items
        self._exact = frozenset(i for i in items if i != "*" and "/" not in i)
        self._proxies = frozenset(_ip_text(i) for i in self._exact if i != UNIX_PEER)
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

    def is_proxy(self, address: str) -> bool:
        """Whether a hop named in X-Forwarded-For is one of our own proxies."""
        if address in self._proxies:
            return True
        return bool(self._networks) and _in_networks(address, self._networks)


@lru_cache(maxsize=1024)
def _in_networks(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


@dataclass(frozen=True)
class EnvironOptions:
    """The handler's say in the environ; travels to the workers once, at start."""

    url_scheme: str | None = None
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    script_name: str = ""
    trusted: TrustedPeers = field(init=False, repr=False, compare=False)
    mount: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted", TrustedPeers(self.forwarded_allow_ips))
        object.__setattr__(self, "mount", self.script_name.rstrip("/").encode("utf-8"))

    def __reduce__(self) -> tuple[type[EnvironOptions], tuple[str | None, tuple[str, ...], str]]:
        return (EnvironOptions, (self.url_scheme, self.forwarded_allow_ips, self.script_name))


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


def build_environ(facts: RequestFacts, options: EnvironOptions) -> dict[str, str]:
    """The str-valued CGI variables and ``wsgi.url_scheme``; NotMounted outside the mount."""
    raw = facts.target
    # A fragment is the client's alone (clients do not send one; when sent, it is
    # neither path nor query): cut before the query is split off.
    target = raw.partition(b"#")[0] if b"#" in raw else raw
    path, _, query = target.partition(b"?")
    authority = b""
    if not path.startswith(b"/") and path != b"*":
        path, authority = _origin_form(path)
    path_bytes = unquote_to_bytes(path) if b"%" in path else path
    if path == b"*":  # OPTIONS *: about the server, no path at all
        script_name, path_info = "", ""
    elif options.mount:
        script_name, path_info = _split_prefix(options.mount, path_bytes, strict=True)
    elif facts.prefix:
        script_name, path_info = _split_prefix(facts.prefix, path_bytes, strict=False)
    else:
        script_name, path_info = "", path_bytes.decode("latin-1")
    uri = raw.decode("latin-1")
    remote_addr = facts.remote_addr
    environ: dict[str, str] = {
        "REQUEST_METHOD": facts.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query.decode("latin-1"),
        "REQUEST_URI": uri,
        "RAW_URI": uri,
        "SERVER_NAME": facts.server_name,
        "SERVER_PORT": facts.server_port,
        "REMOTE_ADDR": remote_addr,
        "REMOTE_HOST": remote_addr,
        "REMOTE_PORT": facts.remote_port,
        "SERVER_PROTOCOL": "HTTP/" + facts.version,
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
    }
    if facts.content_length is not None:  # absent: no body, no Content-Length header
        environ["CONTENT_LENGTH"] = str(facts.content_length)
    for name, value in facts.headers:
        key = http_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if not key:
            if len(name) == 12:  # Content-Type; Content-Length is what was received
                environ["CONTENT_TYPE"] = text
            continue
        if key in environ:
            # "," as gunicorn, werkzeug and Granian join; cookies as HTTP/2 does (RFC 9113).
            separator = "; " if key == "HTTP_COOKIE" else ","
            environ[key] += separator + text
        else:
            environ[key] = text

    if authority:  # an absolute-form target's host is the host, not the Host header's
        environ["HTTP_HOST"] = authority.decode("latin-1")

    scheme = options.url_scheme or facts.scheme
    if ("HTTP_X_FORWARDED_FOR" in environ or "HTTP_X_FORWARDED_PROTO" in environ) and (
        remote_addr in options.trusted
    ):
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded_for:
            client = _client_address(forwarded_for, options.trusted)
            if client:
                environ["REMOTE_ADDR"] = environ["REMOTE_HOST"] = client
                environ["REMOTE_PORT"] = "0"
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        if proto and options.url_scheme is None:
            # The nearest proxy's value: one that appends leaves the client's on the left.
            nearest = proto.rpartition(",")[2].strip().lower()
            if nearest in _SCHEMES:
                scheme = nearest
    environ["wsgi.url_scheme"] = scheme
    return environ


def _client_address(header: str, trusted: TrustedPeers) -> str:
    """The client's address in X-Forwarded-For, or "" when the header cannot be used.

    Proxies append the address they saw, so only the right end of the list is
    written by hosts we trust: the client is the rightmost hop that is not one
    of our own proxies (nginx's real_ip_recursive, uvicorn's rule).  A hop that
    is not an IP address ends the walk with nothing: what is left of it was
    not written by a proxy we know, and must not become REMOTE_ADDR.
    """
    hops = [hop.strip() for hop in header.split(",")]
    address = ""
    for hop in reversed(hops):
        address = _ip_text(_strip_port(hop))
        if not address:
            return ""
        if not trusted.is_proxy(address):
            return address
    return address  # every hop is one of ours: the one furthest away


@lru_cache(maxsize=1024)
def _ip_text(text: str) -> str:
    """`text` as a normalised IP address, or "" if it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # [v6]:port
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:  # v4:port
        return hop.partition(":")[0]
    return hop


def _origin_form(target: bytes) -> tuple[bytes, bytes]:
    """The path and the authority of an absolute-form target (``GET http://host/path``).

    RFC 9112 (section 3.2.2): the target's authority is the request's host, whatever
    a Host header says.
    """
    try:
        parts = urlsplit(target.decode("latin-1"))
    except ValueError:
        return b"/", b""
    authority = parts.netloc.rpartition("@")[2]  # no userinfo (RFC 9110, 4.2.4)
    return (parts.path or "/").encode("latin-1"), authority.encode("latin-1")


def _split_prefix(prefix: bytes, path: bytes, *, strict: bool) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO under `prefix`, which must end at a segment boundary.

    Outside a configured mount (`strict`) that is NotMounted (404); outside a
    router's match, the whole path is PATH_INFO.
    """
    size = len(prefix)
    if path.startswith(prefix) and (len(path) == size or path[size] == 0x2F):
        return prefix.decode("latin-1"), path[size:].decode("latin-1")
    if strict:
        raise NotMounted(path)
    return "", path.decode("latin-1")
