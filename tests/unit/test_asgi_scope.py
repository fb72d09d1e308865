"""wsgipool.asgi without a server: the facts read from a scope, and the messages the
adapter exchanges for the cases a real server rarely produces (a scope without
raw_path, a server that strips root_path, lifespan, refused scopes)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from wsgipool.asgi import WSGIMiddleware, WsgiToAsgi, collect_scope
from wsgipool.cgi import EnvironOptions, build_environ, facts_from_fields


def environ_of(scope: dict[str, Any], length: int = 0) -> dict[str, str]:
    headers = [(bytes(n), bytes(v)) for n, v in scope.get("headers", [])]
    collected = collect_scope(scope, headers, length)
    facts = facts_from_fields(collected.fields, collected.headers, collected.keep_alive)
    return build_environ(facts, EnvironOptions())


def scope(**items: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "http_version": "1.1",
        "scheme": "http",
        "path": "/",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    base.update(items)
    if "raw_path" in items and "path" not in items:  # as a server sets it: decoded
        raw = items["raw_path"].partition(b"?")[0]
        base["path"] = unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
    return base


@pytest.mark.parametrize(
    ("root_path", "raw_path", "script_name", "path_info"),
    [
        ("", b"/a/b", "", "/a/b"),
        ("/app", b"/app/x", "/app", "/x"),  # the spec (and Starlette's Mount): root_path kept
        ("/app", b"/app", "/app", ""),
        ("/app/", b"/app/x", "/app", "/x"),
        ("/app", b"/x", "/app", "/x"),  # a server that took root_path out of the path
        ("/app", b"/apple", "/app", "/apple"),  # not at a segment boundary: not the prefix
        ("/caf\u00e9", b"/caf%C3%A9/x", "/caf\u00e9".encode().decode("latin-1"), "/x"),
    ],
)
def test_root_path_becomes_script_name(
    root_path: str, raw_path: bytes, script_name: str, path_info: str
) -> None:
    env = environ_of(scope(root_path=root_path, raw_path=raw_path))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script_name, path_info)


def test_raw_path_bytes_are_read_as_latin1_and_the_query_kept_raw() -> None:
    env = environ_of(scope(raw_path=b"/caf%C3%A9/%2F", query_string=b"a=%20&b"))
    assert env["PATH_INFO"] == "/caf\u00e9//".encode().decode("latin-1")
    assert env["QUERY_STRING"] == "a=%20&b"
    assert env["REQUEST_URI"] == "/caf%C3%A9/%2F?a=%20&b"


def test_without_raw_path_the_decoded_path_is_quoted_again() -> None:
    env = environ_of(scope(path="/caf\u00e9 x/100%"))
    assert env["PATH_INFO"] == "/caf\u00e9 x/100%".encode().decode("latin-1")


def test_a_raw_path_with_its_query_is_not_doubled() -> None:
    env = environ_of(scope(raw_path=b"/p?q=1", query_string=b"q=1"))
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/p", "q=1")


def test_addresses_scheme_and_version() -> None:
    env = environ_of(
        scope(
            scheme="https",
            http_version="2",
            server=("::1", 443),
            client=("::ffff:10.0.0.1", 1234),
            headers=[(b"host", b"example.org"), (b"content-type", b"text/x"), (b"x_y", b"no")],
        ),
        length=5,
    )
    assert env["wsgi.url_scheme"] == "https"
    assert env["SERVER_PROTOCOL"] == "HTTP/2"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", "443")
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.0.0.1", "1234")
    assert env["HTTP_HOST"] == "example.org"
    assert env["CONTENT_TYPE"] == "text/x" and env["CONTENT_LENGTH"] == "5"
    assert "HTTP_X_Y" not in env  # underscores could impersonate a dashed header


def test_unix_socket_and_missing_client() -> None:
    env = environ_of(scope(server=("/run/app.sock", None), client=None))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("unix", "/run/app.sock")
    assert env["REMOTE_ADDR"] == "unix"  # as wsgipool's own frontend says for a unix socket


# -- the ASGI messages -------------------------------------------------------------------


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


async def converse(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list:
    sent: list[dict[str, Any]] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # a client that stays: the test ends first
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


def test_alias_names_the_same_class() -> None:
    assert WsgiToAsgi is WSGIMiddleware


def test_a_request_in_thread_mode() -> None:
    app = WSGIMiddleware(hello)
    request = {"type": "http.request", "body": b"", "more_body": False}
    sent = asyncio.run(converse(app, scope(), [request]))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"content-length", b"5") in sent[0]["headers"]
    assert all(name != b"server" for name, _ in sent[0]["headers"])  # the server names itself
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"hello"
    assert sent[-1].get("more_body", False) is False


def test_thread_mode_environ_has_the_scope() -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("asgi.scope"))
        return hello(environ, start_response)

    request_scope = scope()
    request = {"type": "http.request", "body": b"", "more_body": False}
    asyncio.run(converse(WSGIMiddleware(app), request_scope, [request]))
    assert seen == [request_scope]


def test_declared_body_over_the_limit_is_413_before_reading() -> None:
    app = WSGIMiddleware(hello, max_request_body_size=10)
    request_scope = scope(method="POST", headers=[(b"content-length", b"11")])
    sent = asyncio.run(converse(app, request_scope, []))
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]


def test_streamed_body_over_the_limit_is_413() -> None:
    app = WSGIMiddleware(hello, max_request_body_size=10)
    pieces = [
        {"type": "http.request", "body": b"123456", "more_body": True},
        {"type": "http.request", "body": b"789012", "more_body": False},
    ]
    sent = asyncio.run(converse(app, scope(method="POST"), pieces))
    assert sent[0]["status"] == 413


def test_client_gone_while_sending_its_body_gets_nothing() -> None:
    app = WSGIMiddleware(hello)
    pieces = [
        {"type": "http.request", "body": b"123", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert asyncio.run(converse(app, scope(method="POST"), pieces)) == []


def test_a_middleware_that_rewrites_path_is_followed() -> None:
    """raw_path stays as received when an ASGI middleware strips a prefix (the spec):
    the rewritten path counts, as in a2wsgi and asgiref."""
    env = environ_of(scope(path="/hello", raw_path=b"/v1/hello"))
    assert env["PATH_INFO"] == "/hello"
    env = environ_of(scope(root_path="/legacy", path="/legacy/new", raw_path=b"/legacy/old"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/legacy", "/new")
    # raw_path as received (percent-encoded, with or without the root) still wins.
    env = environ_of(scope(path="/a/b", raw_path=b"/a%2Fb"))
    assert env["PATH_INFO"] == "/a/b" and env["RAW_URI"] == "/a%2Fb"
    env = environ_of(scope(root_path="/app", path="/app/x", raw_path=b"/x"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x")


def test_unix_socket_peers_and_a_missing_server() -> None:
    """uvicorn --uds: server (path, None), client None; Hypercorn unix: both None."""
    env = environ_of(scope(server=("/run/app.sock", None), client=None))
    assert (env["REMOTE_ADDR"], env["SERVER_NAME"]) == ("unix", "unix")
    env = environ_of(scope(server=None, client=None))
    assert (env["REMOTE_ADDR"], env["SERVER_NAME"], env["SERVER_PORT"]) == (
        "unix",
        "localhost",
        "80",
    )
    env = environ_of(scope(server=None, scheme="https"))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "443")
    # Trusted as 'unix' by forwarded_allow_ips, as on wsgipool's own frontend.
    headers = [(b"x-forwarded-for", b"203.0.113.5"), (b"x-forwarded-proto", b"https")]
    request = scope(server=("/run/app.sock", None), client=None, headers=headers)
    collected = collect_scope(request, headers, 0)
    facts = facts_from_fields(collected.fields, collected.headers, collected.keep_alive)
    env = build_environ(facts, EnvironOptions(forwarded_allow_ips=("unix",)))
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.5", "https")


def test_a_second_lifespan_starts_own_threads_again() -> None:
    """A test client per test: startup, requests, shutdown, then all of it again."""
    app = WSGIMiddleware(hello, workers=2)
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def cycle() -> list[Any]:
        await app.startup()  # what lifespan.startup runs, and .shutdown
        try:
            return await converse(app, scope(), [request])
        finally:
            await app.shutdown()

    for _ in range(2):
        assert asyncio.run(cycle())[0]["status"] == 200


def test_lifespan_without_a_pool() -> None:
    app = WSGIMiddleware(hello, workers=2)
    sent = asyncio.run(
        converse(
            app,
            {"type": "lifespan"},
            [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
        )
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_websocket_is_refused_before_accept() -> None:
    app = WSGIMiddleware(hello)
    sent = asyncio.run(converse(app, {"type": "websocket"}, [{"type": "websocket.connect"}]))
    assert [m["type"] for m in sent] == ["websocket.close"]


def test_other_scope_types_raise() -> None:
    with pytest.raises(ValueError, match="cannot serve a 'webtransport' scope"):
        asyncio.run(converse(WSGIMiddleware(hello), {"type": "webtransport"}, []))


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"max_request_body_size": -1}, "max_request_body_size"),
        ({"inbuf_overflow": True}, "inbuf_overflow"),
        ({"url_scheme": "ftp"}, "url_scheme"),
        ({"workers": 0}, "workers"),
        ({"workers": 2, "executor": object()}, "either executor or workers"),
        ({"duplicate_header_limit": -1}, "duplicate_header_limit"),
        ({"duplicate_header_limit": "100"}, "duplicate_header_limit"),
    ],
)
def test_bad_keywords(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WSGIMiddleware(hello, **keywords)
